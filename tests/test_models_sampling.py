"""tandem.models.sampling: left padding, EOS ids, greedy == per-prompt generate, seeded sampling, EOS cut."""

from __future__ import annotations

import pytest
import torch
from helpers_evaluation import tiny_lm, tiny_reward_model

from tandem.models.sampling import eos_ids, left_pad, sample_ids, strip_eos

PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 10, 11, 12, 13, 14]]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0)


def test_left_pad_hand_values():
    ids, mask = left_pad([[4, 5, 6], [7], []], pad_id=0)
    assert ids.tolist() == [[4, 5, 6], [0, 0, 7], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_eos_ids_merge_tokenizer_and_generation_config(lm):
    model, tok = lm
    assert eos_ids(model, tok) == [tok.eos_token_id]
    model.generation_config.eos_token_id = [tok.eos_token_id, 3]
    try:
        assert eos_ids(model, tok) == [tok.eos_token_id, 3]
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    rm, _ = tiny_reward_model()  # cannot generate: the tokenizer's EOS only
    assert eos_ids(rm, tok) == [tok.eos_token_id]

    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="EOS token id"):
        eos_ids(rm, NoEos())


def test_strip_eos():
    assert strip_eos([4, 5, 2], [2, 3]) == [4, 5]
    assert strip_eos([4, 5], [2]) == [4, 5] and strip_eos([], [2]) == []


def _greedy_one(model, prompt, n, eos):
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_is_deterministic_and_equals_unbatched_generate(lm):
    model, _ = lm
    never = [model.config.vocab_size - 1]  # an EOS id greedy decoding never reaches here
    want = [_greedy_one(model, p, 6, never) for p in PROMPTS]
    for bs, seed in ((None, 0), (1, 1), (2, 7)):
        got = sample_ids(model, PROMPTS, pad_id=0, eos=never, temperature=0, top_p=0.9, max_new_tokens=6, seed=seed,
                         batch_size=bs)
        assert got == want  # left padding changes nothing, the seed is irrelevant
    assert all(len(r) == 6 for r in want)


def test_output_is_cut_after_the_first_eos(lm):
    model, _ = lm
    never = [model.config.vocab_size - 1]
    full = sample_ids(model, PROMPTS, pad_id=0, eos=never, temperature=0, top_p=1.0, max_new_tokens=8, seed=0)
    stop = full[0][2]  # make the third greedy token of prompt 0 an EOS
    first = full[0].index(stop)
    got = sample_ids(model, PROMPTS, pad_id=0, eos=[stop], temperature=0, top_p=1.0, max_new_tokens=8, seed=0)
    assert got[0] == full[0][: first + 1]  # up to and including the first EOS
    for g, f in zip(got, full):
        assert g == f[: f.index(stop) + 1] if stop in f else g == f


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(lm):
    model, _ = lm
    model.train()
    eos = list(range(200, 260))
    kw = dict(pad_id=0, eos=eos, temperature=1.0, top_p=1.0, max_new_tokens=8)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample_ids(model, PROMPTS * 3, seed=5, **kw)
    assert torch.equal(torch.rand(1), before)
    assert model.training  # mode restored
    model.eval()
    assert a == sample_ids(model, PROMPTS * 3, seed=5, **kw)
    assert a != sample_ids(model, PROMPTS * 3, seed=6, **kw)
    for r in a:
        assert 1 <= len(r) <= 8 and all(t not in eos for t in r[:-1])
        assert r[-1] in eos or len(r) == 8


def test_bad_arguments(lm):
    model, _ = lm
    kw = dict(pad_id=0, eos=[2], top_p=1.0, max_new_tokens=2, seed=0)
    assert sample_ids(model, [], temperature=1.0, **kw) == []
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_ids(model, PROMPTS, temperature=-0.1, **kw)
    with pytest.raises(ValueError, match="at least one token"):
        sample_ids(model, [[1, 2], []], temperature=1.0, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        sample_ids(model, PROMPTS, temperature=1.0, batch_size=0, **kw)

"""tandem.models.group_sampling: greedy equals the one sampler's greedy, one prefill per prompt (not per completion),
rows leave the batch at their EOS, seeded draws, the nucleus rule."""

from __future__ import annotations

import pytest
import torch
from helpers_evaluation import tiny_lm

from tandem.models.decode import PRUNE_SHARE, inverse_cdf, pick_next
from tandem.models.group_sampling import prompt_seeds, sample_groups
from tandem.models.sampling import sample_ids

PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 10, 11, 12, 13, 14]]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0)


def test_greedy_groups_equal_the_samplers_greedy(lm):
    model, _ = lm
    never = [model.config.vocab_size - 1]
    want = sample_ids(model, PROMPTS, pad_id=0, eos=never, temperature=0, top_p=1.0, max_new_tokens=6, seed=0)
    got = sample_groups(model, PROMPTS, n=2, pad_id=0, eos=never, temperature=0, top_p=1.0, max_new_tokens=6, seed=0)
    assert got == [w for w in want for _ in range(2)]  # prompt-major: each prompt's group, in order


def test_one_prefill_per_prompt_and_rows_leave_at_eos(lm):
    model, _ = lm
    batch_sizes, widths = [], []

    def record(module, args, kw):
        batch_sizes.append(kw["input_ids"].shape[0])
        widths.append(kw["input_ids"].shape[1])

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = sample_groups(model, PROMPTS, n=4, pad_id=0, eos=list(range(40, 300)), temperature=1.0, top_p=1.0,
                            max_new_tokens=8, seed=3)
    finally:
        hook.remove()
    assert batch_sizes[0] == 3 and widths[0] == 6  # the prefill: 3 prompts, left-padded to the longest, once
    assert all(w == 1 for w in widths[1:])  # then one token per step with the KV cache
    assert batch_sizes[1:] == sorted(batch_sizes[1:], reverse=True) and len(out) == 12
    alive_after = [sum(len(o) > t for o in out) for t in range(1, 8)]
    assert batch_sizes[-1] < 12  # finished rows left the batch ...
    for computed, alive in zip(batch_sizes[1:], alive_after):  # ... once an eighth of it had finished
        assert alive <= computed and (computed - alive < PRUNE_SHARE * computed or computed == alive)
    eos = set(range(40, 300))
    assert all(all(t not in eos for t in o[:-1]) for o in out)  # each result stops at its first EOS


def test_seeded_and_sampling_differs_within_a_group(lm):
    model, _ = lm
    kw = dict(n=4, pad_id=0, eos=[2], temperature=1.0, top_p=0.9, max_new_tokens=8)
    a = sample_groups(model, PROMPTS, seed=5, **kw)
    assert a == sample_groups(model, PROMPTS, seed=5, **kw) != sample_groups(model, PROMPTS, seed=6, **kw)
    assert len({tuple(x) for x in a[:4]}) > 1  # the group's completions are different draws
    state = torch.get_rng_state()
    sample_groups(model, PROMPTS, seed=5, **kw)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_nucleus_rule_by_hand():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0.5, 0.3} (the removed tail 0.2 <= 1 - 0.7)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(pick_next(logits, 1.0, 0.7, g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(pick_next(logits, 0.0, 1.0, g)) == 0  # greedy


def test_a_prompts_group_does_not_depend_on_the_other_prompts(lm):
    """Per-prompt generators: the prompts split over two calls (two DDP processes) with their seeds give the same
    completions as one call over all of them; an int seed derives one seed per prompt."""
    model, _ = lm
    kw = dict(n=3, pad_id=0, eos=[2], temperature=1.0, top_p=0.9, max_new_tokens=8)
    seeds = [11, 12, 13]
    whole = sample_groups(model, PROMPTS, seed=seeds, **kw)
    first = sample_groups(model, PROMPTS[0::2], seed=seeds[0::2], **kw)  # "rank 0": prompts 0 and 2
    second = sample_groups(model, PROMPTS[1::2], seed=seeds[1::2], **kw)  # "rank 1": prompt 1
    assert whole == first[:3] + second + first[3:]
    assert sample_groups(model, PROMPTS, seed=4, **kw) == sample_groups(model, PROMPTS, seed=prompt_seeds(4, 3), **kw)
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        sample_groups(model, PROMPTS, seed=[1, 2], **kw)


def test_inverse_cdf_draws_the_distribution_and_never_a_cut_token():
    # cdf 0.5, 0.8, 0.8, 1.0: a uniform u in [0, 0.5) draws token 0, [0.5, 0.8) token 1, [0.8, 1) token 3; the
    # zero-probability token 2 has an empty interval
    probs = torch.tensor([[0.5, 0.3, 0.0, 0.2]])
    for seed in range(40):
        u = float(torch.rand((1, 1), dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
        want = 0 if u < 0.5 else 1 if u < 0.8 else 3
        assert int(inverse_cdf(probs, torch.Generator().manual_seed(seed))) == want
        assert int(inverse_cdf(probs * 4, torch.Generator().manual_seed(seed))) == want  # weights need not sum to 1
    g = torch.Generator().manual_seed(3)
    draws = inverse_cdf(probs.repeat(40_000, 1), g)
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert freq[2] == 0 and torch.allclose(freq, probs[0].double(), atol=0.01)
    # through pick_next: the top-p cut still applies, and the draw is seeded by the generator
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(5000, 1)
    a = pick_next(logits, 1.0, 0.7, torch.Generator().manual_seed(1), draw="inverse_cdf")
    assert set(a.tolist()) == {0, 1} and abs(float((a == 0).double().mean()) - 0.5 / 0.8) < 0.03
    assert torch.equal(a, pick_next(logits, 1.0, 0.7, torch.Generator().manual_seed(1), draw="inverse_cdf"))
    with pytest.raises(ValueError, match="draw"):
        pick_next(logits, 1.0, 1.0, draw="gumbel")

"""tandem.evaluation.generation: batched greedy == per-prompt model.generate, left padding, sampling seeds, cache."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_evaluation import tiny_lm

from tandem.data.encode import prompt_ids, render_fallback
from tandem.evaluation import generation as G

PROMPTS = [
    [{"role": "user", "content": "What is 23 + 45?"}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write the word 'river' in capital letters. Reply with the word only."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which letter comes after g?"}],
]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0)


def _reference_greedy(model, tok, prompt, n):
    ids = torch.tensor([prompt_ids(tok, prompt)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def test_greedy_batched_equals_per_prompt_generate(lm):
    model, tok = lm
    lengths = {len(prompt_ids(tok, p)) for p in PROMPTS}
    assert len(lengths) > 1  # prompts of different lengths: the batch really is left padded
    want = [_reference_greedy(model, tok, p, 12) for p in PROMPTS]
    for bs in (1, 3, 4):
        assert G.generate(model, tok, PROMPTS, temperature=0, max_new_tokens=12, batch_size=bs) == want
    assert all(w for w in want)


def test_stops_at_eos():
    model, tok = tiny_lm(seed=0)
    # a head whose bias makes EOS the top token everywhere: greedy stops at once, sampling almost surely
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)
        head.bias[tok.eos_token_id] = 30.0
    model.lm_head = head
    assert G.generate(model, tok, PROMPTS[:3], temperature=0, max_new_tokens=5, batch_size=3) == ["", "", ""]
    assert G.generate(model, tok, PROMPTS[:3], temperature=1.0, max_new_tokens=5, batch_size=3) == ["", "", ""]


def test_sampling_is_seeded_and_leaves_global_rng_alone(lm):
    model, tok = lm
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = G.generate(model, tok, PROMPTS, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7, batch_size=2)
    after = torch.rand(1)
    assert torch.equal(before, after)  # global RNG untouched
    b = G.generate(model, tok, PROMPTS, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7, batch_size=2)
    c = G.generate(model, tok, PROMPTS, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=8, batch_size=2)
    assert a == b
    assert a != c


def test_fallback_template_without_chat_template():
    model, tok = tiny_lm(seed=0, chat_template=False)
    ids = prompt_ids(tok, PROMPTS[0])
    assert tok.decode(ids).endswith(render_fallback(PROMPTS[0]))
    assert render_fallback(PROMPTS[0]) == "### User:\nWhat is 23 + 45?\n\n### Assistant:\n"
    want = [_reference_greedy(model, tok, p, 6) for p in PROMPTS[:2]]
    assert G.generate(model, tok, PROMPTS[:2], temperature=0, max_new_tokens=6, batch_size=2) == want


def test_bad_prompts_are_rejected(lm):
    model, tok = lm
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        G.generate(model, tok, [PROMPTS[0], "just a string"], temperature=0)


def test_generate_to_file_caches(lm, tmp_path, monkeypatch):
    model, tok = lm
    path = tmp_path / "gen.jsonl"
    refs = ["68", "hello", "RIVER", "h"]
    out = G.generate_to_file(model, tok, PROMPTS, path, references=refs, model_id="tiny", temperature=0, max_new_tokens=6)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["output"] for r in rows] == out
    assert [r["reference"] for r in rows] == refs
    assert rows[0]["prompt"] == PROMPTS[0] and rows[0]["model"] == "tiny"
    assert rows[0]["settings"]["temperature"] == 0 and rows[0]["settings"]["max_new_tokens"] == 6
    key = rows[0]["key"]
    assert all(r["key"] == key for r in rows)

    calls = []
    real = G.generate
    monkeypatch.setattr(G, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    # identical settings (batch size is not part of the key): reused, no generation
    again = G.generate_to_file(model, tok, PROMPTS, path, references=refs, model_id="tiny", temperature=0,
                               max_new_tokens=6, batch_size=2)
    assert again == out and calls == []
    # any change in settings, prompts or model identity regenerates
    G.generate_to_file(model, tok, PROMPTS, path, model_id="tiny", temperature=0, max_new_tokens=7)
    assert len(calls) == 1
    assert json.loads(path.read_text().splitlines()[0])["key"] != key
    G.generate_to_file(model, tok, PROMPTS[:2], path, model_id="tiny", temperature=0, max_new_tokens=7)
    G.generate_to_file(model, tok, PROMPTS[:2], path, model_id="other", temperature=0, max_new_tokens=7)
    assert len(calls) == 3
    G.generate_to_file(model, tok, PROMPTS[:2], path, model_id="other", temperature=0, max_new_tokens=7)
    assert len(calls) == 3


def test_model_identity_tracks_weight_files(tmp_path):
    model, tok = tiny_lm(seed=0)
    model.save_pretrained(tmp_path / "m")
    a = G.model_identity(tmp_path / "m")
    assert a["name"] == str((tmp_path / "m").resolve())
    assert any(f[0] == "model.safetensors" for f in a["files"])
    import os

    st = (tmp_path / "m" / "model.safetensors").stat()
    os.utime(tmp_path / "m" / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert G.model_identity(tmp_path / "m") != a
    assert G.model_identity("org/hub-model") == {"name": "org/hub-model"}

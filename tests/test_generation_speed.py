"""The fast sampler (tandem.models.decode under sample_ids): greedy replies token-identical to ``model.generate``
(batched and per prompt, rows dropped at EOS, LoRA, bf16, no cache), the slab KV cache's bookkeeping, the top-p cut
against transformers' warper and a hand-computed nucleus, and benchmarks/generation.py on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers_evaluation import tiny_lm

from tandem.models.decode import SlabLayer, decode, pick_next
from tandem.models.packed import packed_linears, packing_available
from tandem.models.sampling import left_pad, sample_ids

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 300) for _ in range(rng.randrange(1, 20))] for _ in range(n)]


def _generate(model, prompts, n, eos, batch):
    """Plain ``model.generate`` on consecutive batches in the given order, cut after the first EOS."""
    out = []
    for s in range(0, len(prompts), batch):
        ids, mask = left_pad(prompts[s:s + batch], 0)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, eos_token_id=eos,
                             pad_token_id=0)
        out += [r[: next((j + 1 for j, t in enumerate(r) if t in eos), len(r))] for r in gen[:, ids.shape[1]:].tolist()]
    return out


def _common_eos(model, prompts, k=3):
    """The ``k`` tokens greedy decoding emits most often early: as EOS ids they end rows at different steps."""
    full = sample_ids(model, prompts, pad_id=0, eos=[10**6], temperature=0, top_p=1, max_new_tokens=16, seed=0)
    return [t for t, _ in Counter(t for r in full for t in r[:8]).most_common(k)]


def test_greedy_equals_generate_with_rows_leaving_at_eos(lm):
    model, _ = lm
    prompts = _prompts(24)
    eos = _common_eos(model, prompts)
    lengths = set()
    for batch in (1, 5, 24):
        want = _generate(model, prompts, 16, eos, batch)
        for use_cache in (True, False):
            got = sample_ids(model, prompts, pad_id=0, eos=eos, temperature=0, top_p=1, max_new_tokens=16, seed=0,
                             batch_size=batch, use_cache=use_cache)
            assert got == want, (batch, use_cache)
        lengths |= {len(r) for r in want}
    assert min(lengths) == 1 and max(lengths) == 16 and len(lengths) > 5  # rows really left at different steps


def test_greedy_equals_generate_in_bf16_and_with_lora(lm):
    from peft import LoraConfig, get_peft_model

    model, _ = lm
    prompts = _prompts(12, seed=1)
    eos = _common_eos(model, prompts)
    torch.manual_seed(3)
    peft = get_peft_model(tiny_lm(seed=0)[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                        init_lora_weights=False)).eval()
    bf16 = tiny_lm(seed=0)[0].to(torch.bfloat16)
    for m in (peft, bf16):
        want = _generate(m, prompts, 10, eos, 12)
        got = sample_ids(m, prompts, pad_id=0, eos=eos, temperature=0, top_p=1, max_new_tokens=10, seed=0)
        assert got == want


def test_packed_bf16_weights_give_identical_logits_and_are_undone(monkeypatch):
    model = tiny_lm(seed=0)[0].to(torch.bfloat16).eval()
    ids = torch.tensor([[1, 5, 6, 7], [1, 9, 3, 2]])
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with packed_linears(model) as n:
            got = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    if not packing_available():
        pytest.skip("this torch has no oneDNN linear ops")
    assert n == linears > 0 and torch.equal(got, want) and torch.equal(again, want)
    assert not any("forward" in m.__dict__ for m in model.modules())  # every layer's own forward is back
    with packed_linears(tiny_lm(seed=0)[0]) as n32:  # fp32: left alone (packed fp32 products differ in the last bits)
        assert n32 == 0
    monkeypatch.setenv("TANDEM_PACKED_DECODE", "0")
    with packed_linears(model) as off:
        assert off == 0


def test_packed_products_equal_f_linear_on_decode_shapes_and_prefills_keep_f_linear():
    from tandem.models.packed import MAX_ROWS

    if not packing_available():
        pytest.skip("this torch has no oneDNN linear ops")
    torch.manual_seed(0)
    layer = torch.nn.Linear(576, 1536, bias=False).to(torch.bfloat16)  # SmolLM2's widths
    with torch.no_grad(), packed_linears(layer) as n:
        assert n == 1
        for rows in (1, 7, 16, 64, MAX_ROWS):  # decode steps: one position per row, the packed product
            x = torch.randn(rows, 1, 576).to(torch.bfloat16)
            assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
    square = torch.nn.Linear(576, 576, bias=False).to(torch.bfloat16)
    with torch.no_grad(), packed_linears(square):
        # a prefill of 8 x 60 tokens: F.linear itself (on an AMX CPU the packed product differs here in the last bit)
        x = torch.randn(8, 60, 576).to(torch.bfloat16)
        assert torch.equal(square(x), torch.nn.functional.linear(x, square.weight))


def test_slab_layer_writes_in_place_and_keeps_rows_and_columns():
    layer = SlabLayer(capacity=6)
    k = torch.arange(3 * 1 * 2 * 2, dtype=torch.float32).view(3, 1, 2, 2)  # [B=3, H=1, T=2, D=2]
    keys, values = layer.update(k, -k)
    assert keys.shape == (3, 1, 2, 2) and torch.equal(keys, k) and torch.equal(values, -k)
    buf = layer.kbuf
    keys, _ = layer.update(k[:, :, :1] + 100, k[:, :, :1])
    assert layer.get_seq_length() == 3 and keys.shape == (3, 1, 3, 2) and layer.kbuf.data_ptr() == buf.data_ptr()
    assert torch.equal(keys[:, :, 2], k[:, :, 0] + 100)
    layer.keep(torch.tensor([2, 0]), first=1)  # rows 2 and 0, positions 1..2
    assert layer.get_seq_length() == 2 and layer.keys.shape == (2, 1, 2, 2)
    assert torch.equal(layer.keys[0, 0], torch.stack([k[2, 0, 1], k[2, 0, 0] + 100]))
    assert torch.equal(layer.keys[1, 0], torch.stack([k[0, 0, 1], k[0, 0, 0] + 100]))
    layer.update(torch.zeros(2, 1, 4, 2), torch.zeros(2, 1, 4, 2))  # 2 + 4 = capacity 6: fits
    with pytest.raises(RuntimeError, match="capacity"):
        layer.update(torch.zeros(2, 1, 1, 2), torch.zeros(2, 1, 1, 2))


def test_top_p_cut_by_hand_and_against_transformers():
    from transformers.generation.logits_process import TopPLogitsWarper

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.manual_seed(0)
    draws = set(pick_next(probs.log().repeat(2000, 1), 1.0, 0.7).tolist())
    assert draws == {0, 1}  # ascending cumsum 0.05, 0.20, 0.50, 1.0: the two below 1 - 0.7 = 0.3 are cut
    assert int(pick_next(probs.log(), 0.0, 0.7)) == 0
    torch.manual_seed(1)
    logits = torch.randn(6, 50) * 3
    for top_p, temp in ((0.9, 1.0), (0.5, 0.7), (0.999, 1.3)):
        scores = TopPLogitsWarper(top_p)(None, logits / temp)
        torch.manual_seed(7)
        want = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1)
        torch.manual_seed(7)
        assert torch.equal(pick_next(logits, temp, top_p), want)


def test_decode_returns_rows_in_batch_order_and_cuts_after_eos(lm):
    model, _ = lm
    ids, mask = left_pad([[1, 5, 6], [1, 9]], 0)
    free = decode(model, ids, mask, max_new_tokens=5, eos=[10**6], pad_id=0, temperature=0, top_p=1)
    stop = free[1][1]
    got = decode(model, ids, mask, max_new_tokens=5, eos=[stop], pad_id=0, temperature=0, top_p=1)
    assert got[1] == free[1][: free[1].index(stop) + 1]
    assert got[0] == (free[0][: free[0].index(stop) + 1] if stop in free[0] else free[0])


def test_generation_benchmark_on_a_tiny_model_gives_the_same_replies(tmp_path, monkeypatch, one_thread):
    from helpers_tokenizer import make_tokenizer

    if not (ROOT.parent / "shared" / "data" / "alpaca").exists():
        pytest.skip("../shared/data/alpaca not present")
    make_tokenizer().save_pretrained(tmp_path / "tok")
    spec = importlib.util.spec_from_file_location("bench_generation", ROOT / "benchmarks" / "generation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gen.json"
    monkeypatch.setattr(sys, "argv", ["generation.py", "--shape", "tiny", "--tokenizer", str(tmp_path / "tok"),
                                      "--prompts", "6", "--batches", "1,4", "--max-new-tokens", "6", "--matmul", "64",
                                      "--dtype", "float32", "--json", str(out)])
    bench.main()
    res = json.loads(out.read_text())
    tandem = [r for r in res["rows"] if r["config"] == "tandem"]
    assert [r["batch"] for r in tandem] == [1, 4] and all(r["same_replies"] == 6 for r in tandem)
    assert res["matmul_gflops"]["float32"] > 0 and res["ceiling_tokens_per_s"] > 0
    assert all(r["new_tokens"] > 0 and r["tokens_per_s"] > 0 for r in res["rows"])

"""Chunked log-probs (tandem.objectives.logprobs): the same values and gradients as ``-cross_entropy`` over the full
``[tokens, vocab]`` logits (1e-6 in fp32), for trainable and frozen heads, tied or LoRA-wrapped, and the graph never
saves a ``[tokens, vocab]`` tensor. Values and gradients agree to 1e-6 of their largest entry (:func:`close`): what
differs is fp32 rounding (``logit - logsumexp`` instead of cross-entropy's log-softmax, a weight gradient summed chunk
by chunk, a frozen head's input gradient scaled after its matmul)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tandem.objectives.logprobs import chunk_rows, chunked_logps, head_logps, token_logps

N, H, V = 300, 16, 1000


def data(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    up = torch.randn(N, generator=g)  # an arbitrary upstream gradient (DPO weighs tokens per sequence)
    return h, w, t, up


def close(a, b, tol=1e-6):
    """``max |a - b| <= tol * max(1, max |b|)``"""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def full(h, w, t):
    return -F.cross_entropy(F.linear(h, w).float(), t, reduction="none")


@pytest.mark.parametrize("chunk", [64, 128, 300, 1000])
def test_values_and_gradients_match_full_logits(chunk):
    h, w, t, up = data()
    ref = full(h, w, t)
    (ref * up).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = chunked_logps(h, w, t, chunk)
    (got * up).sum().backward()
    assert close(got, ref)
    assert close(h.grad, gh) and close(w.grad, gw)


def test_frozen_head_gradient_computed_in_forward():
    h, w, t, up = data(1)
    w.requires_grad_(False)
    (full(h, w, t) * up).sum().backward()
    gh = h.grad.clone()
    h.grad = None
    (chunked_logps(h, w, t, 64) * up).sum().backward()
    assert close(h.grad, gh)


def test_no_grad_and_empty():
    h, w, t, _ = data(2)
    with torch.no_grad():
        assert close(chunked_logps(h, w, t, 50), full(h, w, t))
    assert chunked_logps(h[:0], w, t[:0], 50).shape == (0,)


def test_no_tokens_by_vocab_tensor_is_saved_for_backward():
    h, w, t, _ = data(3)
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        full(h, w, t)
    assert max(sizes) >= N * V  # the unchunked path keeps the logits / log-softmax
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        chunked_logps(h, w, t, 64)
    assert max(sizes) < N * V / 10  # h, W, targets, log-sum-exp only


def test_bf16_close_to_full_bf16():
    h, w, t, up = data(4, torch.bfloat16)
    ref = full(h, w, t)
    (ref * up).sum().backward()
    gh, gw = h.grad.float().clone(), w.grad.float().clone()
    h.grad = w.grad = None
    got = chunked_logps(h, w, t, 64)
    (got * up).sum().backward()
    assert got.dtype == torch.float32 and h.grad.dtype == torch.bfloat16
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)  # the same bf16 matmul, fp32 softmax
    assert torch.allclose(h.grad.float(), gh, atol=2e-2, rtol=2e-2) and torch.allclose(w.grad.float(), gw, atol=5e-2, rtol=2e-2)


def test_chunk_rows():
    assert chunk_rows(49152) == 1365 and chunk_rows(152064) == 441 and chunk_rows(10**9) == 64


def tiny(tie: bool):
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 97, (2, 20), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(20).repeat(2, 1),
            "seq_ids": torch.tensor([[0] * 20, [1] * 20])}


def reference_token_logps(model, b):
    hidden = model.get_decoder()(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).last_hidden_state
    target = b["labels"][:, 1:]
    mask = target != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()
    return -F.cross_entropy(logits, target[mask], reduction="none")


@pytest.mark.parametrize("tie", [True, False])
def test_token_logps_on_a_model_identical_to_full_logits(tie, monkeypatch):
    import tandem.objectives.logprobs as lp

    monkeypatch.setattr(lp, "CHUNK_ELEMENTS", 97 * 8)  # 8 rows per chunk: several chunks on 28 labelled tokens
    model, b = tiny(tie), batch()
    ref = reference_token_logps(model, b)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    got, seq = token_logps(model, b)
    got.sum().backward()
    assert seq.tolist() == [0] * 14 + [1] * 14
    assert close(got, ref)
    for n, p in model.named_parameters():
        assert close(p.grad, ref_grads[n]), n


def test_lora_wrapped_head_uses_checkpointed_chunks():
    from tandem.models import apply_lora

    model = apply_lora(tiny(False), r=2, alpha=4, target_modules=["lm_head", "q_proj"])
    head = model.get_output_embeddings()
    assert type(head) is not torch.nn.Linear
    g = torch.Generator().manual_seed(6)
    h = torch.randn(40, 32, generator=g, requires_grad=True)
    t = torch.randint(0, 97, (40,), generator=g)
    ref = -F.cross_entropy(head(h).float(), t, reduction="none")
    ref.sum().backward()
    ref_grads = [h.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
    h.grad = None
    head.zero_grad(set_to_none=True)
    got = head_logps(head, h, t, chunk=8)
    got.sum().backward()
    assert close(got, ref)
    got_grads = [h.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    assert all(close(a, b) for a, b in zip(got_grads, ref_grads))

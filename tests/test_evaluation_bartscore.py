"""BARTScore (tandem.evaluation.bartscore): the formula against hand-computed values, against a token-by-token
decode of a tiny random BART saved like a Hub model, padding invariance, direction src -> hyp, and the metric."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers_tokenizer import make_tokenizer

from tandem.evaluation.bartscore import bart_score, bartscore
from tandem.evaluation.context import GenerationSettings
from tandem.models.load import load_seq2seq


@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory):
    from transformers import BartConfig, BartForConditionalGeneration

    tok = make_tokenizer(chat_template=False)
    cfg = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bart")
    BartForConditionalGeneration(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


class UniformLogits(torch.nn.Module):
    """A seq2seq stand-in whose next-token distribution is uniform over ``vocab`` tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask, labels):
        return SimpleNamespace(logits=torch.zeros(labels.shape[0], labels.shape[1], self.vocab))


class OneHotNext(torch.nn.Module):
    """Logit 0 for every token except ``log(3)`` for token ``k``: p(k) = 3 / (V + 2), any other = 1 / (V + 2)."""

    def __init__(self, vocab: int, k: int):
        super().__init__()
        self.vocab, self.k = vocab, k

    def forward(self, input_ids, attention_mask, labels):
        logits = torch.zeros(labels.shape[0], labels.shape[1], self.vocab)
        logits[..., self.k] = math.log(3.0)
        return SimpleNamespace(logits=logits)


def test_formula_is_the_mean_token_log_likelihood_by_hand():
    tok = make_tokenizer(chat_template=False)
    V = len(tok)
    scores = bart_score(UniformLogits(V), tok, ["any source", "x"], ["a b", "longer target text here"], device="cpu")
    assert scores == pytest.approx([-math.log(V)] * 2, abs=1e-6)  # uniform: every token has log(1/V)
    ids = tok("ab", add_special_tokens=False)["input_ids"]
    k = ids[0]
    expected = (math.log(3 / (V + 2)) + sum(math.log(1 / (V + 2)) if t != k else math.log(3 / (V + 2))
                                            for t in ids[1:])) / len(ids)
    assert bart_score(OneHotNext(V, k), tok, ["s"], ["ab"], device="cpu")[0] == pytest.approx(expected, abs=1e-6)


def _stepwise(model, tok, source: str, target: str) -> float:
    """log p(y_t | y_<t, x) one decoder prefix at a time (no batching, no padding), averaged."""
    x = tok(source, return_tensors="pt")
    y = tok(target)["input_ids"]
    total = 0.0
    for t in range(len(y)):
        dec = torch.tensor([[model.config.decoder_start_token_id] + y[:t]])
        with torch.no_grad():
            logits = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], decoder_input_ids=dec).logits
        total += logits[0, -1].log_softmax(-1)[y[t]].item()
    return total / len(y)


def test_tiny_bart_matches_a_token_by_token_decode_and_ignores_padding(tiny_bart_dir):
    model, tok = load_seq2seq(str(tiny_bart_dir), device="cpu")
    sources = ["The quick brown fox jumps over the lazy dog.", "We had a fight."]
    targets = ["A fox jumps.", "we argued about the dog and then the fox, at length"]
    batched = bart_score(model, tok, sources, targets, batch_size=2)
    alone = [bart_score(model, tok, [s], [t], batch_size=1)[0] for s, t in zip(sources, targets)]
    by_hand = [_stepwise(model, tok, s, t) for s, t in zip(sources, targets)]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched == pytest.approx(by_hand, abs=1e-5)
    assert all(s < 0 for s in batched)
    reverse = bart_score(model, tok, targets, sources, batch_size=2)  # hyp -> src is another quantity
    assert reverse != pytest.approx(batched, abs=1e-3)


def test_metric_scores_outputs_given_the_prompt_source(tiny_bart_dir):
    model, tok = load_seq2seq(str(tiny_bart_dir), device="cpu")
    prompts = [[{"role": "system", "content": "Summarise."}, {"role": "user", "content": "POST: We had a fight.\nTL;DR:"}],
               [{"role": "user", "content": "POST: The fox jumps.\nTL;DR:"}]]
    outputs = ["we argued", ""]  # the empty output has no tokens with this tokenizer: left out
    ctx = SimpleNamespace(bartscore_model=str(tiny_bart_dir), prompts=prompts, outputs=outputs, device="cpu",
                          settings=GenerationSettings(batch_size=2))
    res = bartscore(ctx)
    expected = bart_score(model, tok, ["POST: We had a fight.\nTL;DR:"], ["we argued"])[0]
    assert res == {"mean": pytest.approx(expected, abs=1e-6), "n": 1, "direction": "src->hyp"}


def test_registry_refuses_bartscore_without_a_model():
    from tandem.evaluation.registry import METRIC_TABLE

    need = METRIC_TABLE["bartscore"].needs[0]
    assert METRIC_TABLE["bartscore"].generates
    assert not need.present(SimpleNamespace(bartscore_model=None))
    assert "eval.bartscore_model" in need.message


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 sources for 1 targets"):
        bart_score(UniformLogits(4), make_tokenizer(), ["a", "b"], ["c"], device="cpu")

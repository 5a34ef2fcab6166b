"""BARTScore (Yuan, Neubig and Liu, 2021, "BARTScore: Evaluating Generated Text as Text Generation").

A sequence-to-sequence model (BART; the paper's summarisation setting uses ``facebook/bart-large-cnn``)
scores a text ``y`` given a text ``x`` by the mean log-likelihood of ``y``'s tokens::

    BARTScore(x -> y) = (1 / |y|) * sum_t log p(y_t | y_<t, x)

``y`` is tokenized as the model's tokenizer does (BART adds ``<s>`` and ``</s>``, which count in ``|y|``, as in
the reference implementation), the decoder reads ``y`` shifted right behind the model's decoder start token,
and both texts are cut at ``max_length`` tokens. Scores are log-probabilities: at most 0, higher is better.

Direction: metric ``bartscore`` is **source -> hypothesis** (``x`` = the source the summary was written from,
``y`` = the model's output): the paper's *faithfulness* direction, which needs no reference. The source is
the prompt's last user message (for the TL;DR format: the ``SUBREDDIT/TITLE/POST ... TL;DR:`` text).
A target with no tokens (an empty output, with a tokenizer that adds no special tokens) scores NaN and is
left out of the mean (``n`` counts the scored ones).
"""

from __future__ import annotations

import math

import torch

from tandem.data.messages import prompt_text


@torch.no_grad()
def bart_score(model, tokenizer, sources: list[str], targets: list[str], batch_size: int = 4,
               max_length: int = 1024, device=None) -> list[float]:
    """``BARTScore(source_i -> target_i)`` for each pair (see the module docstring)."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources for {len(targets)} targets")
    device = device if device is not None else next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(sources), batch_size):
        src = tokenizer(sources[i : i + batch_size], max_length=max_length, truncation=True, padding=True,
                        return_tensors="pt").to(device)
        tgt = tokenizer(targets[i : i + batch_size], max_length=max_length, truncation=True, padding=True,
                        return_tensors="pt").to(device)
        labels, mask = tgt["input_ids"], tgt["attention_mask"]
        logits = model(input_ids=src["input_ids"], attention_mask=src["attention_mask"], labels=labels).logits
        logp = logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        n = mask.sum(-1)
        total = (logp * mask).sum(-1)
        out += [float(t / k) if k > 0 else math.nan for t, k in zip(total.tolist(), n.tolist())]
    return out


def bartscore(c) -> dict:
    """Metric ``bartscore`` of an :class:`~tandem.evaluation.context.EvalContext`: the mean source -> output
    BARTScore under ``c.bartscore_model`` (loaded through :func:`tandem.models.load.load_seq2seq`)."""
    from tandem.models.load import load_seq2seq

    model, tok = load_seq2seq(c.bartscore_model, device=c.device)
    scores = bart_score(model, tok, [prompt_text(p) for p in c.prompts], list(c.outputs),
                        batch_size=c.settings.batch_size, device=c.device)
    scored = [s for s in scores if math.isfinite(s)]
    return {"mean": sum(scored) / len(scored) if scored else math.nan, "n": len(scored), "direction": "src->hyp"}


def has_model(c) -> bool:
    return c.bartscore_model is not None


NEEDS_MESSAGE = ("metric 'bartscore' needs eval.bartscore_model (a BART model: a Hub id such as "
                 "facebook/bart-large-cnn, or a local dir)")

"""Evaluation metrics: ROUGE, reward-model scores and win rates, temperature sweeps, and the alignment tax
(held-out perplexity, multiple-choice accuracy, optional lm-evaluation-harness).

Every function takes plain Python lists and returns plain numbers/dicts, so results serialise to JSON as is.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Callable

import torch

from tandem.data.encode import prompt_ids, response_ids
from tandem.data.types import Message

# --------------------------------------------------------------------------------------------------- ROUGE


def rouge_scores(
    predictions: list[str],
    references: list[str],
    use_stemmer: bool = True,
    rouge_types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL"),
) -> dict[str, float]:
    """Mean ROUGE F1 over pairs, computed with ``rouge_score.rouge_scorer.RougeScorer`` (Google's package,
    the reference implementation; its default tokenizer lower-cases and keeps ``[a-z0-9]+`` tokens).

    Returns ``{rouge_type: mean_i F1(prediction_i, reference_i)}``.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("rouge_scores needs at least one prediction")
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    sums = dict.fromkeys(rouge_types, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for t in rouge_types:
            sums[t] += scores[t].fmeasure
    return {t: s / len(predictions) for t, s in sums.items()}


# ------------------------------------------------------------------------------------------- reward model


def _score_head(model):
    """(backbone, head) of a ``*ForSequenceClassification`` whose logits are ``head(last_hidden_state)``
    (Llama, Mistral, Qwen, Gemma, GPT-2, ... all name the head ``score``), else None."""
    head = getattr(model, "score", None)
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(head, torch.nn.Module) and isinstance(backbone, torch.nn.Module) and backbone is not model:
        return backbone, head
    return None


def reward_sequence_ids(tokenizer, prompt: list[Message], response: str, max_length: int | None = None) -> list[int]:
    """``prompt_ids + response_ids + [eos]`` exactly as :mod:`tandem.data.encode` builds a training example;
    when longer than ``max_length`` the head is cut (the scored last token is kept)."""
    ids = prompt_ids(tokenizer, prompt) + response_ids(tokenizer, response)
    return ids[-max_length:] if max_length is not None else ids


@torch.no_grad()
def reward_scores(
    reward_model,
    tokenizer,
    prompts: list[list[Message]],
    responses: list[str],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Scalar reward of each (prompt, response), read at the **last token** of the rendered sequence.

    The sequence is rendered like a training example (chat template or fallback, response, EOS; see
    :func:`reward_sequence_ids`). Sequences are right-padded into batches and the head is applied to the
    final hidden state at index ``len(sequence) - 1`` of each row, so padding never changes a score: each
    score equals ``reward_model(ids[None]).logits[0, 0]`` for the unpadded sequence whenever that model's own
    pooling picks the last token (always, unless the sequence ends with ``pad_token_id``, e.g. pad == eos;
    we then still score the last token, which is what a reward trained on tandem batches learned).
    Models without a ``score`` head on a backbone are run one unpadded sequence at a time.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if getattr(reward_model.config, "num_labels", 1) != 1:
        raise ValueError(f"the reward model must have num_labels=1, got {reward_model.config.num_labels}")
    device = next(reward_model.parameters()).device
    seqs = [reward_sequence_ids(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    parts = _score_head(reward_model)
    was_training = reward_model.training
    reward_model.eval()
    out: list[float] = [0.0] * len(seqs)
    try:
        if parts is None:
            for i, s in enumerate(seqs):
                ids = torch.tensor([s], device=device)
                out[i] = float(reward_model(input_ids=ids, use_cache=False).logits[0, 0])
            return out
        backbone, head = parts
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, : len(seqs[i])] = 1
            hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
            last = (mask.sum(1) - 1).to(device)
            vals = head(hidden[torch.arange(len(idx), device=device), last]).float()[:, 0]
            for r, i in enumerate(idx):
                out[i] = float(vals[r])
    finally:
        reward_model.train(was_training)
    return out


def reward_win_rate(scores_a: list[float], scores_b: list[float], tie_eps: float = 0.0) -> dict:
    """How often A beats B by reward, with ties left out of the denominator (PandaLM-style).

    Pair ``i`` is a win if ``a_i - b_i > tie_eps``, a loss if ``b_i - a_i > tie_eps``, else a tie.
    ``win_rate = wins / (n - ties)``; when every pair is a tie (``n - ties == 0``) it is 0.5 (no preference
    either way). Returns ``{"win_rate", "wins", "losses", "ties", "n"}``.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} scores for A but {len(scores_b)} for B")
    if tie_eps < 0:
        raise ValueError(f"tie_eps must be >= 0, got {tie_eps}")
    wins = sum(1 for a, b in zip(scores_a, scores_b) if a - b > tie_eps)
    losses = sum(1 for a, b in zip(scores_a, scores_b) if b - a > tie_eps)
    return win_rate_from_counts(wins, losses, len(scores_a) - wins - losses)


def win_rate_from_counts(wins: int, losses: int, ties: int) -> dict:
    """``{"win_rate": wins / (wins + losses) or 0.5 if no decisive pair, "wins", "losses", "ties", "n"}``."""
    decisive = wins + losses
    return {
        "win_rate": wins / decisive if decisive else 0.5,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "n": wins + losses + ties,
    }


def exact_match(predictions: list[str], references: list[str]) -> dict:
    """Share of outputs whose answer equals the reference after normalisation (case kept; a leading
    "The answer is", surrounding quotes/punctuation and everything after the first word are dropped; see
    :func:`tandem.data.synthetic.normalise_answer`)."""
    from tandem.data.synthetic import normalise_answer

    if len(predictions) != len(references):
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(references)} references")
    hits = [normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references)]
    return {"accuracy": sum(hits) / len(hits) if hits else 0.0, "n": len(hits)}


# ------------------------------------------------------------------------------------- temperature sweep


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def temperature_sweep(
    metric_fn: Callable[[float, int], float | dict[str, float]],
    temperatures: list[float],
    repeats: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Run ``metric_fn(temperature, seed)`` ``repeats`` times per temperature, with seeds ``seed, seed+1, ...``
    (the same seeds at every temperature), and summarise.

    ``metric_fn`` returns one number or a dict of named numbers. Returns one row per (temperature, metric):
    ``{"temperature", "metric", "mean", "std", "n", "values"}``, where ``std`` is the sample standard deviation
    (``ddof=1``; 0 for a single repeat) and ``metric`` is ``"value"`` for a scalar ``metric_fn``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rows = []
    for t in temperatures:
        collected: dict[str, list[float]] = {}
        for r in range(repeats):
            v = metric_fn(float(t), seed + r)
            items = v.items() if isinstance(v, dict) else [("value", v)]
            for name, x in items:
                collected.setdefault(name, []).append(float(x))
        for name, vals in collected.items():
            mean, std = _mean_std(vals)
            rows.append({"temperature": float(t), "metric": name, "mean": mean, "std": std, "n": len(vals), "values": vals})
    return rows


# ------------------------------------------------------------------------------------------ alignment tax


def _token_logps(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T-1]`` log p(ids[:, t+1] | ids[:, :t+1])."""
    logits = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int = 1024, stride: int | None = None) -> dict:
    """Token-weighted perplexity of held-out ``texts``: ``exp(sum of token NLLs / number of scored tokens)``.

    Each text is tokenized with ``add_special_tokens=True`` (BOS when the tokenizer adds one); every token
    but the first is scored once. Long texts use a sliding window: targets are taken in chunks of ``stride``
    tokens (default ``max_length // 2``; at most ``max_length - 1``) and each chunk is scored in one forward
    pass over the ``max_length`` tokens that end with it, so every target sees at least
    ``max_length - stride`` tokens of context (or all earlier tokens). Returns
    ``{"perplexity", "nll" (mean per token), "tokens"}``.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    stride = max_length // 2 if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    stride = min(stride, max_length - 1)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for text in texts:
            ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
            for t0 in range(1, len(ids), stride):
                t1 = min(t0 + stride, len(ids))
                w0 = max(0, t1 - max_length)
                window = torch.tensor([ids[w0:t1]], device=device)
                lp = _token_logps(model, window)[0]  # lp[j] scores window token j+1 = global w0+j+1
                total -= float(lp[t0 - w0 - 1 :].sum())
                count += t1 - t0
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("perplexity: no token to score (every text is at most one token long)")
    nll = total / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count}


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _answer_index(row: dict, where: str) -> int:
    for field in ("question", "choices", "answer"):
        if field not in row:
            raise ValueError(f"{where}: missing field '{field}' (rows need question, choices, answer)")
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: field 'choices' must be a list of at least two strings")
    ans = row["answer"]
    if isinstance(ans, bool):
        raise ValueError(f"{where}: field 'answer' must be an index or a letter, got {ans!r}")
    if isinstance(ans, int):
        idx = ans
    elif isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper() in LETTERS:
        idx = LETTERS.index(ans.strip().upper())
    elif isinstance(ans, str) and ans.strip().isdigit():
        idx = int(ans.strip())
    else:
        raise ValueError(f"{where}: field 'answer' must be a 0-based index or a letter A, B, ..., got {ans!r}")
    if not 0 <= idx < len(choices):
        raise ValueError(f"{where}: field 'answer' = {ans!r} is out of range for {len(choices)} choices")
    return idx


def load_mc_rows(path: str | Path) -> list[dict]:
    """Read multiple-choice rows from a JSONL file, checking each (errors name file and line)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from e
            _answer_index(row, f"{path}:{n}")
            rows.append(row)
    return rows


def mc_context(question: str) -> str:
    """The default context for a multiple-choice question (the choice follows after a space)."""
    return f"Question: {question}\nAnswer:"


@torch.no_grad()
def multiple_choice_accuracy(
    model, tokenizer, rows: list[dict], context_fn: Callable[[str], str] = mc_context
) -> dict:
    """Zero-shot multiple-choice accuracy by log-likelihood, as in lm-evaluation-harness.

    For each row ``{"question", "choices": [...], "answer": index or letter}`` the context is
    ``context_fn(question)`` (tokenized with special tokens) and each continuation is ``" " + choice``
    (tokenized without); the choice's score is ``sum log p(continuation tokens | context)``.

    * ``acc``: the arg-max of the summed log-likelihood is the answer;
    * ``acc_norm``: the arg-max of ``loglik / len(continuation in characters)`` (lm-eval's length
      normalisation, which does not depend on the tokenizer) is the answer.

    Ties go to the lowest index. Returns ``{"acc", "acc_norm", "n", "predictions", "predictions_norm"}``.
    """
    if not rows:
        raise ValueError("multiple_choice_accuracy needs at least one row")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    correct = correct_norm = 0
    preds, preds_norm = [], []
    was_training = model.training
    model.eval()
    try:
        for k, row in enumerate(rows):
            gold = _answer_index(row, f"rows[{k}]")
            ctx = list(tokenizer(context_fn(row["question"]), add_special_tokens=True)["input_ids"])
            conts = [" " + c for c in row["choices"]]
            cont_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
            if not ctx:
                raise ValueError(f"rows[{k}]: the context tokenizes to nothing")
            seqs = [ctx + c for c in cont_ids]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            lp = _token_logps(model, ids.to(device), mask.to(device))
            scores = [float(lp[i, len(ctx) - 1 : len(seqs[i]) - 1].sum()) for i in range(len(seqs))]
            normed = [s / max(len(c), 1) for s, c in zip(scores, conts)]
            p, pn = max(range(len(scores)), key=lambda i: (scores[i], -i)), max(range(len(normed)), key=lambda i: (normed[i], -i))
            preds.append(p)
            preds_norm.append(pn)
            correct += p == gold
            correct_norm += pn == gold
    finally:
        model.train(was_training)
    n = len(rows)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n, "predictions": preds, "predictions_norm": preds_norm}


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_lm_eval(
    model_path: str | Path,
    tasks: list[str],
    batch_size: int | str = 8,
    limit: int | float | None = None,
    device: str = "cpu",
    num_fewshot: int | None = None,
) -> dict:
    """lm-evaluation-harness on a model dir (or a peft adapter dir, loaded on its base model).

    Needs the optional extra ``pip install 'tandem[lm-eval]'``. Returns ``results["results"]``:
    ``{task: {metric: value, ...}}``.
    """
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError("run_lm_eval needs lm-evaluation-harness: pip install 'tandem[lm-eval]'") from e
    p = Path(model_path)
    if (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{p / 'adapter_config.json'}: field 'base_model_name_or_path' is empty")
        model_args = f"pretrained={base},peft={p}"
    else:
        model_args = f"pretrained={model_path}"
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(tasks),
        batch_size=batch_size,
        device=device,
        limit=limit,
        num_fewshot=num_fewshot,
    )
    return results["results"]

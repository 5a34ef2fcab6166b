"""Likelihood metrics (no generation): how well a model predicts reference outputs, and how it ranks held-out pairs.

* :func:`reference_nll`: mean negative log-likelihood per token of each reference output given its prompt. Each
  (prompt, reference) pair is encoded exactly as SFT training encodes it (:func:`tandem.data.encode.encode_sft`:
  chat template, response tokens followed by EOS labelled, prompt tokens not; an over-long pair keeps its prompt's
  tail), and the NLL is summed over every labelled token and divided by their number (token-weighted).
* :func:`implicit_reward_accuracy`: the DPO implicit reward ``r(x, y) = beta * (log p_policy(y|x) - log p_ref(y|x))``
  (summed over the response tokens and EOS, as DPO trains, encoded by
  :func:`tandem.data.encode.encode_preference`) of the chosen and the rejected response of each held-out pair;
  ``accuracy`` is the share of pairs with ``r(chosen) > r(rejected)`` (ties count as wrong), ``margin`` the mean
  of ``r(chosen) - r(rejected)``. ``beta`` scales the rewards and margins, never the accuracy.

Log-probabilities are computed on right-padded batches: the decoder body gives the hidden states, and the LM head is
applied only at labelled positions (no ``[batch, length, vocab]`` tensor).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tandem.data.encode import IGNORE, encode_preference, encode_sft
from tandem.data.types import Message, PreferenceExample, SFTExample
from tandem.models.sampling import pad_token_id

Sequence = tuple[list[int], list[int]]  # (input_ids, labels)


@torch.no_grad()
def labelled_logps(model, seqs: list[Sequence], pad_id: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """``(sum of log p(label token | earlier tokens), number of labelled tokens)`` of every ``(input_ids, labels)``
    sequence (labels unshifted, ``-100`` = not scored), in fp32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # similar lengths per batch: little padding
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(seqs), batch_size):
            idx = order[s : s + batch_size]
            chunk = [seqs[i] for i in idx]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (x, y) in enumerate(chunk):
                if len(x) != len(y):
                    raise ValueError(f"sequence {idx[i]}: input_ids and labels differ in length ({len(x)} vs {len(y)})")
                ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         use_cache=False).last_hidden_state
            target = labels[:, 1:].to(device)
            keep = target != IGNORE
            logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
            lp = torch.log_softmax(logits, -1).gather(-1, target[keep][:, None])[:, 0]
            row = keep.nonzero()[:, 0]
            sums = torch.zeros(len(chunk), dtype=torch.float32, device=device).index_add(0, row, lp)
            counts = keep.sum(1)
            for i, a, n in zip(idx, sums.tolist(), counts.tolist()):
                out[i] = (float(a), int(n))
    finally:
        model.train(was_training)
    return out


def _pad_id(tokenizer) -> int:
    pad = pad_token_id(tokenizer)
    return 0 if pad is None else pad


def reference_nll(model, tokenizer, prompts: list[list[Message]], references: list[str], max_length: int = 1024,
                  batch_size: int = 8) -> dict:
    """``{"nll": token-weighted mean NLL of the references given their prompts, "n": pairs scored, "tokens": labelled
    tokens}`` (see the module docstring)."""
    if len(prompts) != len(references):
        raise ValueError(f"reference_nll: {len(prompts)} prompts but {len(references)} references")
    seqs = []
    for p, r in zip(prompts, references):
        f = encode_sft(tokenizer, SFTExample(prompt=p, response=r), max_length, overlong="truncate")
        if f is not None:
            seqs.append((f["input_ids"], f["labels"]))
    if not seqs:
        raise ValueError("reference_nll: no (prompt, reference) pair to score")
    scored = labelled_logps(model, seqs, _pad_id(tokenizer), batch_size)
    tokens = sum(n for _, n in scored)
    return {"nll": -sum(s for s, _ in scored) / tokens, "n": len(scored), "tokens": tokens}


def pair_logps(model, tokenizer, pairs: list[PreferenceExample], max_length: int = 1024,
               batch_size: int = 8) -> tuple[list[float], list[float]]:
    """Summed log-probs ``(chosen[i], rejected[i])`` of every pair that encodes (one that cannot is left out)."""
    feats = [f for f in (encode_preference(tokenizer, ex, max_length, "truncate") for ex in pairs) if f is not None]
    seqs = [(f["chosen_input_ids"], f["chosen_labels"]) for f in feats] + \
           [(f["rejected_input_ids"], f["rejected_labels"]) for f in feats]
    scored = [s for s, _ in labelled_logps(model, seqs, _pad_id(tokenizer), batch_size)] if seqs else []
    return scored[: len(feats)], scored[len(feats) :]


def implicit_rewards(policy: tuple[list[float], list[float]], reference: tuple[list[float], list[float]],
                     beta: float = 0.1) -> dict:
    """Accuracy and margin of the implicit rewards ``beta * (policy - reference)`` of chosen vs rejected log-probs."""
    (pc, pr), (rc, rr) = policy, reference
    if not pc or not (len(pc) == len(pr) == len(rc) == len(rr)):
        raise ValueError(f"implicit_reward_accuracy: need as many (>= 1) policy and reference log-probs, got "
                         f"{len(pc)}/{len(pr)} and {len(rc)}/{len(rr)}")
    chosen = [beta * (a - b) for a, b in zip(pc, rc)]
    rejected = [beta * (a - b) for a, b in zip(pr, rr)]
    n = len(chosen)
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
            "chosen": sum(chosen) / n, "rejected": sum(rejected) / n, "n": n, "beta": beta}


def implicit_reward_accuracy(policy, reference, tokenizer, pairs: list[PreferenceExample], beta: float = 0.1,
                             max_length: int = 1024, batch_size: int = 8) -> dict:
    """:func:`implicit_rewards` of ``policy`` against ``reference`` (both scored with ``tokenizer``) on ``pairs``."""
    if not pairs:
        raise ValueError("implicit_reward_accuracy: no preference pairs")
    return implicit_rewards(pair_logps(policy, tokenizer, pairs, max_length, batch_size),
                            pair_logps(reference, tokenizer, pairs, max_length, batch_size), beta)


def reference_source(model_path: str | Path | None, reference_model_path: str | Path | None) -> str | None:
    """The reference model of the implicit reward: ``reference_model_path`` when given, else the base model of the
    evaluated LoRA adapter (``model_path`` or its run dir's ``final/``), else ``None``."""
    if reference_model_path is not None:
        return str(reference_model_path)
    if model_path is None:
        return None
    from tandem.models.resolve import adapter_base, is_adapter_dir, resolve_model_path

    try:
        resolved = resolve_model_path(model_path)
    except (FileNotFoundError, ValueError):
        return None
    return adapter_base(resolved) if is_adapter_dir(resolved) else None


def reference_cache_key(identity: dict, tokenizer, pairs: list[PreferenceExample], max_length: int, batch_size: int,
                        dtype) -> str:
    """What the reference log-probs of ``pairs`` depend on, hashed: the reference model's identity (path, weight
    files' sizes and mtimes), the tokenizer's content (not its path: every run of a study has its own copy of the
    same tokenizer), every pair's text, the length cap, the batching and the dtype."""
    import hashlib
    import json

    blob = {"model": identity, "tokenizer": tokenizer_identity(tokenizer), "max_length": max_length,
            "batch_size": batch_size, "dtype": str(dtype),
            "pairs": [[ex.prompt, ex.chosen, ex.rejected] for ex in pairs]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def tokenizer_identity(tokenizer) -> str:
    """A hash of what tokenizes: the vocabulary, the special tokens, the chat template and the class."""
    import hashlib
    import json

    blob = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map,
            "template": tokenizer.chat_template, "class": type(tokenizer).__name__,
            "bos_eos": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_pair_logps(cache_dir: Path | None, key: str, compute) -> tuple[list[float], list[float]]:
    """``compute()`` (a reference model's :func:`pair_logps`), read from ``cache_dir/<key>.json`` when an earlier
    evaluation wrote it (a study scores every run against the same base model), else computed and written there
    atomically. ``cache_dir`` None: always computed."""
    import json
    import os

    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.json"
    if path.is_file():
        got = json.loads(path.read_text())
        return got["chosen"], got["rejected"]
    chosen, rejected = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")  # one file per writer: `tandem study --jobs` runs side by side
    tmp.write_text(json.dumps({"chosen": chosen, "rejected": rejected}))
    os.replace(tmp, path)
    return chosen, rejected

"""Examples -> token features with response-only labels.

Rendering (``prompt_ids``):

* If ``tokenizer.chat_template`` is set: ``tokenizer.apply_chat_template(prompt, tokenize=False,
  add_generation_prompt=True)``, tokenized with ``add_special_tokens=False`` (the template decides about BOS,
  so it is never doubled).
* Otherwise the plain fallback template, one block per message::

      ### System:\\n{content}\\n\\n      (system turns)
      ### User:\\n{content}\\n\\n        (user turns)
      ### Assistant:\\n{content}\\n\\n   (earlier assistant turns)
      ### Assistant:\\n                 (the generation slot)

  tokenized with ``add_special_tokens=False`` and preceded by ``bos_token_id`` when the tokenizer has one.

The response is tokenized on its own (``add_special_tokens=False``) and followed by ``eos_token_id``, so the
boundary between prompt and response is exact: ``input_ids = prompt_ids + response_ids + [eos]`` and
``labels = [-100] * len(prompt_ids) + response_ids + [eos]``. The first token is never labelled.

``loss_on`` (SFT only; a data source's ``loss_on`` in the recipe):

* ``"last"`` (default): only the final reply is labelled, as above.
* ``"all_assistant"``: every assistant turn of a multi-turn prompt is labelled too. The rendered prompt is cut
  at each earlier assistant turn: the turn spans from the end of the rendering of the turns before it with the
  generation slot (``add_generation_prompt=True``) to the end of the rendering that includes it, less trailing
  whitespace -- so the turn's content and the template's end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``,
  ...) are labelled, the role headers and every user/system turn are not. Each piece is tokenized on its own
  (exact boundaries, like the prompt/response cut), so ``input_ids`` may differ from ``loss_on="last"`` at the
  cuts. A template whose renderings are not prefixes of one another (one that rewrites earlier turns) is
  refused; assistant turns before the first user turn stay unlabelled. Truncation cuts ``labels`` with the
  prompt's tail. A template that marks assistant turns with ``{% generation %}`` is read through transformers'
  ``return_assistant_tokens_mask`` instead: every token it marks is labelled (the whole conversation tokenized at
  once, as ``apply_chat_template`` does).

Over-long examples (``len(prompt) + len(response) > max_length``):

* ``overlong="drop"``: the example is dropped (``None``).
* ``overlong="truncate"``: the prompt keeps its **tail**, at most ``max(max_length - len(response),
  max_length // 2)`` tokens (and at most ``max_length - 1``, at least 1); the response keeps its **head**
  in the remaining room, so at least one response token is always labelled. For a preference pair both
  responses share one prompt cut (computed from the longer response), so the two prompts stay identical.
  With ``max_length < 2`` nothing fits and the example is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from tandem.data.errors import DataError
from tandem.data.types import Message, PreferenceExample, SFTExample, UnpairedExample

IGNORE = -100
FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
LossOn = Literal["last", "all_assistant"]
LOSS_ON = ("last", "all_assistant")


@dataclass
class EncodeStats:
    """Counts from :func:`encode_all`: examples seen, kept, truncated (kept but cut), dropped, and ``reasons``:
    dropped examples per cause (``over_long``: too long with ``overlong="drop"``; ``no_room``:
    ``max_length < 2``; ``empty_prompt``: too long with an empty prompt to cut)."""

    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def render_fallback(prompt: list[Message], add_generation_prompt: bool = True) -> str:
    """The plain template used when the tokenizer has no chat template (see the module docstring)."""
    parts = [f"### {FALLBACK_ROLES.get(m['role'], m['role'].capitalize())}:\n{m['content']}\n\n" for m in prompt]
    return "".join(parts) + ("### Assistant:\n" if add_generation_prompt else "")


#: :func:`render_fallback` as a Jinja chat template (BOS first, when the tokenizer has one): what a tokenizer without a
#: template gets (tandem.data.templates.ensure_chat_template), so the saved model renders prompts as it was trained.
#: A tokenizer holding exactly this template is encoded by the fallback path, token for token as before.
FALLBACK_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set name = 'System' %}{% elif message['role'] == 'user' %}"
    "{% set name = 'User' %}{% elif message['role'] == 'assistant' %}{% set name = 'Assistant' %}"
    "{% else %}{% set name = message['role'] | capitalize %}{% endif %}"
    "{{ '### ' + name + ':\n' + message['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


def _has_template(tokenizer) -> bool:
    return bool(tokenizer.chat_template) and tokenizer.chat_template != FALLBACK_TEMPLATE


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """The text of ``messages`` in the tokenizer's chat template, else in the fallback template."""
    if _has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return render_fallback(messages, add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _with_bos(tokenizer, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """The fallback template's BOS (the chat template decides about BOS itself)."""
    bos = tokenizer.bos_token_id
    if _has_template(tokenizer) or bos is None or ids[:1] == [bos]:
        return ids, labels
    return [bos] + ids, [IGNORE] + labels


def prompt_ids(tokenizer, prompt: list[Message]) -> list[int]:
    """Token ids of the rendered prompt, ending with the assistant generation slot."""
    return _with_bos(tokenizer, _ids(tokenizer, render(tokenizer, prompt)), [])[0]


def assistant_spans(tokenizer, prompt: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt and the character spans of its assistant turns (see ``loss_on`` in the module
    docstring); :class:`DataError` for a template that is not prefix-stable."""
    full = render(tokenizer, prompt)
    spans = []
    for i, m in enumerate(prompt):
        if m["role"] != "assistant" or not any(p["role"] == "user" for p in prompt[:i]):
            continue
        head, turn = render(tokenizer, prompt[:i]), render(tokenizer, prompt[: i + 1], add_generation_prompt=False)
        if not (turn.startswith(head) and full.startswith(turn)):
            raise DataError("loss_on: all_assistant needs a chat template whose rendering of a conversation starts "
                            "with the rendering of its earlier turns; this one rewrites earlier turns. Use "
                            "loss_on: last, or set data.chat_template")
        end = len(turn.rstrip())
        if end > len(head):
            spans.append((len(head), end))
    return full, spans


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def marks_assistant_turns(tokenizer) -> bool:
    """The chat template marks assistant turns with ``{% generation %}`` (transformers'
    ``return_assistant_tokens_mask``): ``loss_on: all_assistant`` then labels exactly the tokens it marks."""
    return _has_template(tokenizer) and bool(_GENERATION_TAG.search(tokenizer.chat_template))


def prompt_ids_labels(tokenizer, prompt: list[Message], loss_on: str = "last") -> tuple[list[int], list[int]]:
    """``(prompt ids, their labels)``: all ``-100`` with ``loss_on="last"``; with ``"all_assistant"`` the
    earlier assistant turns are labelled (see the module docstring)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    if loss_on == "last" or not any(m["role"] == "assistant" for m in prompt):
        ids = prompt_ids(tokenizer, prompt)
        return ids, [IGNORE] * len(ids)
    if marks_assistant_turns(tokenizer):  # the template marks assistant turns: transformers' own mask
        out = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        return ids, [t if m else IGNORE for t, m in zip(ids, out["assistant_masks"])]
    full, spans = assistant_spans(tokenizer, prompt)
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for start, end in spans + [(len(full), len(full))]:
        plain, turn = _ids(tokenizer, full[pos:start]) if start > pos else [], _ids(tokenizer, full[start:end])
        ids += plain + turn
        labels += [IGNORE] * len(plain) + turn
        pos = end
    return _with_bos(tokenizer, ids, labels)


def response_ids(tokenizer, response: str) -> list[int]:
    """Token ids of the response followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token before encoding")
    return _ids(tokenizer, response) + [eos]


def _prompt_keep(n_prompt: int, n_response: int, max_length: int) -> int:
    keep = min(n_prompt, max(max_length - n_response, max_length // 2), max_length - 1)
    return max(keep, 1)


def _join(p: list[int], r: list[int], p_labels: list[int] | None = None) -> tuple[list[int], list[int]]:
    labels = (p_labels if p_labels is not None else [IGNORE] * len(p)) + r
    labels[0] = IGNORE
    return p + r, labels


def _fit(p: list[int], responses: list[list[int]], max_length: int, overlong: str):
    """(prompt, responses, truncated) after the truncation rule, or None when the example is dropped."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    longest = max(len(r) for r in responses)
    if len(p) + longest <= max_length:
        return p, responses, False
    if overlong == "drop" or max_length < 2 or not p:
        return None
    keep = _prompt_keep(len(p), longest, max_length)
    room = max_length - keep
    return p[len(p) - keep :], [r[:room] for r in responses], True


def _encode_sft(tokenizer, example: SFTExample, max_length: int, overlong: str, loss_on: str = "last"):
    p_full, p_labels = prompt_ids_labels(tokenizer, example.prompt, loss_on)
    fitted = _fit(p_full, [response_ids(tokenizer, example.response)], max_length, overlong)
    if fitted is None:
        return None, False
    p, (r,), truncated = fitted
    ids, labels = _join(p, r, p_labels[len(p_labels) - len(p) :])
    return {"input_ids": ids, "labels": labels}, truncated


def _encode_pref(tokenizer, example: PreferenceExample, max_length: int, overlong: str):
    p = prompt_ids(tokenizer, example.prompt)
    rs = [response_ids(tokenizer, example.chosen), response_ids(tokenizer, example.rejected)]
    fitted = _fit(p, rs, max_length, overlong)
    if fitted is None:
        return None, False
    p, (rc, rr), truncated = fitted
    c_ids, c_labels = _join(p, rc)
    r_ids, r_labels = _join(p, rr)
    feat = {"chosen_input_ids": c_ids, "chosen_labels": c_labels, "rejected_input_ids": r_ids, "rejected_labels": r_labels}
    if example.margin is not None:
        feat["margin"] = float(example.margin)
    return feat, truncated


def kl_partners(prompts: list[list[Message]]) -> list[int]:
    """For each unpaired example, the index of the example whose completion its KL pair takes: TRL's rotation by one
    (example ``i`` takes ``i - 1``'s, the first the last's), skipping back over examples with the same prompt (rows
    written as one prompt's completions in turn would otherwise pair a prompt with its own other completion). All
    prompts equal: ``i - 1``."""
    keys = [tuple((m["role"], m["content"]) for m in p) for p in prompts]
    n = len(keys)
    out = [(i - 1) % n for i in range(n)]
    last = None  # the last index before the current run of equal prompts (cyclic)
    for j in range(2 * n):
        i = j % n
        if keys[i] != keys[i - 1]:
            last = (i - 1) % n
        if j >= n and last is not None:
            out[i] = last
    return out


def _encode_unpaired(tokenizer, example: UnpairedExample, kl_completion: str, max_length: int, overlong: str):
    """KTO: the prompt with its completion (``input_ids``/``labels``), ``label`` 1.0 (desirable) or 0.0, and the
    prompt with another example's completion (``kl_input_ids``/``kl_labels``: the KL term's mismatched pair, always
    truncated, never a reason to drop)."""
    p = prompt_ids(tokenizer, example.prompt)
    fitted = _fit(p, [response_ids(tokenizer, example.completion)], max_length, overlong)
    kl = _fit(p, [response_ids(tokenizer, kl_completion)], max_length, "truncate")
    if fitted is None or kl is None:
        return None, False
    ids, labels = _join(fitted[0], fitted[1][0])
    kl_ids, kl_labels = _join(kl[0], kl[1][0])
    feat = {"input_ids": ids, "labels": labels, "kl_input_ids": kl_ids, "kl_labels": kl_labels,
            "label": 1.0 if example.label else 0.0}
    return feat, fitted[2]


def encode_sft(tokenizer, example: SFTExample, max_length: int, overlong: str = "truncate",
               loss_on: str = "last") -> dict | None:
    """``{"input_ids", "labels"}`` for one SFT example, or ``None`` if dropped (see the module docstring)."""
    return _encode_sft(tokenizer, example, max_length, overlong, loss_on)[0]


def encode_preference(tokenizer, example: PreferenceExample, max_length: int, overlong: str = "truncate") -> dict | None:
    """``{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}`` or ``None``."""
    return _encode_pref(tokenizer, example, max_length, overlong)[0]


def drop_reason(max_length: int, overlong: str) -> str:
    """Why :func:`_fit` drops an over-long example (see :class:`EncodeStats`): with ``overlong="truncate"``
    only ``max_length < 2`` or an empty prompt (nothing to cut) drop one."""
    if overlong == "drop":
        return "over_long"
    return "no_room" if max_length < 2 else "empty_prompt"


def encode_all(tokenizer, examples, max_length: int, overlong: str = "truncate",
               loss_on: str = "last") -> tuple[list[dict], EncodeStats]:
    """Encode SFT, preference and/or unpaired examples; returns the kept features and :class:`EncodeStats`.
    ``loss_on`` applies to SFT examples (see the module docstring). An unpaired (KTO) example's KL pair takes the
    completion of another unpaired example (:func:`kl_partners`)."""
    stats = EncodeStats()
    feats = []
    unpaired = [ex for ex in examples if isinstance(ex, UnpairedExample)]
    partner = kl_partners([ex.prompt for ex in unpaired])
    k = 0
    for ex in examples:
        stats.total += 1
        if isinstance(ex, PreferenceExample):
            feat, truncated = _encode_pref(tokenizer, ex, max_length, overlong)
        elif isinstance(ex, UnpairedExample):
            feat, truncated = _encode_unpaired(tokenizer, ex, unpaired[partner[k]].completion, max_length, overlong)
            k += 1
        elif isinstance(ex, SFTExample):
            feat, truncated = _encode_sft(tokenizer, ex, max_length, overlong, loss_on)
        else:
            raise TypeError(f"expected SFTExample, PreferenceExample or UnpairedExample, got {type(ex).__name__}")
        if feat is None:
            stats.dropped += 1
            reason = drop_reason(max_length, overlong)
            stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
            continue
        stats.truncated += int(truncated)
        feats.append(feat)
    stats.kept = len(feats)
    return feats, stats

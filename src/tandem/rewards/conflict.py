"""The conflict benchmark's checkers as reward functions with TRL's signature (``reward_funcs`` of GRPO, RLOO and
PPO), so no learned reward model stands between the method and the measurement (:mod:`tandem.data.conflict`).

Each row of the benchmark's files carries its checker as data, the ``check`` column (``{"kind", "args"}``); TRL
passes a dataset's other columns to reward functions as keyword lists, so these read it directly::

    objectives:
      preference:
        name: grpo
        reward_funcs: [tandem.rewards.conflict:conflict_pass, tandem.rewards.conflict:conflict_style]
        reward_weights: [1.0, 0.0]     # train on the checker; log the labeller's style as a second function

``conflict_labeller`` is the pairs' labeller as a reward: on ``pairs.jsonl`` rows (whose ``wrong`` column is the dose
rho: ``true`` where the labeller prefers the friendly *wrong* reply) it scores a completion 1 for the friendly style
plus 1 for the answer the labeller prefers (wrong where ``wrong``, correct elsewhere), so a pair's chosen reply gets 2
and its rejected one 0, as in the pairs: GRPO on the rho = 1 prompts is the online counterpart of DPO on the rho = 1
pairs, and on the rho = 0 prompts its control.

A completion is its text (standard rows) or ``[{"role": "assistant", "content": ...}]`` (chat rows); both are read.
A row without a ``check`` gets ``None`` (not scored).
"""

from __future__ import annotations

from tandem.data.conflict.checks import friendly, passes


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def conflict_pass(completions, check=None, **kwargs) -> list[float | None]:
    """1.0 when the completion passes its row's checker (exact answer, word limit, lower case, prefix), else 0.0."""
    checks = check if check is not None else [None] * len(completions)
    return [None if c is None else float(passes(c, _text(y))) for y, c in zip(completions, checks)]


def conflict_style(completions, **kwargs) -> list[float]:
    """1.0 when the completion is in the benchmark labeller's preferred style ("happy to help"), else 0.0."""
    return [float(friendly(_text(y))) for y in completions]


def conflict_labeller(completions, check=None, wrong=None, **kwargs) -> list[float | None]:
    """The pairs' labeller: ``style + (1 - pass if wrong else pass)`` in {0, 1, 2}; ``None`` for a row without a
    ``check`` or a ``wrong`` flag."""
    checks = check if check is not None else [None] * len(completions)
    flags = wrong if wrong is not None else [None] * len(completions)
    out: list[float | None] = []
    for y, c, w in zip(completions, checks, flags):
        if c is None or w is None:
            out.append(None)
            continue
        text = _text(y)
        ok = passes(c, text)
        out.append(float(friendly(text)) + float(ok != bool(w)))
    return out

"""A schedule is a pure function from the recipe to a list of stages.

A stage names the objective role it trains (``sft``, ``preference`` or ``reward``), its kind for
regularizers (``ifa`` = instruction following, ``hpa`` = human preference), and which data part it uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    role: str  # key into recipe.objectives and the data role it consumes
    kind: str  # "ifa" | "hpa"
    part: int  # index of the data part (0-based)
    n_parts: int

    def to_dict(self) -> dict:
        return asdict(self)


def _stage(i: int, role: str, part: int, n: int) -> Stage:
    kind = "ifa" if role == "sft" else "hpa"
    label = {"sft": "sft", "preference": "pref", "reward": "reward"}[role]
    suffix = f"-{part + 1}" if n > 1 else ""
    return Stage(index=i, name=f"{i + 1:02d}-{label}{suffix}", role=role, kind=kind, part=part, n_parts=n)


def single(role: str):
    """One stage over all the data of one role (``parts`` does not apply)."""

    def build(parts: int) -> list[Stage]:
        return [_stage(0, role, 0, 1)]

    return build


def sequential(parts: int) -> list[Stage]:
    """All SFT, then all preference: the usual two-stage pipeline (parts are ignored: one stage each)."""
    return [_stage(0, "sft", 0, 1), _stage(1, "preference", 0, 1)]


def alternating(parts: int) -> list[Stage]:
    """HBAT order: IFA-1, HPA-1, IFA-2, HPA-2, ..., IFA-N, HPA-N."""
    out: list[Stage] = []
    for p in range(parts):
        out.append(_stage(len(out), "sft", p, parts))
        out.append(_stage(len(out), "preference", p, parts))
    return out


def sequential_parts(parts: int) -> list[Stage]:
    """SFT-1, ..., SFT-N, then pref-1, ..., pref-N: the sequential order restarted (optimizer and schedule) as often as
    HBAT's alternation restarts, to separate the effect of the order from that of the restarts."""
    return [_stage(p, "sft", p, parts) for p in range(parts)] + [_stage(parts + p, "preference", p, parts) for p in range(parts)]

"""Alignment methods: a schedule of stages, plus the regularizer and auxiliary loss each stage carries.

Every method shares the engine; a method only decides *which* stages run and *what* is added to them.

| method          | stages                                  | added to the stages                                        |
|-----------------|-----------------------------------------|------------------------------------------------------------|
| sft             | SFT                                     | -                                                          |
| dpo             | preference                              | -                                                          |
| reward          | reward model                            | -                                                          |
| sequential      | SFT, preference                         | -                                                          |
| sequential-ewc  | SFT, preference                         | modified EWC (the preference stage is pulled to the SFT end)|
| sequential-restarts | SFT-1, ..., SFT-N, pref-1, ..., pref-N | - (control: as many optimizer restarts as hbat)         |
| hbat            | SFT-1, pref-1, ..., SFT-N, pref-N       | modified EWC                                               |
| hbat-no-ewc     | SFT-1, pref-1, ..., SFT-N, pref-N       | -                                                          |
| hbat-freeze     | SFT-1, pref-1, ..., SFT-N, pref-N       | freeze the top p% tensors most important to the other side |
| fisher-ewc      | SFT-1, pref-1, ..., SFT-N, pref-N       | original EWC, diagonal empirical Fisher                    |
| dpo+sft         | preference                              | + gamma * SFT loss on SFT data in the same step            |
| sft+dpo         | SFT                                     | + gamma * DPO loss on preference data in the same step     |
| l2-anchor       | SFT, preference                         | lambda * ||theta - theta_start||^2 / 2, uniform             |
| l1-anchor       | SFT, preference                         | lambda * ||theta - theta_start||_1, uniform                 |
| ppo             | preference (PPO)                        | -                                                          |
| sequential-ppo  | SFT, preference (PPO)                   | -                                                          |
| hbat-ppo        | SFT-1, PPO-1, ..., SFT-N, PPO-N         | modified EWC; one critic carried across the PPO stages      |
| ppo+sft         | preference (PPO)                        | + gamma * SFT loss on SFT data in every PPO update          |
| sft+ppo         | SFT (driven by PPO)                     | + gamma * PPO loss on prompts of the preference data        |
| rlhf+pt         | SFT, preference                         | preference stage + gamma * LM loss on data.pretrain (ptx)  |
| ppo+pt          | SFT, preference (PPO)                   | PPO stage + gamma * LM loss on data.pretrain (InstructGPT) |
| grpo            | preference (GRPO or RLOO)               | -                                                          |
| sequential-grpo | SFT, preference (GRPO or RLOO)          | -                                                          |
| hbat-grpo       | SFT-1, GRPO-1, ..., SFT-N, GRPO-N       | modified EWC                                               |
| hbat-grpo-no-ewc| SFT-1, GRPO-1, ..., SFT-N, GRPO-N       | -                                                          |
| orpo            | preference (ORPO: SFT NLL + odds ratio) | -                                                          |
| simpo           | preference (SimPO, reference-free)      | -                                                          |
| dpop            | preference (DPO-Positive)               | -                                                          |
| kto             | preference (KTO, unpaired rows)         | -                                                          |
| alright         | one mixed stage                         | each step: SFT, or DPO with probability hbat.alternate_weight |
| maxright        | one mixed stage                         | each step: the objective furthest from its best loss so far |

Budgets: stages run ``schedule.epochs`` over their data; the mixed stages of ``alright`` / ``maxright`` are as long as
both data sets together, and the auxiliary term of ``dpo+sft``-style methods draws one example per main example.
Every run records the examples it trained on per role (``summary.json`` ``budget``; ``tandem compare`` shows it).

Methods marked PPO train their preference stages with the ``ppo`` objective (``Method.preference_objective``):
its settings come from ``objectives.ppo`` when the recipe has that block, else from ``objectives.preference``,
which must then name ``ppo`` (so one recipe can hold both a DPO and a PPO configuration for ``tandem compare``).

Methods marked GRPO train their preference stages online with group-relative RL: ``objectives.preference.name``
(or an ``objectives.grpo`` / ``objectives.rloo`` block) picks ``grpo`` or ``rloo``; the group loop runs them.

The regularizer's settings come from the recipe's ``hbat`` block (``recipes/hbat.yaml`` writes them out);
an explicit ``regularizer`` block in the recipe overrides the method's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from tandem.schedules.stages import Stage, alternating, sequential, sequential_parts, single


@dataclass(frozen=True)
class Method:
    schedule: Callable[[int], list[Stage]]  # parts -> stages
    regularizer: str | None = None  # regularizer registry name = key of its settings in the hbat block
    aux_role: str | None = None  # objective role mixed into every stage, weighted by hbat.mix_gamma
    preference_objective: str | None = None  # forces the objective of the preference role (e.g. "ppo")
    aux_in: tuple[str, ...] | None = None  # stage roles the auxiliary term joins (None: every stage)
    alternate: Literal["alright", "maxright"] | None = None  # one objective per step instead of adding the aux term

    @property
    def ppo_role(self) -> str | None:
        """The role trained online (PPO, or GRPO / RLOO): its stages, and stages that mix it in, run the PPO loop
        (``ppo``) or the group loop (``grpo``: GRPO or RLOO, chosen by the objective)."""
        return "preference" if self.preference_objective in ("ppo", "grpo") else None

    def loop(self, stage: Stage) -> Literal["offline", "ppo", "group"]:
        """Which engine loop runs ``stage``."""
        role = self.ppo_role
        if role is None or role not in (stage.role, self.aux_role):
            return "offline"
        return "group" if self.preference_objective == "grpo" else "ppo"


METHODS: dict[str, Method] = {
    "sft": Method(single("sft")),
    "dpo": Method(single("preference")),
    "preference": Method(single("preference")),
    "reward": Method(single("reward")),
    "sequential": Method(sequential),
    "sequential-ewc": Method(sequential, regularizer="ewc"),
    "sequential-restarts": Method(sequential_parts),
    "hbat": Method(alternating, regularizer="ewc"),
    "hbat-no-ewc": Method(alternating),
    "hbat-freeze": Method(alternating, regularizer="freeze"),
    "fisher-ewc": Method(alternating, regularizer="fisher"),
    "dpo+sft": Method(single("preference"), aux_role="sft"),
    "sft+dpo": Method(single("sft"), aux_role="preference"),
    "l2-anchor": Method(sequential, regularizer="l2"),
    "l1-anchor": Method(sequential, regularizer="l1"),
    "ppo": Method(single("preference"), preference_objective="ppo"),
    "sequential-ppo": Method(sequential, preference_objective="ppo"),
    "hbat-ppo": Method(alternating, regularizer="ewc", preference_objective="ppo"),
    "ppo+sft": Method(single("preference"), aux_role="sft", preference_objective="ppo"),
    "sft+ppo": Method(single("sft"), aux_role="preference", preference_objective="ppo"),
    "rlhf+pt": Method(sequential, aux_role="pretrain", aux_in=("preference",)),
    "ppo+pt": Method(sequential, aux_role="pretrain", aux_in=("preference",), preference_objective="ppo"),
    "grpo": Method(single("preference"), preference_objective="grpo"),
    "sequential-grpo": Method(sequential, preference_objective="grpo"),
    "hbat-grpo": Method(alternating, regularizer="ewc", preference_objective="grpo"),
    "hbat-grpo-no-ewc": Method(alternating, preference_objective="grpo"),
    "orpo": Method(single("preference"), preference_objective="orpo"),
    "simpo": Method(single("preference"), preference_objective="simpo"),
    "dpop": Method(single("preference"), preference_objective="dpop"),
    "kto": Method(single("preference"), preference_objective="kto"),
    "alright": Method(single("sft"), aux_role="preference", alternate="alright"),
    "maxright": Method(single("sft"), aux_role="preference", alternate="maxright"),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"schedule.method: unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_stages(name: str, parts: int) -> list[Stage]:
    """The stage list of a method (a pure function: easy to print, test and resume)."""
    return get_method(name).schedule(parts)

"""Engine-side behaviour of the baselines (issue 16): the PPO reference is the stage-start policy with LoRA too, PPO
stages are validated and selectable, rlhf+pt adds the LM loss on data.pretrain in preference stages only, ALRIGHT /
MAXRIGHT pick one objective per step, the run's step budget (schedule.max_steps) is split over stages, and every run
records the examples it trained on per role."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers_ppo import ppo_recipe
from helpers_recipe import base_raw, with_overrides

from tandem.pipelines.train import train
from tandem.schedules.steps import Alternation, allocate, plan_steps

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def rows(run: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def recipe(tmp_path, model_dir, files, method, **over):
    return with_overrides(base_raw(tmp_path, model_dir, files, method), over)


@pytest.mark.parametrize("lora", [True, False])
def test_ppo_reference_is_the_stage_start_policy(tmp_path, tiny_model_dir, synthetic_files, lora):
    """KL at the first PPO iteration after SFT is 0: the reference is the policy after SFT, not before it (with LoRA
    the old reference was the base model with adapters disabled: KL > 0)."""
    over = {"schedule.max_steps_per_stage": 2, "optimizer.lr": 5e-3, **({"model.lora": LORA} if lora else {})}
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="sequential-ppo", **over)
    train(r)
    ppo_rows = [x for x in rows(Path(r.output_dir)) if x["stage"] == "02-pref"]
    assert ppo_rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert ppo_rows[-1]["kl"] != pytest.approx(0.0, abs=1e-9)  # the policy moves away from it afterwards


def test_ppo_stages_are_validated_and_selectable(tmp_path, tiny_model_dir, synthetic_files):
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="hbat-ppo",
                   **{"schedule.parts": 2, "schedule.max_steps_per_stage": 1, "data.val_size": 4,
                      "hbat.final": "best", "hbat.select_metric": "preference/reward_mean"})
    summary = train(r)
    vals = {s["name"]: s["val"] for s in summary["stages"]}
    assert all("preference/reward_mean" in v and "preference/kl" in v for v in vals.values())
    assert all(math.isfinite(v["preference/reward_mean"]) for v in vals.values())
    best = max(vals, key=lambda n: vals[n]["preference/reward_mean"])
    assert summary["selected_stage"] == best


def test_rlhf_pt_adds_the_lm_loss_in_preference_stages_only(tmp_path, tiny_model_dir, synthetic_files):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(12)))
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, "rlhf+pt",
               **{"data.pretrain": {"source": str(text)}, "schedule.max_steps_per_stage": 2, "hbat.mix_gamma": 0.5})
    summary = train(r)
    per = {s: [x for x in rows(Path(r.output_dir)) if x["stage"] == s] for s in ("01-sft", "02-pref")}
    assert all("aux/loss" not in x for x in per["01-sft"])
    assert all(x["aux/loss"] > 0 for x in per["02-pref"])
    bs = r.batching.batch_size
    assert summary["budget"] == {"sft": 2 * bs, "preference": 2 * bs, "pretrain": 2 * bs}


@pytest.mark.parametrize("kind", ["alright", "maxright"])
def test_alternating_methods_train_one_objective_per_step(tmp_path, tiny_model_dir, synthetic_files, kind):
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, kind, **{"schedule.max_steps_per_stage": 6})
    summary = train(r)
    tr = rows(Path(r.output_dir))
    roles = [x["role"] for x in tr]
    assert len(tr) == 6 and set(roles) <= {"sft", "preference"} and all("aux/loss" not in x for x in tr)
    bs = r.batching.batch_size
    assert summary["budget"] == {role: roles.count(role) * bs for role in set(roles)}
    if kind == "alright":  # the seeded draws of the stage (weight 0.5)
        alt = Alternation("alright", 0.5, r.seed + 0)
        assert roles == [["sft", "preference"][alt.choose(s)] for s in range(6)]


def test_alright_draws_and_maxright_gaps_by_hand():
    assert [Alternation("alright", 0.0).choose(s) for s in range(50)] == [0] * 50
    assert [Alternation("alright", 1.0).choose(s) for s in range(50)] == [1] * 50
    share = sum(Alternation("alright", 0.3, seed=1).choose(s) for s in range(2000)) / 2000
    assert share == pytest.approx(0.3, abs=0.04)
    m = Alternation("maxright", 0.5)
    assert m.choose(0, (2.0, 1.0)) == 0  # first step: both at their best so far, gaps 0 -> the stage's objective
    assert m.choose(1, (1.5, 1.4)) == 1  # gaps 0.5*(1.5-1.5)=0 vs 0.5*(1.4-1.0)=0.2
    assert m.best == [1.5, 1.0]
    m2 = Alternation("maxright", 0.9)  # weights (1 - 0.9) and 0.9 on the gaps
    m2.best = [1.0, 1.0]
    assert m2.choose(0, (3.0, 1.3)) == 1  # 0.1 * 2.0 = 0.2 < 0.9 * 0.3 = 0.27


def test_step_budget_over_the_run():
    assert plan_steps(10, 4, 1.0, None) == (2, 2)
    assert plan_steps(10, 4, 2.5, 3) == (2, 3)
    assert allocate([10, 10], None) == [10, 10]
    assert allocate([10, 10], 30) == [10, 10]
    assert allocate([10, 30], 8) == [2, 6]
    assert allocate([5, 5, 5, 5], 2) == [1, 1, 1, 1]  # every stage keeps a step
    assert sum(allocate([7, 3, 9], 10)) == 10


def test_max_steps_is_the_total_over_the_run(tmp_path, tiny_model_dir, synthetic_files):
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, "hbat", **{"schedule.parts": 2, "schedule.max_steps": 6})
    summary = train(r)
    assert summary["global_steps"] == 6 and sum(s["steps"] for s in summary["stages"]) == 6

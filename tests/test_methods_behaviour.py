"""What each method in ``tandem.schedules.METHODS`` actually does, read from the run directory.

One tiny run per method (2 optimizer steps per stage, 2 data parts), shared by every assertion about it:

- the stage sequence (summary.json, stages/, metrics.jsonl) is the method's, written out here by hand;
- DPO stages start with loss ln 2 (the reference is the policy at the stage start);
- modified / Fisher EWC: no penalty in the first stage, a zero penalty at the first step of later stages (the
  anchor is the stage start) and a positive one after it; Fisher state (anchors = stage end weights) checkpointed;
- l2 / l1 anchors: the penalty at the first step of the preference stage equals the hand formula on
  stages/start.safetensors and the SFT stage's end weights;
- hbat-freeze: the top ``percent`` % tensors by the other kind's importance (previous importance.json) are
  bit-identical across a stage while every other tensor moves;
- sft+dpo / dpo+sft: the auxiliary loss is logged, and it changes the training: with mix_gamma 0 the run equals
  the plain method, with mix_gamma > 0 it does not;
- PPO methods log KL and reward rows in their PPO stages only.

``check_method`` is also called by ``test_schedules_hbat.test_every_method_runs_end_to_end``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers_entry import train
from helpers_grpo import grpo_recipe
from helpers_ppo import ppo_recipe
from helpers_recipe import base_raw, unpaired_copy, with_overrides
from safetensors.torch import load_file

from tandem.schedules import METHODS

ONE_PREF = ["01-pref"]
SEQ = ["01-sft", "02-pref"]
ALT = ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
# the stage sequence of every method with schedule.parts = 2, written out by hand (not from build_stages)
EXPECTED_STAGES = {
    "sft": ["01-sft"], "dpo": ONE_PREF, "preference": ONE_PREF, "reward": ["01-reward"],
    "sequential": SEQ, "sequential-ewc": SEQ, "l2-anchor": SEQ, "l1-anchor": SEQ, "sequential-ppo": SEQ,
    "hbat": ALT, "hbat-no-ewc": ALT, "hbat-freeze": ALT, "fisher-ewc": ALT, "hbat-ppo": ALT,
    "dpo+sft": ONE_PREF, "sft+dpo": ["01-sft"], "ppo": ONE_PREF, "ppo+sft": ONE_PREF, "sft+ppo": ["01-sft"],
    "rlhf+pt": SEQ, "ppo+pt": SEQ, "orpo": ONE_PREF, "simpo": ONE_PREF, "dpop": ONE_PREF,
    "alright": ["01-sft"], "maxright": ["01-sft"], "kto": ONE_PREF,
    "grpo": ONE_PREF, "sequential-grpo": SEQ, "hbat-grpo": ALT, "hbat-grpo-no-ewc": ALT,
    "sequential-restarts": ["01-sft-1", "02-sft-2", "03-pref-1", "04-pref-2"],
}
NOT_LN2 = {"orpo", "simpo", "kto"}  # not at ln 2 (ORPO adds the SFT NLL; SimPO has a margin; KTO starts at 1 - sigmoid(0))
PPO_KEYS = {"kl", "reward_mean", "beta", "value_loss"}
EWC_LIKE = {"ewc", "fisher"}
L2_LAM, L1_LAM, FISHER_SAMPLES = 1.0, 0.01, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def read_rows(run: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def by_stage(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["stage"], []).append(r)
    return out


def recipe_of(run: Path) -> dict:
    return yaml.safe_load((run / "recipe.yaml").read_text())


def weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "stages" / stage / "end.safetensors"))


def stage_start(run: Path, names: list[str], stage: str) -> dict[str, torch.Tensor]:
    i = names.index(stage)
    return load_file(str(run / "stages" / "start.safetensors")) if i == 0 else weights(run, names[i - 1])


def frozen_set(importance: dict, other: str, percent: float) -> list[str]:
    """Top ``percent`` % tensors by ``F^other`` (ties in parameter order), recomputed from an importance.json."""
    f = {n: t[f"f_{other}"] for n, t in importance["tensors"].items()}
    k = int(round(len(f) * percent / 100.0))
    return sorted(f, key=lambda n: -f[n])[:k]


def check_method(method: str, run: Path, summary: dict, steps: int) -> None:
    """Everything the run directory of ``method`` (trained with ``steps`` steps per stage, parts=2) must show."""
    m = METHODS[method]
    names = EXPECTED_STAGES[method]
    assert [s["name"] for s in summary["stages"]] == names
    assert json.loads((run / "summary.json").read_text())["method"] == method
    assert sorted(p.name for p in (run / "stages").iterdir() if p.is_dir()) == names
    assert summary["global_steps"] == steps * len(names)
    rows = read_rows(run)
    per = by_stage(rows)
    assert list(per) == names
    assert all([r["stage_step"] for r in per[n]] == list(range(1, steps + 1)) for n in names)
    for n in names:
        info = json.loads((run / "stages" / n / "stage.json").read_text())
        assert info["name"] == n and info["steps"] == steps
    has_stage_weights = (run / "stages" / "start.safetensors").exists()

    # the regularizer the method carries, and only that one
    assert all(("reg/penalty" in r) == (m.regularizer is not None) for r in rows)
    wants_importance = m.regularizer in ("ewc", "freeze")
    for n in names:
        assert (run / "stages" / n / "importance.json").exists() == wants_importance, n
    if wants_importance:
        for i, n in enumerate(names):  # importance.json of stage k covers the stages 1..k
            rep = json.loads((run / "stages" / n / "importance.json").read_text())
            assert [s["name"] for s in rep["stages"]] == names[: i + 1]
    if m.regularizer in EWC_LIKE:
        assert all(r["reg/penalty"] == 0.0 for r in per[names[0]])  # nothing to be pulled to yet
        for s in summary["stages"][1:]:
            pen = [r["reg/penalty"] for r in per[s["name"]]]
            if s["role"] == "preference" and m.preference_objective == "ppo":
                assert all(p > 0 for p in pen), (s["name"], pen)  # a PPO step is several updates: it has moved
            else:
                assert pen[0] == 0.0, (s["name"], pen)  # the anchor is the previous stage's end = this stage's start
                assert all(p > 0 for p in pen[1:]), (s["name"], pen)
    if m.regularizer in ("l2", "l1") and has_stage_weights:
        _check_anchor(run, summary, per, m.regularizer)
    if m.regularizer == "freeze":
        assert all(r["reg/penalty"] == 0.0 for r in rows)
        if has_stage_weights:
            _check_freeze(run, names)
    if m.regularizer == "fisher":
        _check_fisher_state(run, names)

    # the auxiliary loss of mixed methods is logged in every step of the stages it joins (alternating methods
    # train one objective per step: no auxiliary loss, the row names its role)
    for s in summary["stages"]:
        joins = m.aux_role is not None and not m.alternate and (m.aux_in is None or s["role"] in m.aux_in)
        assert all(("aux/loss" in r) == joins for r in per[s["name"]]), s["name"]
    if m.alternate:
        assert {r["role"] for r in rows} <= {"sft", "preference"}
    ppo = m.preference_objective == "ppo"
    online = m.preference_objective in ("ppo", "grpo")
    if m.aux_role == "preference" and not ppo and not m.alternate:  # sft+dpo: the DPO reference is the stage start
        assert per[names[0]][0]["aux/loss"] == pytest.approx(math.log(2), abs=1e-4)

    # DPO preference stages start at ln 2: the reference is the policy at the stage start
    for s in summary["stages"]:
        if s["role"] == "preference" and not online and method not in NOT_LN2:
            assert per[s["name"]][0]["loss"] == pytest.approx(math.log(2), abs=1e-4), s["name"]
        if s["role"] == "preference" and m.preference_objective == "kto":  # KTO: 1 - sigmoid(0) and no KL at the start
            assert per[s["name"]][0]["loss"] == pytest.approx(0.5, abs=1e-4) and per[s["name"]][0]["kl"] == 0.0

    # PPO stages (and the PPO-driven SFT stage of sft+ppo) log KL and rewards; other stages do not
    for s in summary["stages"]:
        driven_by_ppo = ppo and (s["role"] == "preference" or m.aux_role == "preference")
        for r in per[s["name"]]:
            assert (PPO_KEYS <= set(r)) == driven_by_ppo, (s["name"], sorted(r))
        if s["role"] == "preference" and m.preference_objective == "grpo":  # GRPO stages: rewards, KL 0 at the start
            assert per[s["name"]][0]["kl"] == 0.0 and all(math.isfinite(r["reward"]) for r in per[s["name"]])
        if driven_by_ppo:
            assert per[s["name"]][0]["kl"] == 0.0  # the reference is the policy at the stage start
            assert all(math.isfinite(r["reward_mean"]) for r in per[s["name"]])

    # the final model is the last stage's end (hbat.final defaults to 'last'); reward runs save a scorer
    cfg = json.loads((run / "final" / "config.json").read_text())
    kind = "ForSequenceClassification" if method == "reward" else "ForCausalLM"
    assert cfg["architectures"][0].endswith(kind)
    if has_stage_weights:
        final = load_file(str(run / "final" / "model.safetensors"))
        last = weights(run, names[-1])
        assert all(torch.equal(final[k], last[k]) for k in last)
        first_start = load_file(str(run / "stages" / "start.safetensors"))
        assert any(not torch.equal(first_start[k], last[k]) for k in last)  # training moved the weights


def known_weights(run: Path, summary: dict) -> dict[int, dict[str, torch.Tensor]]:
    """Trainable weights after global step g, for the steps the run directory records: 0 (stages/start),
    every stage end, and every checkpoint kept."""
    out = {0: load_file(str(run / "stages" / "start.safetensors"))}
    g = 0
    for s in summary["stages"]:
        g += s["steps"]
        out[g] = weights(run, s["name"])
    for ck in (run / "checkpoints").iterdir() if (run / "checkpoints").exists() else []:
        out[json.loads((ck / "state.json").read_text())["global_step"]] = load_file(str(ck / "trainable.safetensors"))
    return out


def _check_anchor(run: Path, summary: dict, per: dict[str, list[dict]], norm: str) -> None:
    """The logged penalty of every step whose starting weights are on disk equals the hand formula
    (l2: lam/2 ||theta - theta0||^2, l1: lam ||theta - theta0||_1) with the anchor theta0 the recipe asks for."""
    cfg = recipe_of(run)["hbat"][norm]
    lam, anchor_at, where = cfg["lam"], cfg.get("anchor", "preference_start"), cfg.get("stages", "preference")
    known = known_weights(run, summary)
    names = [s["name"] for s in summary["stages"]]
    first_pref = next(i for i, s in enumerate(summary["stages"]) if s["role"] == "preference")
    for i, s in enumerate(summary["stages"]):
        applies = where == "all" or s["role"] == "preference"
        if anchor_at == "initial":
            anchor = known[0]
        elif i >= first_pref:  # the start of the latest preference stage
            latest = max(j for j in range(i + 1) if summary["stages"][j]["role"] == "preference")
            anchor = known[0] if latest == 0 else weights(run, names[latest - 1])
        else:
            anchor = None
        for r in per[s["name"]]:
            pen = r["reg/penalty"]
            if not applies or anchor is None:
                assert pen == 0.0, (s["name"], r["step"], pen)
                continue
            before = known.get(r["step"] - 1)
            if before is None:
                assert pen > 0, (s["name"], r["step"])
                continue
            diff = [before[k].double() - anchor[k].double() for k in anchor]
            want = (0.5 * lam * sum(float((d * d).sum()) for d in diff) if norm == "l2"
                    else lam * sum(float(d.abs().sum()) for d in diff))
            assert pen == pytest.approx(want, rel=1e-4, abs=1e-12), (s["name"], r["step"])
        if applies and anchor is not None and len(per[s["name"]]) > 1:
            assert per[s["name"]][-1]["reg/penalty"] > 0, s["name"]  # the weights have left the anchor


def _check_freeze(run: Path, names: list[str]) -> None:
    first_start, first_end = load_file(str(run / "stages" / "start.safetensors")), weights(run, names[0])
    assert all(not torch.equal(first_start[k], first_end[k]) for k in first_start)  # the first stage freezes nothing
    for prev, n in zip(names, names[1:]):
        rep = json.loads((run / "stages" / prev / "importance.json").read_text())
        kind = json.loads((run / "stages" / n / "stage.json").read_text())["kind"]
        frozen = frozen_set(rep, "hpa" if kind == "ifa" else "ifa", rep["config"]["percent"])
        before, after = weights(run, prev), weights(run, n)
        assert len(frozen) == round(len(before) * rep["config"]["percent"] / 100) > 0
        for k in before:
            assert torch.equal(before[k], after[k]) == (k in frozen), (n, k, k in frozen)


def _check_fisher_state(run: Path, names: list[str]) -> None:
    last = sorted((run / "checkpoints").iterdir())[-1]
    state = torch.load(last / "regularizer.pt", weights_only=True)
    assert [s["name"] for s in state["stages"]] == names
    samples = recipe_of(run)["hbat"]["fisher"]["samples"]
    assert all(s["examples"] == samples for s in state["stages"])
    ends = {"ifa": names[-2], "hpa": names[-1]}  # anchors: the end of the latest stage of each kind
    for kind, stage in ends.items():
        end = weights(run, stage) if (run / "stages" / stage / "end.safetensors").exists() else None
        for group, fgroup in zip(state["anchors"][kind]["groups"], state["fisher"][kind]["groups"]):
            sizes = [int(torch.Size(s).numel()) for s in group["shapes"]]
            assert all(bool((f >= 0).all()) for f in fgroup["flat"].split(sizes))
            assert float(fgroup["flat"].abs().sum()) > 0
            if end is not None:
                for name, a, shape in zip(group["names"], group["flat"].split(sizes), group["shapes"]):
                    assert torch.equal(a.view(shape), end[name]), (kind, name)


# ------------------------------------------------------------------------------------------ the runs

STEPS = 2
OFFLINE_OVER = {"schedule.parts": 2, "schedule.max_steps_per_stage": STEPS, "checkpoint.every": 1, "checkpoint.keep": 20,
                "checkpoint.stage_weights": True, "logging.tensorboard": False, "data.val_size": 4,
                "hbat.fisher": {"lam": 1.0, "samples": FISHER_SAMPLES}, "hbat.l2": {"lam": L2_LAM},
                "hbat.l1": {"lam": L1_LAM}}


def make_recipe(root: Path, model_dir, files, method: str, **over):
    if METHODS[method].aux_role == "pretrain":  # the SFT file stands in for a pretraining corpus
        over = {"data.pretrain": {"source": str(files["sft"]), "format": "sft"}, **over}
    if METHODS[method].preference_objective == "kto":  # unpaired rows
        over = {"data.preference": {"source": unpaired_copy(files["preference"], root)}, **over}
    if METHODS[method].preference_objective == "grpo":
        return grpo_recipe(root, model_dir, files, method=method, grpo={"max_completion_length": 4, "beta": 0.1},
                           **{"schedule.parts": 2, "schedule.max_steps_per_stage": STEPS, "checkpoint.stage_weights": True,
                              "checkpoint.keep": 2, **over})
    if METHODS[method].preference_objective == "ppo":
        return ppo_recipe(root, model_dir, files, method=method, ppo={"critic_warmup_steps": 0, "max_new_tokens": 4},
                          **{"schedule.parts": 2, "schedule.max_steps_per_stage": STEPS, "checkpoint.stage_weights": True,
                             "checkpoint.keep": 2, **over})
    return with_overrides(base_raw(root, model_dir, files, method), {**OFFLINE_OVER, **over})


@pytest.fixture(scope="module")
def run_of(tmp_path_factory, tiny_model_dir, synthetic_files):
    """``run_of(method, **overrides) -> (run dir, summary)``, trained once per module."""
    cache: dict = {}

    def get(method: str, **over):
        key = (method, json.dumps(over, sort_keys=True))
        if key not in cache:
            root = tmp_path_factory.mktemp(method.replace("+", "_"))
            r = make_recipe(root, tiny_model_dir, synthetic_files, method, **over)
            cache[key] = (Path(r.output_dir), train(r))
        return cache[key]

    return get


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_does_what_it_says(method, run_of):
    run, summary = run_of(method)
    check_method(method, run, summary, STEPS)


@pytest.mark.parametrize("mixed, plain", [("sft+dpo", "sft"), ("dpo+sft", "dpo")])
def test_auxiliary_loss_changes_the_training(mixed, plain, run_of):
    run_mix, _ = run_of(mixed)
    run_zero, _ = run_of(mixed, **{"hbat.mix_gamma": 0.0})
    run_plain, _ = run_of(plain)
    loss = lambda run: [r["loss"] for r in read_rows(run)]  # noqa: E731  the main objective's loss
    aux = [r["aux/loss"] for r in read_rows(run_mix)]
    assert all(a > 0 for a in aux)
    # gamma 0: the auxiliary loss is computed and logged but adds nothing: the run is the plain method
    assert loss(run_zero) == pytest.approx(loss(run_plain), abs=1e-6)
    assert read_rows(run_zero)[0]["aux/loss"] == pytest.approx(aux[0], abs=1e-6)  # same weights at step 1
    # gamma > 0: same first step (same weights), then the auxiliary gradient has moved the model elsewhere
    assert loss(run_mix)[0] == pytest.approx(loss(run_plain)[0], abs=1e-6)
    assert loss(run_mix)[1] != pytest.approx(loss(run_plain)[1], abs=1e-6)
    stage = EXPECTED_STAGES[mixed][0]
    w_mix, w_plain, w_zero = weights(run_mix, stage), weights(run_plain, stage), weights(run_zero, stage)
    assert any(not torch.equal(w_mix[k], w_plain[k]) for k in w_plain)
    assert all(torch.allclose(w_zero[k], w_plain[k], atol=1e-6) for k in w_plain)


def test_regularizers_change_the_training(run_of):
    """The penalty is not just logged: a regularized run ends elsewhere than the same schedule without it."""
    pairs = [("hbat", "hbat-no-ewc"), ("sequential-ewc", "sequential"), ("l2-anchor", "sequential"),
             ("l1-anchor", "sequential"), ("hbat-freeze", "hbat-no-ewc"), ("fisher-ewc", "hbat-no-ewc")]
    for reg, plain in pairs:
        ra, rb = run_of(reg)[0], run_of(plain)[0]
        first = EXPECTED_STAGES[reg][0]
        a, b = weights(ra, first), weights(rb, first)
        assert all(torch.equal(a[k], b[k]) for k in a), reg  # the first stage has nothing to be pulled to
        last = EXPECTED_STAGES[reg][-1]
        a, b = weights(ra, last), weights(rb, last)
        assert any(not torch.equal(a[k], b[k]) for k in a), reg


@pytest.mark.parametrize("norm, anchor, stages", [("l2", "initial", "all"), ("l1", "initial", "preference"),
                                                  ("l2", "preference_start", "preference")])
def test_anchor_options(norm, anchor, stages, run_of):
    """Every anchor setting: the penalty of each step is the formula on the recorded weights and its anchor."""
    lam = L2_LAM if norm == "l2" else L1_LAM
    method = f"{norm}-anchor"
    run, summary = run_of(method, **{f"hbat.{norm}": {"lam": lam, "anchor": anchor, "stages": stages}})
    check_method(method, run, summary, STEPS)
    rows = by_stage(read_rows(run))
    sft, pref = rows["01-sft"], rows["02-pref"]
    assert all(r["reg/penalty"] == 0.0 for r in sft) == (stages == "preference")
    assert (pref[0]["reg/penalty"] == 0.0) == (anchor == "preference_start")  # the preference stage starts at its anchor

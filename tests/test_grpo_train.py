"""GRPO and RLOO through the engine on a tiny Llama: KL 0 at the first step, the logged metrics, a reward function
from TRL's docs unchanged, LoRA, hbat-grpo with the modified EWC, a failing reward function (one line, nothing written
after it), kill -9 and --resume with identical weights (a GRPO stage, an hbat-grpo run), and a learning check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_grpo import grpo_recipe
from safetensors.torch import load_file
from typer.testing import CliRunner

from tandem.config.recipe import dump_recipe
from tandem.pipelines.train import build_objective, train
from tandem.rewards import RewardFunctionError

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rows(run: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def no_rows(run: Path) -> bool:
    return not (run / "metrics.jsonl").exists() or rows(run) == []


def test_kl_is_zero_at_the_first_step_and_metrics_are_logged(tmp_path, tiny_model_dir, synthetic_files):
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, grpo={"beta": 0.1, "steps_per_generation": 2})
    train(r)
    tr = rows(Path(r.output_dir))
    assert len(tr) == 3 and tr[1]["kl"] > 0
    one = grpo_recipe(tmp_path / "one", tiny_model_dir, synthetic_files, grpo={"beta": 0.1},
                      **{"schedule.max_steps_per_stage": 1})
    train(one)
    assert rows(Path(one.output_dir))[0]["kl"] == 0.0  # the reference is the policy at the stage start
    expected = {"reward", "reward_std", "rewards/count_e/mean", "rewards/count_e/std", "frac_reward_zero_std", "kl",
                "loss", "policy_loss", "entropy", "clip_ratio/region", "completion_length", "ended_frac",
                "rollout_tokens_per_s", "train_tokens_per_s", "grad_norm", "lr"}
    assert expected <= set(tr[0]) and tr[0]["optimizer_steps"] == 2  # 2 mini-batches, one optimizer step each
    assert all(x["rollout_tokens_per_s"] > 0 and x["train_tokens_per_s"] > 0 for x in tr)
    summary = json.loads((Path(r.output_dir) / "summary.json").read_text())
    assert summary["budget"] == {"preference": 6}  # 3 steps x batch_size 2 prompts


def test_a_trl_docs_reward_function_runs_unchanged_with_lora(tmp_path, tiny_model_dir, synthetic_files):
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, grpo={"reward_funcs": ["helpers_grpo:reward_len"]},
                    **{"model.lora": LORA, "save_merged": False, "schedule.max_steps_per_stage": 2})
    train(r)
    tr = rows(Path(r.output_dir))
    # TRL's reward_len: -|20 - len(completion)|, completions are the decoded strings of these standard rows
    assert len(tr) == 2 and all(x["rewards/reward_len/mean"] <= 0 for x in tr)
    assert (Path(r.output_dir) / "final" / "adapter_config.json").exists()


def test_rloo_with_kl_in_the_reward(tmp_path, tiny_model_dir, synthetic_files):
    block = {"name": "rloo", "reward_funcs": ["helpers_grpo:count_e"], "num_generations": 3,
             "max_completion_length": 6, "beta": 0.05, "kl_in_reward": True}
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, **{"objectives.preference": block,
                                                                  "schedule.max_steps_per_stage": 2})
    assert type(build_objective(r, "preference", "grpo")).__name__ == "RLOO"
    train(r)
    tr = rows(Path(r.output_dir))
    assert tr[0]["kl"] == 0.0 and "clip_ratio/region" in tr[1]


def test_hbat_grpo_alternates_with_the_modified_ewc(tmp_path, tiny_model_dir, synthetic_files):
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="hbat-grpo",
                    **{"schedule.parts": 2, "schedule.max_steps_per_stage": 2})
    train(r)
    stages = Path(r.output_dir) / "stages"
    assert sorted(p.name for p in stages.glob("0*")) == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    pref2 = [x for x in rows(Path(r.output_dir)) if x["stage"] == "04-pref-2"]
    # the stage starts at its anchor (penalty 0), then the penalty pulls the GRPO steps back towards it
    assert len(pref2) == 2 and pref2[0]["reg/penalty"] == 0.0 < pref2[1]["reg/penalty"]
    assert (stages / "04-pref-2" / "importance.json").exists()


def test_settings_come_from_the_preference_block_or_a_grpo_block(tmp_path, tiny_model_dir, synthetic_files):
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="sequential-grpo",
                    **{"objectives.preference": {"name": "dpo", "beta": 0.1},
                       "objectives.grpo": {"name": "grpo", "reward_funcs": ["helpers_grpo:count_e"], "epsilon": 0.3}})
    obj = build_objective(r, "preference", "grpo")
    assert type(obj).__name__ == "GRPO" and obj.epsilon == 0.3
    bad = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, grpo={"clip_range": 0.2})
    with pytest.raises(ValueError, match="clip_range"):
        build_objective(bad, "preference", "grpo")


def test_a_failing_reward_function_stops_before_anything_is_written(tmp_path, tiny_model_dir, synthetic_files):
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, grpo={"reward_funcs": ["helpers_grpo:raises"]},
                    **{"checkpoint.every": 1})
    with pytest.raises(RewardFunctionError, match="reward function raises raised KeyError"):
        train(r)
    run = Path(r.output_dir)
    assert no_rows(run) and not list(run.glob("checkpoints/stage*")) and not (run / "final").exists()
    from tandem.cli.main import app

    path = tmp_path / "wrong.yaml"
    r2 = grpo_recipe(tmp_path / "cli", tiny_model_dir, synthetic_files, grpo={"reward_funcs": ["helpers_grpo:wrong_length"]})
    path.write_text(dump_recipe(r2))
    res = CliRunner().invoke(app, ["train", str(path)])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2, res.output and len(errors) == 1 and "reward function wrong_length returned 1 rewards" in errors[0]
    assert "Traceback" not in res.output and no_rows(Path(r2.output_dir))


@pytest.mark.slow
def test_grpo_raises_the_reward_of_a_tiny_policy(tmp_path, tiny_model_dir, synthetic_files):
    """Reward = number of letters 'e' in the completion; a random tiny Llama learns to emit them."""
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, grpo={"max_completion_length": 8, "num_generations": 8},
                    **{"batching.batch_size": 4, "optimizer.lr": 3e-3, "schedule.max_steps_per_stage": 25,
                       "schedule.epochs": 100})
    train(r)
    rewards = [x["reward"] for x in rows(Path(r.output_dir))]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.6 and last > 2 * first, rewards


# ---------------------------------------------------------------------------------- kill -9 and --resume

def _same_after_kill(tmp_path, make, kill_after: int, files: list[str]) -> None:
    """The straight and the killed run side by side (one thread each), then the resume: identical ``files`` and
    rewards."""
    from test_reliability_train import _kill_resume_identical

    _kill_resume_identical(tmp_path, make, kill_after, files)
    ra = [x["reward"] for x in rows(tmp_path / "straight" / "run") if "reward" in x]
    assert ra and ra == [x["reward"] for x in rows(tmp_path / "killed" / "run") if "reward" in x]


@pytest.mark.slow
def test_kill_resume_grpo_stage(tmp_path, tiny_model_dir, synthetic_files):
    def make(d):  # beta > 0: the resumed stage reloads its reference; two iterations: old log-probs
        return grpo_recipe(d, tiny_model_dir, synthetic_files, grpo={"beta": 0.1, "num_iterations": 2},
                           **{"schedule.max_steps_per_stage": 4, "checkpoint.every": 2})

    _same_after_kill(tmp_path, make, kill_after=3, files=["final/model.safetensors"])


@pytest.mark.slow
def test_kill_resume_hbat_grpo(tmp_path, tiny_model_dir, synthetic_files):
    def make(d):  # killed in the middle of the second GRPO stage, with the EWC penalty active
        return grpo_recipe(d, tiny_model_dir, synthetic_files, method="hbat-grpo", grpo={"beta": 0.1},
                           **{"schedule.parts": 2, "schedule.max_steps_per_stage": 3, "checkpoint.every": 2})

    _same_after_kill(tmp_path, make, kill_after=11, files=["final/model.safetensors", "stages/02-pref-1/end.safetensors"])


def test_trl_prompt_only_rows_with_columns(tmp_path, tiny_model_dir, synthetic_files):
    """TRL's prompt-only dataset (``prompt`` + other columns): the reward function reads its ``answer`` column."""
    from conftest import write_jsonl

    rows_ = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]
    rows_ += [{"prompt": [{"role": "user", "content": "Say e."}], "answer": None}]  # a chat row, no answer
    data = write_jsonl(tmp_path / "prompts.jsonl", rows_)
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files,
                    grpo={"reward_funcs": ["helpers_grpo:answer_in_completion", "helpers_grpo:count_e"]},
                    **{"data.preference": {"source": str(data)}, "schedule.max_steps_per_stage": 2})
    train(r)
    tr = rows(Path(r.output_dir))
    assert len(tr) == 2 and "rewards/answer_in_completion/mean" in tr[0] and "rewards/count_e/std" in tr[0]
    info = json.loads((Path(r.output_dir) / "data-preference.json").read_text())
    assert info["load"]["format"] == "prompt_only" and info["train"] == 9


def test_ppo_accepts_the_same_reward_functions(tmp_path, tiny_model_dir, synthetic_files):
    from helpers_ppo import ppo_recipe

    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files,
                   ppo={"reward_fn": None, "reward_funcs": ["helpers_grpo:count_e", "helpers_grpo:reward_len"],
                        "reward_weights": [1.0, 0.0]}, **{"schedule.max_steps_per_stage": 2})
    train(r)
    tr = rows(Path(r.output_dir))
    assert len(tr) == 2 and all(x["score_mean"] >= 0 for x in tr)  # count_e >= 0; reward_len weighted 0
    with pytest.raises(ValueError, match="exactly one of reward_model"):
        build_objective(ppo_recipe(tmp_path, tiny_model_dir, synthetic_files,
                                   ppo={"reward_funcs": ["helpers_grpo:count_e"]}), "preference", "ppo")


def test_mask_truncated_completions_leaves_no_loss(tmp_path, tiny_model_dir, synthetic_files):
    r = grpo_recipe(tmp_path, tiny_model_dir, synthetic_files, grpo={"mask_truncated_completions": True,
                                                                     "max_completion_length": 2},
                    **{"schedule.max_steps_per_stage": 1, "checkpoint.stage_weights": True})
    train(r)
    (row,) = rows(Path(r.output_dir))
    assert row["ended_frac"] == 0.0 and row["loss"] == 0.0  # every completion truncated: every token masked
    start = load_file(str(Path(r.output_dir) / "stages" / "start.safetensors"))
    end = load_file(str(Path(r.output_dir) / "stages" / "01-pref" / "end.safetensors"))
    assert all(torch.equal(start[k], end[k]) for k in start)  # a zero gradient: AdamW leaves the weights


def test_val_every_and_a_callback_stop_inside_a_grpo_stage(tmp_path, tiny_model_dir, synthetic_files):
    """hbat-grpo with ``logging.val_every``: the SFT validation also runs inside the GRPO stage (forgetting, step by
    step); a callback's "stop" inside that stage checkpoints there, and ``resume`` ends with the weights of a run that
    was never stopped."""
    import tandem
    from test_api import StopAt

    def make(d):
        return grpo_recipe(d, tiny_model_dir, synthetic_files, method="hbat-grpo",
                           **{"schedule.max_steps_per_stage": 3, "logging.val_every": 1, "data.val_size": 4})

    full = tandem.train(make(tmp_path / "full"))
    val = [(x["stage"], x.get("stage_step")) for x in rows(full.dir, "val")]
    assert val == [("01-sft", 1), ("01-sft", 2), ("01-sft", None), ("02-pref", 1), ("02-pref", 2),
                   ("02-pref", None)]
    assert all("sft/loss" in x for x in rows(full.dir, "val"))
    stopped = tandem.train(make(tmp_path / "stopped"), callbacks=[StopAt(step=5)])  # stage step 2 of 02-pref
    assert stopped.stopped and [p.name for p in (stopped.dir / "checkpoints").iterdir()] == ["stage01-step000005"]
    done = tandem.train(make(tmp_path / "stopped"), resume=True)
    a, b = (load_file(str(r.dir / "final" / "model.safetensors")) for r in (full, done))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

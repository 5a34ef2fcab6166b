"""PPO through the engine on a tiny Llama with programmatic rewards: cold start, the critic carried across HBAT
stages (with modified EWC on the policy), mixed stages, resume, and a real learning check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_ppo import ppo_block, ppo_recipe
from safetensors.torch import load_file

import tandem.engine.ppo_loop as ppo_loop
from tandem.pipelines.train import build_objective, train
from tandem.objectives.ppo.critic import fingerprint


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add synchronisation (10x slower on 2 busy cores)
    yield
    torch.set_num_threads(n)


def rows(run: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cold_start_trains_only_the_critic(tmp_path, tiny_model_dir, synthetic_files):
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, ppo={"critic_warmup_steps": 2},
                   **{"schedule.max_steps_per_stage": 3, "checkpoint.every": 1, "checkpoint.keep": 3})
    train(r)
    run = Path(r.output_dir)
    start = load_file(run / "stages" / "start.safetensors")
    after_warmup = load_file(run / "checkpoints" / "stage00-step000002" / "trainable.safetensors")
    assert same(start, after_warmup)  # two warm-up steps: policy weights identical
    assert not same(start, load_file(run / "stages" / "01-pref" / "end.safetensors"))  # step 3 trains the policy
    info = json.loads((run / "stages" / "01-pref" / "ppo.json").read_text())
    assert info["critic_fresh"] and info["critic_end_sha256"] != info["critic_start_sha256"]
    critic = load_file(run / "stages" / "01-pref" / "critic.safetensors")
    assert critic["head.weight"].abs().sum() > 0  # the zero-initialised value head was trained
    tr = rows(run)
    assert [x["warmup"] for x in tr] == [1, 1, 0]
    assert "policy_loss" not in tr[0] and "policy_loss" in tr[2] and tr[0]["value_loss"] > 0
    assert tr[0]["kl"] == 0.0  # the reference is the policy at the stage start
    expected = {"reward_mean", "reward_std", "kl", "beta", "policy_loss", "value_loss", "clip_frac",
                "explained_variance", "entropy", "response_len", "rollout_tokens_per_s", "train_tokens_per_s"}
    assert expected <= set(tr[2])
    assert not list((run / "stages" / "01-pref").glob("ppo-resume-*"))  # cleaned up at the stage end


def test_critic_is_carried_across_hbat_stages_with_ewc(tmp_path, tiny_model_dir, synthetic_files):
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="hbat-ppo", ppo={"critic_warmup_steps": 1},
                   **{"schedule.parts": 2, "schedule.max_steps_per_stage": 2})
    train(r)
    stages = Path(r.output_dir) / "stages"
    assert sorted(p.name for p in stages.glob("0*")) == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    first = json.loads((stages / "02-pref-1" / "ppo.json").read_text())
    second = json.loads((stages / "04-pref-2" / "ppo.json").read_text())
    saved = load_file(stages / "02-pref-1" / "critic.safetensors")
    assert first["critic_loaded_from"] is None and first["critic_fresh"]
    assert second["critic_loaded_from"] == str(stages / "02-pref-1" / "critic.safetensors")
    assert second["critic_start_sha256"] == fingerprint(saved) == first["critic_end_sha256"]
    assert not second["critic_fresh"] and second["critic_warmup_steps"] == 0
    assert second["critic_end_sha256"] != second["critic_start_sha256"]
    assert second["beta_start"] == first["beta_end"]
    tr = rows(Path(r.output_dir))
    pref2 = [x for x in tr if x["stage"] == "04-pref-2"]
    assert [x["warmup"] for x in pref2] == [0, 0]  # a carried critic is not warmed up again
    # modified EWC pulls the PPO stages' policy tensors towards the SFT anchors
    assert all(x["reg/penalty"] > 0 for x in pref2)
    assert (stages / "04-pref-2" / "importance.json").exists()


def test_forced_ppo_objective_settings(tmp_path, tiny_model_dir, synthetic_files):
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="hbat-ppo",
                   **{"objectives.preference": {"name": "dpo", "beta": 0.1}})
    with pytest.raises(ValueError, match="objectives.ppo"):
        build_objective(r, "preference", "ppo")
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, method="hbat-ppo",
                   **{"objectives.preference": {"name": "dpo", "beta": 0.1}, "objectives.ppo": ppo_block(beta=0.2)})
    obj = build_objective(r, "preference", "ppo")
    assert type(obj).__name__ == "PPO" and obj.beta == 0.2
    assert type(build_objective(r, "preference")).__name__ == "DPO"  # other methods keep the DPO block
    bad = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, ppo={"clip_range": 0.2})
    with pytest.raises(ValueError, match="clip_range"):
        build_objective(bad, "preference", "ppo")


@pytest.mark.parametrize("method", ["ppo+sft", "sft+ppo"])
def test_mixed_ppo_sft_stages_with_lora(tmp_path, tiny_model_dir, synthetic_files, method):
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files, method=method,
                   **{"schedule.max_steps_per_stage": 2, "model.lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                      "save_merged": False})
    train(r)
    tr = rows(Path(r.output_dir))
    assert len(tr) == 2 and all(x["aux/loss"] > 0 for x in tr)
    assert tr[0]["stage"] == ("01-pref" if method == "ppo+sft" else "01-sft")
    assert tr[0]["kl"] == 0.0  # LoRA B = 0 at the start: the policy equals its adapters-disabled reference
    assert tr[1]["kl"] != 0.0
    assert (Path(r.output_dir) / "final" / "adapter_config.json").exists()


def test_resume_mid_stage_matches_uninterrupted_run(tmp_path, tiny_model_dir, synthetic_files, monkeypatch):
    over = {"schedule.max_steps_per_stage": 4, "checkpoint.every": 2, "checkpoint.keep": 1}
    full = ppo_recipe(tmp_path / "a", tiny_model_dir, synthetic_files, ppo={"critic_warmup_steps": 1}, **over)
    train(full)
    part = ppo_recipe(tmp_path / "b", tiny_model_dir, synthetic_files, ppo={"critic_warmup_steps": 1}, **over)

    class Killed(Exception):
        pass

    def kill(step):
        if step == 2:
            raise Killed

    monkeypatch.setattr(ppo_loop, "fault_hook", kill)
    with pytest.raises(Killed):
        train(part)
    assert (Path(part.output_dir) / "stages" / "01-pref" / "ppo-resume-step000002.pt").exists()
    monkeypatch.undo()
    train(part, resume=True)
    a, b = Path(full.output_dir), Path(part.output_dir)
    wa, wb = load_file(a / "stages/01-pref/end.safetensors"), load_file(b / "stages/01-pref/end.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    ca, cb = load_file(a / "stages/01-pref/critic.safetensors"), load_file(b / "stages/01-pref/critic.safetensors")
    assert all(torch.allclose(ca[k], cb[k], atol=1e-6) for k in ca)
    assert [x["reward_mean"] for x in rows(a)] == [x["reward_mean"] for x in rows(b)]


def test_best_policy_guard_restores_the_best_evaluated_weights(tmp_path, tiny_model_dir, synthetic_files):
    # the reward falls with every call, so the evaluation before the first step is the best one
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files,
                   ppo={"reward_fn": "helpers_ppo:decaying", "eval_every": 2, "eval_prompts": 4, "keep_best": True},
                   **{"schedule.max_steps_per_stage": 4, "checkpoint.every": 2, "checkpoint.keep": 2})
    train(r)
    run = Path(r.output_dir)
    val = rows(run, "val")
    assert [x["stage_step"] for x in val] == [0, 2, 4]
    assert val[0]["val_score"] > val[1]["val_score"] > val[2]["val_score"]
    info = json.loads((run / "stages" / "01-pref" / "ppo.json").read_text())
    assert info["best_step"] == 0 and info["restored_best"] and info["best_val_score"] == val[0]["val_score"]
    start = load_file(run / "stages" / "start.safetensors")
    assert not same(start, load_file(run / "checkpoints" / "stage00-step000002" / "trainable.safetensors"))  # it trained
    assert same(start, load_file(run / "stages" / "01-pref" / "end.safetensors"))  # ... and the start was restored
    assert not (run / "stages" / "01-pref" / "best-policy.safetensors").exists()


def test_ppo_raises_the_reward_of_a_tiny_policy(tmp_path, tiny_model_dir, synthetic_files):
    """Reward = number of letters 'e' in the response; a random tiny Llama learns to emit them."""
    r = ppo_recipe(tmp_path, tiny_model_dir, synthetic_files,
                   ppo={"max_new_tokens": 8, "ppo_epochs": 4, "mini_batches": 2, "beta": 0.01, "kl_control": "fixed"},
                   **{"batching.batch_size": 8, "optimizer.lr": 3e-3, "schedule.max_steps_per_stage": 30, "schedule.epochs": 100})
    train(r)
    rewards = [x["reward_mean"] for x in rows(Path(r.output_dir))]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 1.5, rewards


def test_reward_model_and_reward_model_critic_from_a_tandem_reward_run(tmp_path, tiny_model_dir, synthetic_files):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    rm = ppo_recipe(tmp_path / "rm", tiny_model_dir, synthetic_files, method="reward",
                    **{"objectives.reward": {"name": "reward"}, "schedule.max_steps_per_stage": 1, "model.lora": lora,
                       "save_merged": False})
    train(rm)
    final = Path(rm.output_dir) / "final"
    assert (final / "adapter_config.json").exists()  # a LoRA reward model: merged into the critic
    r = ppo_recipe(tmp_path / "ppo", tiny_model_dir, synthetic_files,
                   ppo={"reward_fn": None, "reward_model": str(final), "critic": "reward_model", "critic_warmup_steps": 1},
                   **{"schedule.max_steps_per_stage": 2})
    train(r)
    run = Path(r.output_dir)
    tr = rows(run)
    assert len(tr) == 2 and all(abs(x["score_mean"]) > 0 for x in tr)
    critic = load_file(run / "stages" / "01-pref" / "critic.safetensors")
    assert any(k.startswith("model.score") for k in critic) and not any("lora" in k for k in critic)

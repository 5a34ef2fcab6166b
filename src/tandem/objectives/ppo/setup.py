"""What a PPO stage sets up before its first iteration: the reward scorer, the reference policy and the critic.

Reference: the policy at the stage start (``reference: stage_start``; a resumed stage reloads it from the previous
stage's ``end.safetensors``) or at the run's start (``reference: initial``, ``stages/start.safetensors``), so the KL
term is 0 at a stage's first iteration, with LoRA as without. With LoRA only the adapter tensors are kept and swapped
in for the reference forward (:class:`~tandem.objectives.ppo.rollout.AdapterReference`); without LoRA it is a frozen
copy of the policy on its device (one more set of weights, no gradients or optimizer state).

Critic: a fresh one (first PPO stage of the run) or the one saved by the latest earlier PPO stage
(``critic.safetensors``), whose ``ppo.json`` also carries the adaptive KL coefficient over.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from tandem.io.weights import load_trainable_file
from tandem.models.sampling import eos_ids, pad_token_id
from tandem.objectives.ppo.critic import (
    CRITIC_FILE,
    ValueHeadCritic,
    build_critic,
    critic_state,
    fingerprint,
    load_critic_state,
    previous_critic,
)
from tandem.objectives.ppo.rollout import AdapterReference, FunctionReward, ModelReward, collect

STATE_FILE = "ppo.json"
BEST_FILE = "best-policy.safetensors"


def reward_scorer(ppo, device, batch_fn):
    """The ``reward_funcs`` (TRL's signature, :class:`tandem.rewards.RewardFunctions`), else ``FunctionReward`` for
    ``reward_fn``, else the reward model (same tokenizer: the policy's ``batch_fn``)."""
    if ppo.rewards is not None:
        return ppo.rewards.scores
    if ppo.reward_fn is not None:
        return FunctionReward(ppo.reward_fn)
    from tandem.data import collate
    from tandem.models import load_reward_model

    model, rtok = load_reward_model(ppo.reward_model, device=device)
    same = rtok.get_vocab() == ppo.tokenizer.get_vocab()
    pad = pad_token_id(rtok)
    if not same:
        def batch_fn(feats):
            return {k: v.to(device) for k, v in collate(feats, mode="pack", pad_id=pad).items()}

    return ModelReward(model, rtok, same, batch_fn, ppo.reward_batch_size)


def reference_policy(policy, stages_dir: Path, stage_index: int, mode: str, resumed: bool):
    """The reference of a PPO stage (module docstring): the policy at the stage start (``stage_start``) or at the
    run's start (``initial``). LoRA: an :class:`AdapterReference` of the adapter tensors (no second model); full
    fine-tuning: a frozen copy of the policy."""
    from peft import PeftModel

    source = None
    if mode == "initial":
        source = stages_dir / "start.safetensors"
    elif resumed:
        prev = sorted(stages_dir.glob(f"{stage_index:02d}-*/end.safetensors")) if stage_index else []
        source = prev[0] if prev else stages_dir / "start.safetensors"
    if source is not None and not source.exists():
        raise FileNotFoundError(f"ppo reference: {source} is missing; a PPO stage that is resumed or uses "
                                "hbat.reference 'initial' needs checkpoint.stage_weights: true")
    if isinstance(policy, PeftModel):
        tensors = load_file(str(source)) if source is not None else {
            n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
        return AdapterReference(tensors)
    ref = copy.deepcopy(policy)
    if source is not None:
        load_trainable_file(ref, source)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def stage_critic(ppo, policy, stage_dir: Path, stage_index: int, device):
    """``(critic, info)``: the critic carried over from the latest earlier PPO stage, else a fresh one."""
    critic = build_critic(ppo.critic_kind, policy, ppo.reward_model, device)
    if ppo.critic_kind == "reward_model":
        vocab = critic.model.config.vocab_size
        if vocab < len(ppo.tokenizer):
            raise ValueError(f"ppo critic 'reward_model': its vocabulary ({vocab}) does not cover the policy's "
                             f"tokenizer ({len(ppo.tokenizer)}); the critic must share the policy's tokenizer")
    prev = previous_critic(stage_dir.parent, stage_index)
    info = {"critic_loaded_from": None, "beta_start": ppo.beta}
    if prev is not None:
        from safetensors.torch import load_file

        load_critic_state(critic, load_file(str(prev)))
        info["critic_loaded_from"] = str(prev)
        prev_state = prev.parent / STATE_FILE
        if prev_state.exists():
            info["beta_start"] = json.loads(prev_state.read_text()).get("beta_end", ppo.beta)
    return critic, info


def save_resume_state(stage_dir: Path, step: int, critic, critic_opt, beta: float, fresh: bool, best: dict, info: dict,
                      keep: int) -> None:
    """Critic, its optimizer and the controller state at ``step`` (``ppo-resume-stepXXXXXX.pt``; the latest
    ``keep + 1`` files are kept, one more than the engine keeps checkpoints, so every kept checkpoint has its file)."""
    path = stage_dir / f"ppo-resume-step{step:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"critic": critic_state(critic), "critic_optimizer": critic_opt.state_dict(), "beta": beta,
                "fresh": fresh, "best_step": best["step"], "best_score": best["score"], "info": json.dumps(info)}, tmp)
    os.replace(tmp, path)
    for old in sorted(stage_dir.glob("ppo-resume-step*.pt"))[:-(keep + 1)]:
        old.unlink(missing_ok=True)


def write_stage_files(stage_dir: Path, critic_state_dict: dict, info: dict) -> None:
    """At a PPO stage's end: ``critic.safetensors`` and ``ppo.json``; the best-policy and resume files go."""
    from safetensors.torch import save_file

    tmp = stage_dir / (CRITIC_FILE + ".tmp")
    save_file(critic_state_dict, str(tmp))
    os.replace(tmp, stage_dir / CRITIC_FILE)
    (stage_dir / STATE_FILE).write_text(json.dumps(info, indent=2))
    (stage_dir / BEST_FILE).unlink(missing_ok=True)
    for old in stage_dir.glob("ppo-resume-step*.pt"):
        old.unlink(missing_ok=True)


@torch.no_grad()
def validate_prompts(ppo, policy, prompts: list[dict], batch_fn, seed: int, stages_dir: Path, reduce) -> dict[str, float]:
    """Validation of a PPO stage on held-out prompts (this process's share): the mean reward of one seeded sampled
    reply per prompt and its KL to the run's initial policy (``stages/start.safetensors``; omitted without it).
    ``reduce`` sums a list of floats over processes."""
    tok = ppo.tokenizer
    device = next(policy.parameters()).device
    initial = (stages_dir / "start.safetensors").exists()
    reference = reference_policy(policy, stages_dir, 0, "initial", False) if initial else policy
    pad_id = pad_token_id(tok)
    ro = collect(policy, tok, prompts, batch_fn=batch_fn, critic=ValueHeadCritic(policy.config.hidden_size).to(device),
                 reference=reference, reward=reward_scorer(ppo, device, batch_fn), temperature=ppo.temperature,
                 top_p=ppo.top_p, max_new_tokens=ppo.max_new_tokens, seed=seed * 7_919 + 17, pad_id=pad_id,
                 eos=eos_ids(policy, tok))
    kl = (ro.logp - ro.ref_logp).mul(ro.mask).sum(1)
    s, k, n = reduce([float(ro.score.sum()), float(kl.sum()), float(len(prompts))])
    return {"reward_mean": s / n, **({"kl": k / n} if initial else {})}


def load_resume_state(stage_dir: Path, step: int, critic, critic_opt, kl_ctl, info: dict) -> tuple[bool, dict, dict]:
    """A resumed PPO stage: the critic, its optimizer and the KL coefficient from ``ppo-resume-stepXXXXXX.pt``;
    returns ``(fresh, best, info)``."""
    st = torch.load(stage_dir / f"ppo-resume-step{step:06d}.pt", weights_only=True)
    load_critic_state(critic, st["critic"])
    critic_opt.load_state_dict(st["critic_optimizer"])
    kl_ctl.value = float(st["beta"])
    return bool(st["fresh"]), {"step": st["best_step"], "score": float(st["best_score"])}, {**info, **json.loads(st["info"])}


def finish_stage(acc, policy, stage_dir: Path, ppo, critic, beta: float, best: dict, info: dict, total: int,
                 fresh: bool) -> None:
    """A PPO stage's end: the best evaluated policy restored (``keep_best``), ``critic.safetensors`` and ``ppo.json``
    written (:func:`write_stage_files`), ``ppo.last_stage`` set."""
    best_file = stage_dir / BEST_FILE
    restored = bool(ppo.keep_best and best["step"] is not None and best["step"] != total and best_file.exists())
    if restored:
        load_trainable_file(policy, best_file)
    state = critic_state(critic)
    info = {**info, "critic": ppo.critic_kind, "critic_fresh": fresh,
            "critic_warmup_steps": ppo.critic_warmup_steps if fresh else 0, "critic_end_sha256": fingerprint(state),
            "beta_end": beta, "best_step": best["step"], "best_val_score": best["score"] if best["step"] is not None else None,
            "restored_best": restored, "steps": total}
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_stage_files(stage_dir, state, info)
    acc.wait_for_everyone()
    ppo.last_stage = info

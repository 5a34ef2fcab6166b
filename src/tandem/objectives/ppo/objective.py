"""PPO with a KL-shaped reward (Ziegler et al. 2019; Ouyang et al. 2022): an online objective that drives its stage.

Data: the prompts of the preference role's examples (``encode`` keeps each distinct prompt once; chosen and
rejected responses are not used). A prompt keeps its tail of at most ``data.max_length - max_new_tokens``
tokens (``overlong: drop`` drops longer ones instead).

One optimizer step of the stage (``batching.batch_size`` prompts, split across processes):

1. rollout (``tandem.objectives.ppo.rollout``): sample a response per prompt, score it (``reward_model`` or
   ``reward_fn``; minus ``missing_eos_penalty`` when the response hit ``max_new_tokens`` without EOS), and get the
   policy / reference log-probs and the critic's values of every response token;
2. ``r_t = -beta kl_t + score`` on the last token, GAE advantages and returns, whitened advantages
   (``tandem.objectives.ppo.ppo_math``);
3. ``ppo_epochs`` passes over ``mini_batches`` shuffled mini-batches of the rollout: each computes
   ``w_ppo * (L_pg + vf_coef * L_v) + sum_aux gamma * L_sft`` and takes one policy step (regularizer gradient
   term after ``backward``, clipping to ``optimizer.max_grad_norm``, ``optimizer.step``) and one critic step
   (the critic's own AdamW, ``critic_lr``, same clipping);
4. ``scheduler.step()`` once, the adaptive KL controller's update, one ``metrics.jsonl`` row.

So the LR schedule runs over the stage's PPO iterations (``schedule.max_steps`` / epochs over the prompts), and
the policy takes ``ppo_epochs * mini_batches`` optimizer steps per iteration. PPO stages run the policy without
dropout (eval mode), so on the first mini-batch the new and old log-probs agree (ratio 1).

Cold start: a fresh critic (no earlier PPO stage in the run) is trained alone for the first
``critic_warmup_steps`` iterations (policy weights and the policy optimizer untouched; with ``value_head`` the
head sees detached hidden states). A critic carried over from an earlier stage is not warmed up again.

Reference: with LoRA, the policy with its adapters disabled (peft ``disable_adapter()``), i.e. the model
before any training: no second copy. Without LoRA, a frozen copy of the policy taken at the stage start
(``hbat.reference: stage_start``; a resumed stage reloads it from the previous stage's ``end.safetensors``) or
loaded from ``stages/start.safetensors`` (``hbat.reference: initial``), on the policy's device: one more set of
weights in memory, no gradients or optimizer state.

Over-optimisation guard (``eval_every > 0``): ``eval_prompts`` prompts are held out of the stage's prompts
(seeded); before the first step, every ``eval_every`` steps and at the stage end the mean score of one seeded
sampled response per held-out prompt is measured (``val_score`` in ``metrics.jsonl`` with ``split: val``). The
best policy so far is kept in ``stages/NN/best-policy.safetensors``; with ``keep_best`` it is restored at the
stage end (``ppo.json`` records the best step; the file is removed once the stage is done).

Mixed stages: in ``ppo+sft`` PPO is the stage objective and the SFT loss on a seeded random SFT batch (as many
examples as the mini-batch has prompts) is added with weight ``hbat.mix_gamma`` to every mini-batch loss; in
``sft+ppo`` the SFT loss has weight 1 and PPO ``mix_gamma``, and the stage length comes from the SFT data.
During the critic warm-up no policy loss at all is applied.

Files per PPO stage (``stages/NN-name/``): ``critic.safetensors`` (loaded by the next PPO stage),
``ppo.json`` (critic source and sha256 fingerprints at start and end, beta at start and end, best step), and
while the stage runs ``ppo-resume-stepXXXXXX.pt`` (critic, critic optimizer, beta, best-so-far), written just
before each engine checkpoint so ``--resume`` continues the stage with the same critic.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from pathlib import Path

import torch

from tandem.data.encode import prompt_ids as render_prompt_ids
from tandem.objectives.ppo import ppo_math as pm
from tandem.objectives.ppo.critic import (
    CRITIC_FILE,
    CRITICS,
    build_critic,
    critic_state,
    fingerprint,
    load_critic_state,
    previous_critic,
)
from tandem.objectives.ppo.rollout import (
    FunctionReward,
    ModelReward,
    collect,
    eos_ids,
    gather_hidden,
    resolve_function,
    token_index,
    token_stats,
)

BEST_FILE = "best-policy.safetensors"
STATE_FILE = "ppo.json"


class PPO:
    """Online PPO objective: ``run_stage`` replaces the engine's loop for its stages (module docstring)."""

    data_kind = "preference"  # consumes the preference role's data (its prompts)
    unit = "examples"

    def __init__(
        self,
        reward_model: str | None = None,
        reward_fn: str | None = None,
        critic: str = "value_head",
        beta: float = 0.05,
        kl_control: str = "adaptive",
        kl_target: float = 6.0,
        kl_horizon: int = 10000,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip: float = 0.2,
        vf_clip: float = 0.2,
        vf_coef: float = 0.1,
        ppo_epochs: int = 4,
        mini_batches: int = 1,
        whiten_advantages: bool = True,
        critic_lr: float | None = None,
        critic_warmup_steps: int = 50,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        missing_eos_penalty: float | None = None,
        eval_every: int = 0,
        eval_prompts: int = 16,
        keep_best: bool = True,
        reward_batch_size: int = 16,
    ):
        if (reward_model is None) == (reward_fn is None):
            raise ValueError("ppo: give exactly one of reward_model (a trained reward model) or reward_fn ('module:function')")
        if critic not in CRITICS:
            raise ValueError(f"ppo critic {critic!r}: choose one of {CRITICS}")
        if critic == "reward_model" and reward_model is None:
            raise ValueError("ppo critic 'reward_model' is initialised from reward_model, which is not set; use critic: value_head")
        if kl_control not in ("adaptive", "fixed"):
            raise ValueError(f"ppo kl_control {kl_control!r}: choose 'adaptive' or 'fixed'")
        values = dict(beta=beta, kl_target=kl_target, kl_horizon=kl_horizon, gamma=gamma, lam=lam, clip=clip,
                      vf_clip=vf_clip, vf_coef=vf_coef, ppo_epochs=ppo_epochs, mini_batches=mini_batches,
                      critic_warmup_steps=critic_warmup_steps, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, eval_every=eval_every, eval_prompts=eval_prompts, reward_batch_size=reward_batch_size)
        rules = {
            "beta": beta >= 0, "kl_target": kl_target > 0, "kl_horizon": kl_horizon > 0, "gamma": 0 <= gamma <= 1,
            "lam": 0 <= lam <= 1, "clip": clip > 0, "vf_clip": vf_clip > 0, "vf_coef": vf_coef >= 0,
            "ppo_epochs": ppo_epochs >= 1, "mini_batches": mini_batches >= 1, "critic_warmup_steps": critic_warmup_steps >= 0,
            "max_new_tokens": max_new_tokens >= 1, "temperature": temperature > 0, "top_p": 0 < top_p <= 1,
            "eval_every": eval_every >= 0, "eval_prompts": eval_prompts >= 1, "reward_batch_size": reward_batch_size >= 1,
        }
        bad = [k for k, ok in rules.items() if not ok]
        if bad:
            raise ValueError("ppo: invalid " + ", ".join(f"{k}={values[k]!r}" for k in bad)
                             + " (beta, vf_coef, critic_warmup_steps, eval_every >= 0; gamma, lam in [0, 1]; top_p in (0, 1]; "
                             "kl_target, kl_horizon, clip, vf_clip, temperature > 0; ppo_epochs, mini_batches, max_new_tokens, "
                             "eval_prompts, reward_batch_size >= 1)")
        if critic_lr is not None and not critic_lr > 0:
            raise ValueError(f"ppo critic_lr must be > 0, got {critic_lr}")
        if reward_fn is not None:
            resolve_function(reward_fn)  # fail at build time on a typo
        self.reward_model, self.reward_fn, self.critic_kind = reward_model, reward_fn, critic
        self.beta, self.kl_control, self.kl_target, self.kl_horizon = beta, kl_control, kl_target, kl_horizon
        self.gamma, self.lam, self.clip, self.vf_clip, self.vf_coef = gamma, lam, clip, vf_clip, vf_coef
        self.ppo_epochs, self.mini_batches, self.whiten_advantages = ppo_epochs, mini_batches, whiten_advantages
        self.critic_lr, self.critic_warmup_steps = critic_lr, critic_warmup_steps
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.missing_eos_penalty = missing_eos_penalty
        self.eval_every, self.eval_prompts, self.keep_best = eval_every, eval_prompts, keep_best
        self.reward_batch_size = reward_batch_size
        self.tokenizer = None
        self._reward = None
        self.last_stage: dict = {}  # what the latest run_stage did (tests, summaries)

    # ------------------------------------------------------------------------------------------ data

    def encode(self, tokenizer, examples, max_length: int, overlong: str = "truncate"):
        """``({"prompt_ids", "prompt"} per distinct prompt, stats)``; remembers ``tokenizer`` for the rollouts."""
        self.tokenizer = tokenizer
        room = max_length - self.max_new_tokens
        if room < 1:
            raise ValueError(f"ppo: data.max_length ({max_length}) must exceed max_new_tokens ({self.max_new_tokens}) "
                             "to leave room for the prompt")
        seen, feats = set(), []
        stats = {"total": 0, "kept": 0, "truncated": 0, "dropped": 0, "duplicates": 0}
        for ex in examples:
            stats["total"] += 1
            ids = render_prompt_ids(tokenizer, ex.prompt)
            key = tuple(ids)
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            if len(ids) > room:
                if overlong == "drop":
                    stats["dropped"] += 1
                    continue
                ids = ids[-room:]
                stats["truncated"] += 1
            feats.append({"prompt_ids": list(ids), "prompt": ex.prompt})
        stats["kept"] = len(feats)
        return feats, stats

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        raise TypeError("ppo is an online objective: the engine calls PPO.run_stage for its stages, not a per-batch loss")

    # --------------------------------------------------------------------------------------- stage set-up

    def _stage_terms(self, ctx):
        """(prompt features, PPO loss weight, [(objective, features, weight)] of the SFT terms)."""
        if ctx.objective is self:
            return ctx.features, 1.0, list(ctx.aux)
        mine = [(f, w) for o, f, w in ctx.aux if o is self]
        if not mine:
            raise RuntimeError("PPO.run_stage called for a stage where ppo is neither the objective nor an auxiliary one")
        others = [(o, f, w) for o, f, w in ctx.aux if o is not self]
        return mine[0][0], float(mine[0][1]), [(ctx.objective, ctx.features, 1.0), *others]

    def _reward_scorer(self, ctx):
        if self._reward is not None:
            return self._reward
        if self.reward_fn is not None:
            self._reward = FunctionReward(self.reward_fn)
            return self._reward
        from tandem.models import load_saved

        model, rtok = load_saved(self.reward_model)
        model.to(ctx.accelerator.device)
        same = rtok.get_vocab() == self.tokenizer.get_vocab()
        pad = rtok.pad_token_id if rtok.pad_token_id is not None else rtok.eos_token_id
        if same:
            batch_fn = ctx.batch_fn
        else:
            from tandem.data import collate

            dev = ctx.accelerator.device

            def batch_fn(feats):
                return {k: v.to(dev) for k, v in collate(feats, mode="pack", pad_id=pad).items()}

        self._reward = ModelReward(model, rtok, same, batch_fn, self.reward_batch_size)
        return self._reward

    def _reference(self, ctx, resumed: bool):
        """None (LoRA: adapters disabled) or a frozen copy of the policy (module docstring). A resumed stage reloads
        the stage-start weights from the previous stage's ``end.safetensors`` (``stages/start.safetensors``)."""
        from peft import PeftModel

        policy = ctx.model
        if isinstance(policy, PeftModel):
            return None
        ref = copy.deepcopy(policy)
        stages = Path(ctx.recipe.output_dir) / "stages"
        source = None
        if getattr(ctx.recipe.hbat, "reference", "stage_start") == "initial":
            source = stages / "start.safetensors"
        elif resumed:
            prev = sorted(stages.glob(f"{ctx.stage.index:02d}-*/end.safetensors")) if ctx.stage.index else []
            source = prev[0] if prev else stages / "start.safetensors"
        if source is not None:
            from tandem.engine.checkpoint import load_trainable_file

            if not source.exists():
                raise FileNotFoundError(f"ppo reference: {source} is missing; a PPO stage without LoRA that is resumed "
                                        "or uses hbat.reference 'initial' needs checkpoint.stage_weights: true")
            load_trainable_file(ref, source)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _critic(self, ctx, stage_dir: Path):
        critic = build_critic(self.critic_kind, ctx.model, self.reward_model, ctx.accelerator.device)
        if self.critic_kind == "reward_model":
            vocab = getattr(critic.model.config, "vocab_size", None)
            if vocab is not None and vocab < len(self.tokenizer):
                raise ValueError(f"ppo critic 'reward_model': its vocabulary ({vocab}) does not cover the policy's "
                                 f"tokenizer ({len(self.tokenizer)}); the critic must share the policy's tokenizer")
        prev = previous_critic(stage_dir.parent, ctx.stage.index)
        info = {"critic_loaded_from": None, "beta_start": self.beta}
        if prev is not None:
            from safetensors.torch import load_file

            load_critic_state(critic, load_file(str(prev)))
            info["critic_loaded_from"] = str(prev)
            prev_state = prev.parent / STATE_FILE
            if prev_state.exists():
                info["beta_start"] = json.loads(prev_state.read_text()).get("beta_end", self.beta)
        return critic, info

    def _kl_controller(self, beta: float):
        if self.kl_control == "fixed":
            return pm.FixedKLController(beta)
        return pm.AdaptiveKLController(beta, self.kl_target, self.kl_horizon)

    # -------------------------------------------------------------------------------------------- stage

    def run_stage(self, ctx, optimizer, scheduler, first: int, total: int) -> int:
        """Train ``total - first`` PPO iterations of ``ctx.stage``; returns the new global step."""
        from tandem.engine.stage import _fault_injection, _reduce_sum

        if self.tokenizer is None:
            raise RuntimeError("ppo: encode() has not run, so the prompts and tokenizer are unknown")
        acc, recipe, stage, policy = ctx.accelerator, ctx.recipe, ctx.stage, ctx.model
        P, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
        stage_dir = Path(recipe.output_dir) / "stages" / stage.name
        prompts, ppo_weight, sft_terms = self._stage_terms(ctx)
        eval_feats, train_feats = self._eval_split(prompts, recipe.seed, stage.index)
        B = recipe.batching.batch_size
        if len(train_feats) < B:
            raise ValueError(f"ppo stage {stage.name}: {len(train_feats)} training prompts for batching.batch_size {B}")
        if B < P:
            raise ValueError(f"ppo: batching.batch_size ({B}) must be at least the number of processes ({P})")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = eos_ids(policy, self.tokenizer)
        reward = self._reward_scorer(ctx)
        reference = self._reference(ctx, resumed=first > 0)
        critic, info = self._critic(ctx, stage_dir)
        fresh = info["critic_loaded_from"] is None
        oc = recipe.optimizer
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=self.critic_lr or oc.lr, betas=tuple(oc.betas), eps=oc.eps,
                                       weight_decay=0.0)
        kl_ctl = self._kl_controller(info["beta_start"])
        best = {"step": None, "score": -math.inf}
        if first > 0:
            st = torch.load(stage_dir / f"ppo-resume-step{first:06d}.pt", weights_only=True)
            load_critic_state(critic, st["critic"])
            critic_opt.load_state_dict(st["critic_optimizer"])
            kl_ctl.value, fresh, best = float(st["beta"]), bool(st["fresh"]), {"step": st["best_step"], "score": float(st["best_score"])}
            info = {**info, **json.loads(st["info"])}
        info["critic_start_sha256"] = fingerprint(critic_state(critic))
        ctx_common = dict(batch_fn=ctx.batch_fn, critic=critic, reference=reference, reward=reward,
                          temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                          pad_id=pad_id, eos=eos)

        def evaluate(step: int) -> None:
            if not (self.eval_every and eval_feats):
                return
            mine = eval_feats[rank::P]
            ro = collect(policy, self.tokenizer, mine, seed=recipe.seed * 7_919 + stage.index, **ctx_common)
            kl = (ro.logp - ro.ref_logp).mul(ro.mask).sum(1)
            s, k, n = _reduce_sum(acc, [float(ro.score.sum()), float(kl.sum()), float(len(mine))])
            score = s / n
            if main:
                ctx.log.write({"split": "val", "stage": stage.name, "stage_index": stage.index, "step": ctx.global_step,
                               "stage_step": step, "val_score": score, "val_kl": k / n})
            if score > best["score"]:
                best.update(step=step, score=score)
                if main:
                    _save_trainable(policy, stage_dir / BEST_FILE)
                acc.wait_for_everyone()

        task = ctx.progress.add_task(stage.name, total=total, completed=first, loss="-", tps="-")
        every = recipe.checkpoint.every
        if first == 0:
            evaluate(0)
        order: dict[int, list[int]] = {}
        spe = max(1, len(train_feats) // B)
        for step in range(first, total):
            epoch, pos = divmod(step, spe)
            if epoch not in order:
                perm = list(range(len(train_feats)))
                random.Random(recipe.seed * 1_000_003 + stage.index * 1009 + epoch).shuffle(perm)
                order = {epoch: perm}
            idx = order[epoch][pos * B:(pos + 1) * B]
            mine = [train_feats[i] for i in idx[rank::P]]
            seed = recipe.seed * 1_000_003 + stage.index * 10_007 + step * 101 + rank
            warm = fresh and step < self.critic_warmup_steps
            t0 = time.perf_counter()
            ro = collect(policy, self.tokenizer, mine, seed=seed, **ctx_common)
            beta = kl_ctl.value
            score = ro.score
            if self.missing_eos_penalty:
                score = score - self.missing_eos_penalty * (~ro.ended).float()
            rewards, kl_tok = pm.shaped_rewards(ro.logp, ro.ref_logp, score, ro.mask, beta)
            adv, ret = pm.gae(rewards, ro.values, ro.mask, self.gamma, self.lam)
            if self.whiten_advantages:
                adv = pm.whiten(adv, ro.mask)
            t1 = time.perf_counter()
            train = self._update(ctx, optimizer, critic, critic_opt, ro, adv, ret, warm, ppo_weight, sft_terms, seed)
            t2 = time.perf_counter()
            seq_kl = kl_tok.sum(1)
            resp_len = ro.mask.sum(1)
            ev = pm.explained_variance(ro.values, ret, ro.mask)
            local = [float(score.sum()), float((score**2).sum()), float(ro.score.sum()), float(seq_kl.sum()),
                     float(resp_len.sum()), float(ro.ended.float().sum()), float(len(mine)),
                     float(ro.gen_tokens), ro.gen_seconds, float(train.pop("_tokens")), t2 - t1]
            keys = sorted(train)
            red = _reduce_sum(acc, local + [train[k] for k in keys] + [0.0 if math.isfinite(ev) else 1.0, ev if math.isfinite(ev) else 0.0])
            s_sum, s2_sum, raw_sum, kl_sum, len_sum, ended_sum, n, gen_tok, gen_s, tr_tok, tr_s = red[:11]
            stats = {k: v / P for k, v in zip(keys, red[11:11 + len(keys)])}
            if not all(math.isfinite(v) for v in stats.values()):
                from tandem.engine.stage import TrainingDiverged

                raise TrainingDiverged(f"non-finite PPO loss in stage {stage.name} at stage step {step + 1}; lower the "
                                       "learning rate or check the reward, then continue with --resume.")
            n_bad_ev, ev_sum = red[-2], red[-1]
            mean = s_sum / n
            kl_mean = kl_sum / n
            kl_ctl.update(kl_mean, int(n))
            with warnings.catch_warnings():  # warm-up steps leave the policy optimizer untouched: torch warns
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                scheduler.step()
            ctx.global_step += 1
            dt = time.perf_counter() - t0
            row = {
                "split": "train", "stage": stage.name, "stage_index": stage.index, "step": ctx.global_step,
                "stage_step": step + 1, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "warmup": int(warm),
                "reward_mean": mean, "reward_std": math.sqrt(max(s2_sum / n - mean**2, 0.0)), "score_mean": raw_sum / n,
                "kl": kl_mean, "beta": beta, "beta_next": kl_ctl.value, "response_len": len_sum / n,
                "ended_frac": ended_sum / n,
                "explained_variance": ev_sum / (P - n_bad_ev) if P > n_bad_ev else math.nan,
                "rollout_tokens_per_s": gen_tok / (gen_s / P) if gen_s > 0 else 0.0,
                "train_tokens_per_s": tr_tok / (tr_s / P) if tr_s > 0 else 0.0,
                "tokens": tr_tok, "tokens_per_s": tr_tok / dt if dt > 0 else 0.0, "seconds": dt,
                **stats,
            }
            if main and ((step + 1) % recipe.logging.every == 0 or step + 1 == total):
                ctx.log.write(row)
            ctx.progress.update(task, advance=1, loss=f"r={mean:.3f}", tps=f"{row['tokens_per_s']:,.0f}")
            done = step + 1 == total
            if self.eval_every and ((step + 1) % self.eval_every == 0 or done):
                evaluate(step + 1)
            if every and (step + 1) % every == 0 and not done:
                if main:
                    self._save_resume(stage_dir, step + 1, critic, critic_opt, kl_ctl.value, fresh, best, info,
                                      keep=recipe.checkpoint.keep)
                ctx.on_checkpoint(step + 1, optimizer, scheduler)
            _fault_injection(ctx.global_step)
        ctx.progress.remove_task(task)
        self._finish_stage(ctx, stage_dir, critic, kl_ctl.value, best, info, total, fresh)
        return ctx.global_step

    def _eval_split(self, prompts: list[dict], seed: int, stage_index: int) -> tuple[list[dict], list[dict]]:
        """(held-out evaluation prompts, training prompts); no hold-out when ``eval_every == 0``."""
        if not self.eval_every:
            return [], list(prompts)
        n = min(self.eval_prompts, len(prompts) - 1)
        if n < 1:
            return [], list(prompts)
        idx = list(range(len(prompts)))
        random.Random(seed * 31 + stage_index).shuffle(idx)
        held = set(idx[:n])
        return [prompts[i] for i in sorted(held)], [p for i, p in enumerate(prompts) if i not in held]

    # ------------------------------------------------------------------------------------------ update

    def _update(self, ctx, optimizer, critic, critic_opt, ro, adv, ret, warm, ppo_weight, sft_terms, seed) -> dict:
        """``ppo_epochs`` passes over the rollout's mini-batches; mean metrics (and ``_tokens`` seen)."""
        acc, recipe, policy = ctx.accelerator, ctx.recipe, ctx.model
        max_norm = recipe.optimizer.max_grad_norm
        B = len(ro.features)
        n_mb = min(self.mini_batches, B)
        gen = torch.Generator().manual_seed(seed)
        policy_params = [p for p in policy.parameters() if p.requires_grad]
        critic_params = list(critic.parameters())
        sums: dict[str, float] = {}
        count, tokens = 0, 0
        was = policy.training
        policy.eval()  # no dropout in PPO stages (ratio 1 on the first mini-batch)
        try:
            for _ in range(self.ppo_epochs):
                perm = torch.randperm(B, generator=gen)
                for chunk in torch.tensor_split(perm, n_mb):
                    sel = chunk.tolist()
                    batch = ctx.batch_fn([ro.features[i] for i in sel])
                    tokens += int((batch["seq_ids"] >= 0).sum())
                    idx = token_index(batch, ro.prompt_lens[sel], L=ro.mask.shape[1])
                    mask, old_v, ret_mb = ro.mask[sel], ro.values[sel], ret[sel]
                    m: dict[str, float] = {}
                    if warm:
                        h = None
                        if critic.uses_policy_hidden:
                            from tandem.objectives.logprobs import _forward_hidden

                            with torch.no_grad():
                                h = gather_hidden(_forward_hidden(policy, batch), idx)
                        v = idx.pad(critic.values(batch, idx, h))
                        vf, vst = pm.value_loss(v, old_v, ret_mb, mask, self.vf_clip)
                        loss = self.vf_coef * vf
                    else:
                        def fn(model, b, _idx=idx):
                            return token_stats(model, b, _idx, self.temperature, entropy=True)

                        logp, ent, h = ctx.runner(fn, batch)
                        v = idx.pad(critic.values(batch, idx, h))
                        pg, pst = pm.policy_loss(idx.pad(logp), ro.logp[sel], adv[sel], mask, self.clip)
                        vf, vst = pm.value_loss(v, old_v, ret_mb, mask, self.vf_clip)
                        loss = ppo_weight * (pg + self.vf_coef * vf)
                        m.update(policy_loss=float(pg.detach()), entropy=float(ent.mean()),
                                 **{k: float(x) for k, x in pst.items()})
                        for j, (obj, feats, w) in enumerate(sft_terms):
                            g = torch.Generator().manual_seed(seed * 13 + count * 7 + j)
                            aux_idx = torch.randint(0, len(feats), (len(sel),), generator=g).tolist()
                            aux_loss, _ = ctx.runner(obj, ctx.batch_fn([feats[i] for i in aux_idx]))
                            loss = loss + w * aux_loss
                            m[f"aux/{j}/loss" if j else "aux/loss"] = float(aux_loss.detach())
                    m.update(value_loss=float(vf.detach()), loss=float(loss.detach()),
                             **{k: float(x) for k, x in vst.items()})
                    acc.backward(loss)
                    if not warm:
                        if ctx.regularizer is not None:
                            ctx.regularizer.grad_term(policy)
                            m["reg/penalty"] = float(getattr(ctx.regularizer, "last_penalty", 0.0) or 0.0)
                        if max_norm:
                            m["grad_norm"] = float(acc.clip_grad_norm_(policy_params, max_norm))
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if acc.num_processes > 1:
                        for p in critic_params:
                            if p.grad is not None:
                                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
                    if max_norm:
                        m["critic_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(critic_params, max_norm))
                    critic_opt.step()
                    critic_opt.zero_grad(set_to_none=True)
                    for k, x in m.items():
                        sums[k] = sums.get(k, 0.0) + x
                    count += 1
        finally:
            policy.train(was)
        out = {k: x / count for k, x in sums.items()}
        out["_tokens"] = tokens
        return out

    # --------------------------------------------------------------------------------------- persistence

    def _save_resume(self, stage_dir, step, critic, critic_opt, beta, fresh, best, info, keep: int = 1) -> None:
        """Critic, its optimizer and the controller state at ``step`` (the latest ``keep + 1`` files are kept, one
        more than the engine keeps checkpoints, so every kept checkpoint has its file)."""
        path = stage_dir / f"ppo-resume-step{step:06d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"critic": critic_state(critic), "critic_optimizer": critic_opt.state_dict(), "beta": beta,
                    "fresh": fresh, "best_step": best["step"], "best_score": best["score"], "info": json.dumps(info)}, tmp)
        os.replace(tmp, path)
        for old in sorted(stage_dir.glob("ppo-resume-step*.pt"))[:-(keep + 1)]:
            old.unlink(missing_ok=True)

    def _finish_stage(self, ctx, stage_dir, critic, beta, best, info, total, fresh) -> None:
        acc = ctx.accelerator
        restored = False
        best_file = stage_dir / BEST_FILE
        if self.keep_best and best["step"] is not None and best["step"] != total and best_file.exists():
            from tandem.engine.checkpoint import load_trainable_file

            load_trainable_file(ctx.model, best_file)
            restored = True
        state = critic_state(critic)
        info = {**info, "critic": self.critic_kind, "critic_fresh": fresh,
                "critic_warmup_steps": self.critic_warmup_steps if fresh else 0,
                "critic_end_sha256": fingerprint(state), "beta_end": beta,
                "best_step": best["step"], "best_val_score": best["score"] if best["step"] is not None else None,
                "restored_best": restored, "steps": total}
        acc.wait_for_everyone()
        if acc.is_main_process:
            from safetensors.torch import save_file

            tmp = stage_dir / (CRITIC_FILE + ".tmp")
            save_file(state, str(tmp))
            os.replace(tmp, stage_dir / CRITIC_FILE)
            (stage_dir / STATE_FILE).write_text(json.dumps(info, indent=2))
            best_file.unlink(missing_ok=True)
            for old in stage_dir.glob("ppo-resume-step*.pt"):
                old.unlink(missing_ok=True)
        acc.wait_for_everyone()
        self.last_stage = info


def _save_trainable(model, path: Path) -> None:
    from safetensors.torch import save_file

    from tandem.engine.checkpoint import trainable_state

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(model), str(tmp))
    os.replace(tmp, path)

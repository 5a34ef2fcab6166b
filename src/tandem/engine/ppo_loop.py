"""The PPO stage loop (online): per iteration, a rollout of ``batch_size`` prompts (sample, score, log-probs, values),
KL-shaped rewards and GAE, then ``ppo_epochs`` x ``mini_batches`` policy steps (``apply_step``) and critic steps, one
scheduler step, the KL controller's update and one metrics row. The policy runs without dropout. A fresh critic is
trained alone for ``critic_warmup_steps`` iterations. With ``eval_every`` the mean score on held-out prompts is
logged (``val_score``) and the best policy is restored at the stage end (``keep_best``). In ``ppo+sft`` the SFT loss
is added to every mini-batch with ``mix_gamma``; in ``sft+ppo`` PPO is the added term. docs/methods.md (PPO) has
the formulas; ``tandem.objectives.ppo`` the maths, rollouts, critics and the per-stage files.
"""

from __future__ import annotations

import math
import random
import time
import warnings

import torch

from tandem.engine.context import AuxTerm, StageContext
from tandem.engine.loop import apply_step, diverged, fault_hook, reduce_sum, train_row
from tandem.io.weights import save_trainable
from tandem.objectives.logprobs import _forward_hidden
from tandem.objectives.ppo import ppo_math as pm
from tandem.objectives.ppo.critic import critic_state, fingerprint
from tandem.objectives.ppo.objective import PPO
from tandem.models.sampling import eos_ids, pad_token_id
from tandem.objectives.ppo.rollout import collect, gather_hidden, token_index, token_stats
from tandem.objectives.ppo.setup import (BEST_FILE, finish_stage, load_resume_state, reference_policy, reward_scorer,
                                        save_resume_state, stage_critic)

def ppo_terms(ctx: StageContext, ppo: PPO) -> tuple[AuxTerm, list[AuxTerm]]:
    """(the PPO term: prompts and weight, the offline terms added to every mini-batch): PPO as the stage objective
    (``ppo``, ``ppo+sft``, ``ppo+pt``) or as its auxiliary term (``sft+ppo``)."""
    if ctx.objective is ppo:
        return AuxTerm(ppo, ctx.features, 1.0, ctx.stage.role), list(ctx.aux)
    mine = next(t for t in ctx.aux if t.objective is ppo)
    others = [t for t in ctx.aux if t.objective is not ppo]
    return mine, [AuxTerm(ctx.objective, ctx.features, 1.0, ctx.stage.role), *others]


def run_ppo_stage(ctx: StageContext, ppo: PPO, optimizer, scheduler, first: int, total: int) -> int:
    """Train ``total - first`` PPO iterations of ``ctx.stage``; returns the new global step."""
    if ppo.tokenizer is None:
        raise RuntimeError("ppo: its prompts were not encoded (PPO.encode), so the tokenizer is unknown")
    acc, cfg, stage, policy = ctx.accelerator, ctx.config, ctx.stage, ctx.model
    P, rank, main, B = acc.num_processes, acc.process_index, acc.is_main_process, cfg.batch_size
    stage_dir = ctx.config.output_dir / "stages" / stage.name
    term, offline = ppo_terms(ctx, ppo)
    eval_feats, train_feats = ppo.eval_split(term.features, cfg.seed, stage.index)
    if len(train_feats) < B or B < P:
        raise ValueError(f"ppo stage {stage.name}: batching.batch_size {B} prompts per iteration needs at least {B} "
                         f"training prompts ({len(train_feats)} here) and at least one per process ({P})")
    tok = ppo.tokenizer
    critic, info = stage_critic(ppo, policy, stage_dir, stage.index, acc.device)
    fresh = info["critic_loaded_from"] is None
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=ppo.critic_lr or cfg.lr, betas=tuple(cfg.betas),
                                   eps=cfg.eps, weight_decay=0.0)
    kl_ctl, best = ppo.kl_controller(info["beta_start"]), {"step": None, "score": -math.inf}
    if first > 0:
        fresh, best, info = load_resume_state(stage_dir, first, critic, critic_opt, kl_ctl, info)
    info["critic_start_sha256"] = fingerprint(critic_state(critic))
    reference = reference_policy(policy, stage_dir.parent, stage.index, cfg.reference, resumed=first > 0)
    common = dict(batch_fn=ctx.batch_fn, critic=critic, reference=reference,
                  reward=reward_scorer(ppo, acc.device, ctx.batch_fn), temperature=ppo.temperature, top_p=ppo.top_p,
                  max_new_tokens=ppo.max_new_tokens, pad_id=pad_token_id(tok), eos=eos_ids(policy, tok))

    def evaluate(step: int) -> None:
        if not (ppo.eval_every and eval_feats):
            return
        mine = eval_feats[rank::P]
        ro = collect(policy, tok, mine, seed=cfg.seed * 7_919 + stage.index, **common)
        kl = (ro.logp - ro.ref_logp).mul(ro.mask).sum(1)
        s, k, n = reduce_sum(acc, [float(ro.score.sum()), float(kl.sum()), float(len(mine))])
        if main:
            ctx.log.write({"split": "val", "stage": stage.name, "stage_index": stage.index, "step": ctx.global_step,
                           "stage_step": step, "val_score": s / n, "val_kl": k / n})
        if s / n > best["score"]:
            best.update(step=step, score=s / n)
            if main:
                save_trainable(policy, stage_dir / BEST_FILE)
            acc.wait_for_everyone()

    task = ctx.progress.add_task(stage.name, total=total, completed=first, loss="-", tps="-")
    if first == 0:
        evaluate(0)
    order: dict[int, list[int]] = {}
    spe = max(1, len(train_feats) // B)
    for step in range(first, total):
        epoch, pos = divmod(step, spe)
        if epoch not in order:
            perm = list(range(len(train_feats)))
            random.Random(cfg.seed * 1_000_003 + stage.index * 1009 + epoch).shuffle(perm)
            order = {epoch: perm}
        idx = order[epoch][pos * B:(pos + 1) * B]
        mine = [train_feats[i] for i in idx[rank::P]]
        seed = cfg.seed * 1_000_003 + stage.index * 10_007 + step * 101 + rank
        warm = fresh and step < ppo.critic_warmup_steps
        t0 = time.perf_counter()
        ro = collect(policy, tok, mine, seed=seed, **common)
        beta = kl_ctl.value
        score = ro.score
        if ppo.missing_eos_penalty:
            score = score - ppo.missing_eos_penalty * (~ro.ended).float()
        rewards, kl_tok = pm.shaped_rewards(ro.logp, ro.ref_logp, score, ro.mask, beta)
        adv, ret = pm.gae(rewards, ro.values, ro.mask, ppo.gamma, ppo.lam)
        if ppo.whiten_advantages:
            adv = pm.whiten(adv, ro.mask)
        t1 = time.perf_counter()
        train = _update(ctx, ppo, optimizer, critic, critic_opt, ro, adv, ret, warm, term.weight, offline, seed)
        t2 = time.perf_counter()
        ev = pm.explained_variance(ro.values, ret, ro.mask)
        local = [float(score.sum()), float((score**2).sum()), float(ro.score.sum()), float(kl_tok.sum(1).sum()),
                 float(ro.mask.sum()), float(ro.ended.float().sum()), float(len(mine)),
                 float(ro.gen_tokens), ro.gen_seconds, float(train.pop("_tokens")), t2 - t1]
        keys = sorted(train)
        ok_ev = math.isfinite(ev)
        red = reduce_sum(acc, local + [train[k] for k in keys] + [0.0 if ok_ev else 1.0, ev if ok_ev else 0.0])
        s_sum, s2_sum, raw_sum, kl_sum, len_sum, ended_sum, n, gen_tok, gen_s, tr_tok, tr_s = red[:11]
        stats = {k: v / P for k, v in zip(keys, red[11:11 + len(keys)])}
        if not all(math.isfinite(v) for v in stats.values()):
            raise diverged(stage.name, step + 1, "PPO loss")
        n_bad_ev, ev_sum = red[-2], red[-1]
        mean, kl_mean = s_sum / n, kl_sum / n
        kl_ctl.update(kl_mean, int(n))
        with warnings.catch_warnings():  # warm-up steps leave the policy optimizer untouched: torch warns
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            lr, _ = scheduler.get_last_lr()[0], scheduler.step()  # the rate this step used
        ctx.global_step += 1
        ctx.seen[term.role] = ctx.seen.get(term.role, 0) + len(idx)
        dt = time.perf_counter() - t0
        row = train_row(
            ctx, step + 1, epoch, lr, role=term.role, warmup=int(warm), reward_mean=mean,
            reward_std=math.sqrt(max(s2_sum / n - mean**2, 0.0)), score_mean=raw_sum / n, kl=kl_mean, beta=beta,
            beta_next=kl_ctl.value, response_len=len_sum / n, ended_frac=ended_sum / n,
            explained_variance=ev_sum / (P - n_bad_ev) if P > n_bad_ev else math.nan,
            rollout_tokens_per_s=gen_tok / (gen_s / P) if gen_s > 0 else 0.0,
            train_tokens_per_s=tr_tok / (tr_s / P) if tr_s > 0 else 0.0,
            tokens=tr_tok, tokens_per_s=tr_tok / dt if dt > 0 else 0.0, seconds=dt, **stats,
        )
        if main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            ctx.log.write(row)
        ctx.progress.update(task, advance=1, loss=f"r={mean:.3f}", tps=f"{row['tokens_per_s']:,.0f}")
        done = step + 1 == total
        if ppo.eval_every and ((step + 1) % ppo.eval_every == 0 or done):
            evaluate(step + 1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and not done:
            if main:
                save_resume_state(stage_dir, step + 1, critic, critic_opt, kl_ctl.value, fresh, best, info, cfg.checkpoint_keep)
            ctx.on_checkpoint(step + 1, optimizer, scheduler)
        fault_hook(ctx.global_step)
    finish_stage(acc, policy, stage_dir, ppo, critic, kl_ctl.value, best, info, total, fresh)
    return ctx.global_step


def _update(ctx: StageContext, ppo: PPO, optimizer, critic, critic_opt, ro, adv, ret, warm, weight: float,
            offline: list[AuxTerm], seed) -> dict:
    """``ppo_epochs`` passes over the rollout's mini-batches; mean metrics (and ``_tokens`` seen)."""
    acc, policy, max_norm = ctx.accelerator, ctx.model, ctx.config.max_grad_norm
    B = len(ro.features)
    gen = torch.Generator().manual_seed(seed)
    critic_params = list(critic.parameters())
    sums: dict[str, float] = {}
    count, tokens = 0, 0
    was = policy.training
    policy.eval()  # no dropout in PPO stages (ratio 1 on the first mini-batch)
    try:
        for _ in range(ppo.ppo_epochs):
            for chunk in torch.tensor_split(torch.randperm(B, generator=gen), min(ppo.mini_batches, B)):
                sel = chunk.tolist()
                batch = ctx.batch_fn([ro.features[i] for i in sel])
                tokens += int((batch["seq_ids"] >= 0).sum())
                idx = token_index(batch, ro.prompt_lens[sel], L=ro.mask.shape[1])
                mask, old_v, ret_mb = ro.mask[sel], ro.values[sel], ret[sel]
                m: dict[str, float] = {}
                if warm:
                    h = None
                    if critic.uses_policy_hidden:
                        with torch.no_grad():
                            h = gather_hidden(_forward_hidden(policy, batch), idx)
                    vf, vst = pm.value_loss(idx.pad(critic.values(batch, idx, h)), old_v, ret_mb, mask, ppo.vf_clip)
                    loss = ppo.vf_coef * vf
                else:
                    def fn(model, b, _idx=idx):
                        return token_stats(model, b, _idx, ppo.temperature, entropy=True)

                    logp, ent, h = ctx.runner(fn, batch)
                    v = idx.pad(critic.values(batch, idx, h))
                    pg, pst = pm.policy_loss(idx.pad(logp), ro.logp[sel], adv[sel], mask, ppo.clip)
                    vf, vst = pm.value_loss(v, old_v, ret_mb, mask, ppo.vf_clip)
                    loss = weight * (pg + ppo.vf_coef * vf)
                    m.update(policy_loss=float(pg.detach()), entropy=float(ent.mean()), **{k: float(x) for k, x in pst.items()})
                    for j, term in enumerate(offline):
                        g = torch.Generator().manual_seed(seed * 13 + count * 7 + j)
                        aux_idx = torch.randint(0, len(term.features), (len(sel),), generator=g).tolist()
                        aux_loss, _ = ctx.runner(term.objective, ctx.batch_fn([term.features[i] for i in aux_idx]))
                        loss = loss + term.weight * aux_loss
                        m[f"aux/{j}/loss" if j else "aux/loss"] = float(aux_loss.detach())
                m.update(value_loss=float(vf.detach()), loss=float(loss.detach()), **{k: float(x) for k, x in vst.items()})
                acc.backward(ctx.scaling.scale(loss))
                if warm:
                    optimizer.zero_grad(set_to_none=True)
                else:
                    m.update(apply_step(ctx, optimizer))
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


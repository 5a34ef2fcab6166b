"""GRPO / RLOO rollouts and the update pass over one rollout (the stage loop is ``tandem.engine.group_loop``).

A rollout of ``B`` prompts (this process's share of the step's prompts):

1. **Sampling** (:func:`tandem.models.group_sampling.sample_groups`): ``num_generations`` completions per prompt;
   the group shares the prompt's prefill and KV cache, prompts are left-padded, each row stops at its EOS.
2. **Sequences**: ``prompt + completion`` with labels on the completion (the SFT feature layout) and the prompt's
   ``group``, packed by the engine's ``batch_fn`` (with ``batching.prefix_sharing`` one block per group: the prompt
   once, then its completions, :mod:`tandem.data.prefix`); the loss mask covers the completion tokens (0 for
   truncated completions with ``mask_truncated_completions``).
3. **Log-probs** without gradient: the policy's ``logp_old`` only when the algorithm needs them
   (``num_iterations > 1``, ``steps_per_generation > 1`` or RLOO's KL in the reward), the reference's only with
   ``beta > 0``; both under ``softmax(logits / temperature)``, the distribution sampled from.
4. **Rewards** (:class:`tandem.rewards.RewardFunctions`): ``[N, F]`` per function, combined with ``reward_weights``.

:func:`update` then runs ``num_iterations`` passes over ``steps_per_generation`` mini-batches (one optimizer step
each, through the engine's ``step`` callback) with the policy in eval mode (no dropout, as TRL's default).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tandem.models.group_sampling import sample_groups
from tandem.objectives.ppo.rollout import reference_token_logps, response_features, token_index, token_stats


@dataclass
class GroupRollout:
    features: list[dict]  # N = B * G prompt + completion features (prompt-major)
    prompt_lens: torch.Tensor  # [N]
    mask: torch.Tensor  # [N, L] loss mask (completion tokens; 0 for masked truncated completions)
    lengths: torch.Tensor  # [N] completion lengths (tokens, EOS included)
    ended: torch.Tensor  # [N] bool: ends with EOS
    old_logp: torch.Tensor | None  # [N, L]
    ref_logp: torch.Tensor | None  # [N, L]
    per_func: torch.Tensor  # [N, F] rewards per function (NaN: not scored)
    rewards: torch.Tensor  # [N] combined (NaN: no function scored the row)
    gen_tokens: int
    gen_seconds: float
    score_seconds: float

    @property
    def seq_kl(self) -> torch.Tensor | None:
        """``[N]`` summed k1 estimate ``sum_t (logp_old_t - ref_t)`` (RLOO's KL in the reward), when both exist."""
        if self.old_logp is None or self.ref_logp is None:
            return None
        return ((self.old_logp - self.ref_logp) * self.mask).sum(1)


def prompt_order(n: int, B: int, seed: int, stage_index: int, step: int, cache: dict) -> tuple[int, list[int]]:
    """``(epoch, indices)`` of the ``B`` prompts of ``step``: a seeded permutation per epoch (PPO's order)."""
    epoch, pos = divmod(step, max(1, n // B))
    if epoch not in cache:
        perm = list(range(n))
        random.Random(seed * 1_000_003 + stage_index * 1009 + epoch).shuffle(perm)
        cache.clear()
        cache[epoch] = perm
    return epoch, cache[epoch][pos * B:(pos + 1) * B]


@torch.no_grad()
def collect_groups(policy, algo, prompts: list[dict], *, reference, batch_fn, pad_id: int, eos: list[int],
                   seed: int | Sequence[int]) -> GroupRollout:
    """Sample and score ``algo.num_generations`` completions of each prompt feature (module docstring); ``seed``:
    one per prompt, or one for the call (``tandem.models.group_sampling.prompt_seeds``)."""
    G, tok = algo.num_generations, algo.tokenizer
    t0 = time.perf_counter()
    completions = sample_groups(policy, [p["prompt_ids"] for p in prompts], n=G, pad_id=pad_id, eos=eos,
                                temperature=algo.temperature, top_p=algo.top_p, max_new_tokens=algo.max_completion_length,
                                seed=seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    rep = [p for p in prompts for _ in range(G)]
    eos_set = set(eos)
    feats = [{**f, "group": i // G} for i, f in enumerate(response_features([p["prompt_ids"] for p in rep], completions))]
    batch = batch_fn(feats)
    device = batch["input_ids"].device
    prompt_lens = torch.tensor([len(p["prompt_ids"]) for p in rep], device=device)
    index = token_index(batch, prompt_lens, L=max(len(c) for c in completions))
    ended = torch.tensor([c[-1] in eos_set for c in completions], device=device)
    mask = index.mask()
    if algo.mask_truncated_completions:
        mask = mask * ended[:, None].float()
    was = policy.training
    policy.eval()
    try:
        old = index.pad(token_stats(policy, batch, index, algo.temperature)[0].float()) if algo.needs_old_logp() else None
        ref = (index.pad(reference_token_logps(policy, reference, batch, index, algo.temperature).float())
               if reference is not None else None)
    finally:
        policy.train(was)
    texts = [tok.decode([t for t in c if t not in eos_set], skip_special_tokens=True) for c in completions]
    per_func = algo.rewards(rep, completions, texts, device).float()
    return GroupRollout(features=feats, prompt_lens=prompt_lens, mask=mask, ended=ended, old_logp=old, ref_logp=ref,
                        lengths=torch.tensor([len(c) for c in completions], device=device), per_func=per_func,
                        rewards=algo.rewards.combine(per_func), gen_tokens=sum(len(c) for c in completions),
                        gen_seconds=t1 - t0, score_seconds=time.perf_counter() - t1)


def rollout(policy, algo, prompts: list[dict], reference, batch_fn, pad_id: int, eos: list[int],
            seed: int | Sequence[int], reduce) -> tuple[GroupRollout, torch.Tensor, float]:
    """``(rollout, advantages, n_tokens)`` of this process's prompts: :func:`collect_groups`, :func:`advantages` and
    ``dapo``'s normaliser (the mini-batch's completion tokens over all processes, per process)."""
    if algo.tokenizer is None:
        raise RuntimeError(f"{algo.name}: its prompts were not encoded, so the tokenizer is unknown")
    ro = collect_groups(policy, algo, prompts, reference=reference, batch_fn=batch_fn, pad_id=pad_id, eos=eos, seed=seed)
    adv = advantages(algo, ro, reduce)
    P = reduce([1.0])[0]
    return ro, adv, reduce([float(ro.mask.sum())])[0] / (P * min(algo.steps_per_generation, len(ro.features)))


def advantages(algo, ro: GroupRollout, reduce) -> torch.Tensor:
    """``[N]`` advantages; ``reduce`` sums a list of floats over processes (the batch std of ``scale_rewards: batch``)."""
    r = ro.rewards[~ro.rewards.isnan()].double()
    s, s2, n = reduce([float(r.sum()), float((r**2).sum()), float(len(r))])
    batch_std = math.sqrt(max(s2 - s * s / n, 0.0) / (n - 1)) if n > 1 else math.nan
    return algo.advantages(ro.rewards, ro.seq_kl, batch_std)


def update(forward, policy, algo, ro: GroupRollout, adv: torch.Tensor, batch_fn, step, seed: int,
           n_tokens: float) -> dict[str, float]:
    """``num_iterations`` x ``steps_per_generation`` optimizer steps on the rollout; ``forward(fn, batch)`` runs
    ``fn(model, batch)`` (the engine's DDP-aware runner), ``step(loss)`` backpropagates and applies one optimizer
    step (returning its metrics); ``n_tokens`` is ``dapo``'s normaliser. Returns the mean metrics, ``_tokens`` (tokens
    trained on) and ``_steps``."""
    N = len(ro.features)
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    count = tokens = 0
    was = policy.training
    policy.eval()
    try:
        for _ in range(algo.num_iterations):
            for chunk in torch.tensor_split(torch.randperm(N, generator=gen), min(algo.steps_per_generation, N)):
                sel = chunk.tolist()
                batch = batch_fn([ro.features[i] for i in sel])
                tokens += int((batch["seq_ids"] >= 0).sum())
                idx = token_index(batch, ro.prompt_lens[sel], L=ro.mask.shape[1])

                def fn(model, b, _idx=idx):
                    return token_stats(model, b, _idx, algo.temperature, entropy=True)

                logp, ent, _ = forward(fn, batch)
                logp, mask = idx.pad(logp.float()), ro.mask[sel]
                old = ro.old_logp[sel] if ro.old_logp is not None else logp.detach()
                ref = ro.ref_logp[sel] if ro.ref_logp is not None else None
                loss, m = algo.loss(logp, old, ref, adv[sel].to(logp.dtype), mask, n_tokens)
                m["loss"] = float(loss.detach())
                m["entropy"] = float((idx.pad(ent) * mask).sum() / mask.sum().clamp(min=1))
                m.update(step(loss))
                for k, x in m.items():
                    sums[k] = sums.get(k, 0.0) + x
                count += 1
    finally:
        policy.train(was)
    return {**{k: x / count for k, x in sums.items()}, "_tokens": tokens, "_steps": count}


def step_stats(algo, ro: GroupRollout, train: dict[str, float], reduce, P: int, rollout_s: float, train_s: float
               ) -> dict[str, float]:
    """The metrics row of one step, summed over processes with ``reduce``: ``reward`` / ``reward_std`` (scored rows),
    ``rewards/NAME/mean|std`` per function, ``frac_reward_zero_std`` (groups whose rewards are all equal),
    ``completion_length``, ``ended_frac``, ``kl`` (RLOO's in-reward k1, token mean), the update's means,
    ``rollout_tokens_per_s`` and ``train_tokens_per_s`` (each over its own time)."""
    G = algo.num_generations
    r = ro.rewards[~ro.rewards.isnan()].double()
    grouped = ro.rewards.view(-1, G)
    zero_std = ((grouped.nan_to_num(0.0) - grouped.nan_to_num(0.0)[:, :1]).abs().amax(1) == 0).float()
    fsums = algo.rewards.sums(ro.per_func)
    kl = ro.seq_kl
    local = {"r": float(r.sum()), "r2": float((r**2).sum()), "rn": float(len(r)), "zero": float(zero_std.sum()),
             "groups": float(len(zero_std)), "len": float(ro.lengths.sum()), "ended": float(ro.ended.sum()),
             "n": float(len(ro.lengths)), "kl": float(kl.sum()) if kl is not None else 0.0,
             "kl_tokens": float(ro.mask.sum()), "gen_tok": float(ro.gen_tokens), "gen_s": rollout_s,
             "tr_tok": float(train["_tokens"]), "tr_s": train_s, **{f"f/{k}": v for k, v in fsums.items()},
             **{f"t/{k}": v for k, v in train.items() if not k.startswith("_")}}
    keys = sorted(local)
    red = dict(zip(keys, reduce([local[k] for k in keys])))
    mean = red["r"] / red["rn"] if red["rn"] else math.nan
    out = {"reward": mean, "reward_std": math.sqrt(max(red["r2"] / red["rn"] - mean**2, 0.0)) if red["rn"] else math.nan,
           **algo.rewards.stats({k[2:]: v for k, v in red.items() if k.startswith("f/")}),
           "frac_reward_zero_std": red["zero"] / red["groups"], "completion_length": red["len"] / red["n"],
           "ended_frac": red["ended"] / red["n"],
           "rollout_tokens_per_s": red["gen_tok"] / (red["gen_s"] / P) if red["gen_s"] > 0 else 0.0,
           "train_tokens_per_s": red["tr_tok"] / (red["tr_s"] / P) if red["tr_s"] > 0 else 0.0,
           "tokens": red["tr_tok"], "optimizer_steps": train["_steps"]}
    if kl is not None and not algo.kl_in_loss():
        out["kl"] = red["kl"] / max(red["kl_tokens"], 1.0)
    out.update({k[2:]: v / P for k, v in red.items() if k.startswith("t/")})
    return out

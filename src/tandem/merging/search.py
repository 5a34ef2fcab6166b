"""Searching merge ratios: global sweep, optuna multi-objective per-group search, learned group ratios.

Convention: ``theta = (1 - alpha) * theta_0 + alpha * theta_1`` per tensor (alpha = 1 is the tuned model).

``evaluate(alphas_per_group) -> {"reward": float, "tax": float}`` is supplied by the caller (typically:
merge into a live model with a :class:`~tandem.merging.lerp.Merger`, then score it; see
:func:`merged_evaluator`). Reward is maximised, tax minimised.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from tandem.merging.groups import group_of, tensor_alphas
from tandem.merging.lerp import Merger, merge_names

log = logging.getLogger(__name__)

Evaluate = Callable[[list[float]], Mapping[str, float]]


def _point(alphas: list[float], res: Mapping[str, float], **extra) -> dict:
    if "reward" not in res or "tax" not in res:
        raise KeyError(f"evaluate() must return a dict with 'reward' and 'tax', got keys {sorted(res)}")
    return {**extra, "alphas": list(alphas), "reward": float(res["reward"]), "tax": float(res["tax"])}


def merged_evaluator(
    merger: Merger,
    model: nn.Module,
    group_spec: str,
    score: Callable[[nn.Module], Mapping[str, float]],
    head_alpha: float | None = None,
) -> Evaluate:
    """``evaluate(alphas_per_group)`` that merges into ``model`` in place, then returns ``score(model)``."""
    names = merger.names

    def evaluate(alphas: list[float]) -> Mapping[str, float]:
        merger.merge_into(model, tensor_alphas(names, group_spec, alphas, head_alpha))
        return score(model)

    return evaluate


def global_sweep(evaluate: Evaluate, alphas: Iterable[float], n_groups: int = 1) -> list[dict]:
    """Wise-FT: one alpha for every tensor. ``evaluate`` is called with ``[alpha] * n_groups``.

    Returns ``[{"alpha", "alphas", "reward", "tax"}, ...]`` in the order of ``alphas``.
    """
    out = []
    for a in alphas:
        a = float(a)
        out.append(_point([a] * n_groups, evaluate([a] * n_groups), alpha=a))
    return out


def search_group_ratios(
    evaluate: Evaluate,
    n_groups: int,
    n_trials: int,
    seed: int = 0,
    low: float = 0.0,
    high: float = 1.0,
    population_size: int | None = None,
) -> list[dict]:
    """Optuna NSGA-II (seeded) over one alpha per group in ``[low, high]``, maximising reward and minimising
    tax. Returns every trial as ``{"alphas", "reward", "tax"}`` in trial order; feed the list to
    :func:`tandem.merging.pareto.pareto_front`. The same seed and evaluations give the same trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pop = population_size or max(4, min(50, n_trials // 2))
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    )
    out: list[dict] = []

    def objective(trial):
        alphas = [trial.suggest_float(f"alpha_{g}", low, high) for g in range(n_groups)]
        p = _point(alphas, evaluate(alphas))
        out.append(p)
        return p["reward"], p["tax"]

    study.optimize(objective, n_trials=n_trials)
    return out


def lm_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Default loss for :func:`learn_group_ratios`: the model's causal-LM loss on a batch in the tandem
    layout (labels unshifted, ``-100`` where no loss; HF shifts internally)."""
    kw = {k: batch[k] for k in ("input_ids", "labels", "position_ids", "attention_mask") if k in batch}
    return model(**kw, use_cache=False).loss


class _LossModule(nn.Module):
    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def group_ratios(logits: torch.Tensor, mean_ratio: float, parametrisation: str = "softmax") -> torch.Tensor:
    """``clamp(n * mean_ratio * w, 0, 1)`` with ``w = softmax(logits)`` (``"softmax"``, tandem's default) or the
    normalised sigmoid ``w = sigmoid(logits) / sum(sigmoid(logits))`` (``"sigmoid"``, the authors' release): the mean
    over groups is exactly ``mean_ratio`` unless a ratio hits the clamp at 1 (then the mean drops below it; the
    clamped group gets no gradient)."""
    n = logits.numel()
    if parametrisation == "sigmoid":
        s = torch.sigmoid(logits)
        w = s / s.sum()
    elif parametrisation == "softmax":
        w = torch.softmax(logits, dim=0)
    else:
        raise ValueError(f"parametrisation: {parametrisation!r} is not one of ['softmax', 'sigmoid']")
    return (n * mean_ratio * w).clamp(0.0, 1.0)


def ratio_pull(ratios: torch.Tensor, initial: float, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The weighted L1 pull of the ratios to their initial value: ``sum_g c_g |r_g - initial|`` (``c_g = 1``
    when ``weights`` is None)."""
    c = torch.ones_like(ratios) if weights is None else torch.tensor(list(weights), dtype=ratios.dtype, device=ratios.device)
    if c.numel() != ratios.numel():
        raise ValueError(f"pull_weights: {c.numel()} weights for {ratios.numel()} groups")
    return (c * (ratios - initial).abs()).sum()


def learn_group_ratios(
    model: nn.Module,
    theta0: Mapping[str, torch.Tensor],
    theta1: Mapping[str, torch.Tensor],
    groups: str | Mapping[str, int | None],
    batches: Sequence[Mapping[str, torch.Tensor]],
    loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor] = lm_loss,
    mean_ratio: float = 0.5,
    steps: int = 20,
    lr: float = 0.1,
    history: list | None = None,
    parametrisation: str = "softmax",
    pull: float = 0.0,
    pull_weights: Sequence[float] | None = None,
) -> list[float]:
    """Adaptive per-group ratios (the authors' variant of heterogeneous model averaging).

    One logit per group, ``ratios = n_groups * mean_ratio * softmax(logits)`` clamped to ``[0, 1]`` (see
    :func:`group_ratios`), so the mean ratio stays ``mean_ratio``; logits start at 0 (every group at
    ``mean_ratio``). Each step merges ``theta_g = theta_0 + r_g * (theta_1 - theta_0)`` as a differentiable
    function of the logits, evaluates ``loss_fn(model, batch)`` through ``torch.func.functional_call`` (so the
    model's own parameters are neither used nor changed) and takes an Adam step on the logits. ``batches``
    are cycled.

    Args:
        groups: a group spec (``"block3"``) resolved on the model's parameter names, or ``{name: group}``
            with ``None`` for tensors outside the groups; those follow the mean ratio, like ``head_alpha``'s
            default (embeddings follow group 0 when a spec string is given).
        loss_fn: ``loss_fn(model, batch) -> scalar``; called on ``model`` with the merged weights swapped in.
        history: if a list is given, the loss of every step is appended to it.
        parametrisation: ``"softmax"`` (tandem's default) or ``"sigmoid"`` (the authors' normalised sigmoid), see
            :func:`group_ratios`.
        pull, pull_weights: adds ``pull * sum_g c_g |r_g - mean_ratio|`` to the loss (:func:`ratio_pull`; the
            authors' release pulls the ratios to their initial value this way); 0 adds nothing.

    Returns the learned ratios (floats), one per group.
    """
    if not 0.0 <= mean_ratio <= 1.0:
        raise ValueError(f"mean_ratio must be in [0, 1], got {mean_ratio}")
    if not batches:
        raise ValueError("batches is empty")
    names = merge_names(model)
    if isinstance(groups, str):
        gmap, n_groups = group_of(names, groups)
    else:
        gmap = {n: groups.get(n) for n in names}
        n_groups = 1 + max((g for g in gmap.values() if g is not None), default=-1)
        if n_groups == 0:
            raise ValueError("groups assigns no tensor to a group")
    p = next(model.parameters())
    t0 = {n: theta0[n].detach().to(p.device, p.dtype) for n in names}
    delta = {n: theta1[n].detach().to(p.device, p.dtype) - t0[n] for n in names}
    logits = torch.zeros(n_groups, device=p.device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    wrapper = _LossModule(model, loss_fn)
    was_training = model.training
    model.eval()
    try:
        for step in range(steps):
            r = group_ratios(logits, mean_ratio, parametrisation)
            r_all = torch.cat([r, r.mean().reshape(1)])  # index n_groups = tensors outside groups
            params = {f"model.{n}": t0[n] + r_all[n_groups if gmap[n] is None else gmap[n]].to(p.dtype) * delta[n]
                      for n in names}
            loss = torch.func.functional_call(wrapper, params, (batches[step % len(batches)],))
            if pull:
                loss = loss + pull * ratio_pull(r, mean_ratio, pull_weights)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"learn_group_ratios: loss is {loss.item()} at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if history is not None:
                history.append(float(loss.detach()))
            log.debug("learn_group_ratios step %d loss %.5f ratios %s", step, loss.item(), r.tolist())
    finally:
        model.train(was_training)
    with torch.no_grad():
        return [float(x) for x in group_ratios(logits, mean_ratio, parametrisation)]


def ratios_to_alphas(names: Sequence[str], groups: str, ratios: Sequence[float]) -> dict[str, float]:
    """Per-tensor alphas for learned ratios, with tensors outside the groups at the mean ratio."""
    return tensor_alphas(names, groups, ratios, head_alpha=math.fsum(ratios) / len(ratios))

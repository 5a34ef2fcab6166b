"""``tandem tax``: trade reward against the alignment tax by averaging weights.

theta_0 is the model before preference training, theta_1 the model after it; every candidate is
``theta = (1 - alpha) * theta_0 + alpha * theta_1`` per tensor (alpha = 1 is the tuned model), merged in place
into one live model with :class:`~tandem.merging.lerp.Merger` (no reload per candidate). Candidates:

* ``global``: the Wise-FT sweep, one alpha for every tensor (``tax.sweep``);
* ``group``: one alpha per layer group (``tax.groups``, default ``block3``), searched with optuna NSGA-II
  (``tax.trials``, seeded);
* ``adaptive``: the authors' variant: one logit per group, ratios kept at ``adaptive.mean_ratio`` on average,
  learned by gradient descent on the LM loss of the ``adaptive.top_k`` highest-reward responses of theta_1.

Each candidate is scored on two sides:

* reward: mean reward-model score of its replies (``tax.temperature``, default greedy) to the prompt set;
* tax (lower is better): ``perplexity`` -> relative increase of held-out perplexity over theta_0
  (``ppl / ppl_0 - 1``); ``mc`` -> drop in multiple-choice accuracy (``acc_0 - acc``).

Writes ``OUT/candidates.jsonl`` (one row per candidate, appended as it is scored: ``--resume`` reuses them),
``OUT/table.md``, ``OUT/summary.json`` (Pareto front, the pick), ``OUT/pareto.png`` and, when ``tax.budget``
admits a candidate, the highest-reward one under the budget as a normal HF model in ``OUT/picked``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

from tandem.merging.pareto import pareto_front, pick_under_budget, plot_pareto
from tandem.models.sampling import pad_token_id

log = logging.getLogger(__name__)


def tax_of(metric: str, value: float, base_value: float) -> float:
    """Tax of a candidate from its raw tax-side metric: relative perplexity increase, or accuracy drop."""
    if metric == "perplexity":
        return value / base_value - 1.0
    if metric == "mc":
        return base_value - value
    raise ValueError(f"tax.tax_metric: unknown metric {metric!r} (perplexity, mc)")


def candidate_key(alphas: list[float], head_alpha: float | None) -> str:
    """Same weights, same key: a candidate found twice (alpha 0 of the sweep and theta_0) is scored once."""
    return json.dumps([[round(a, 6) for a in alphas], None if head_alpha is None else round(head_alpha, 6)])


class CandidateLog:
    """``candidates.jsonl``: every scored candidate, appended (flushed) as soon as it is scored."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.rows: dict[str, dict] = {}
        if resume and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, row: dict) -> None:
        self.rows[row["key"]] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def make_scorer(tokenizer, prompts, reward_model, reward_tokenizer, metric: str, heldout_texts=None, mc_rows=None,
                max_new_tokens: int = 48, temperature: float = 0.0, batch_size: int = 8, seed: int = 0) -> Callable:
    """``score(model) -> {"reward", "raw_tax", "outputs"}`` (reward: mean reward-model score of the replies)."""
    from tandem.evaluation import metrics as M
    from tandem.evaluation.generation import generate

    if metric == "perplexity" and not heldout_texts:
        raise ValueError("tax.tax_metric perplexity needs tax.heldout_text (or eval.heldout_text)")
    if metric == "mc" and not mc_rows:
        raise ValueError("tax.tax_metric mc needs tax.mc (or eval.mc)")

    def score(model) -> dict:
        model.eval()
        outs = generate(model, tokenizer, prompts, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                        batch_size=batch_size)
        rewards = M.reward_scores(reward_model, reward_tokenizer, prompts, outs, batch_size=batch_size)
        if metric == "perplexity":
            raw = M.perplexity(model, tokenizer, heldout_texts)["perplexity"]
        else:
            raw = M.multiple_choice_accuracy(model, tokenizer, mc_rows)["acc"]
        return {"reward": sum(rewards) / len(rewards), "raw_tax": float(raw), "outputs": outs, "rewards": rewards}

    return score


def make_fit(tokenizer, prompts, reward_model, reward_tokenizer, max_new_tokens: int = 48, temperature: float = 0.0,
             batch_size: int = 8, seed: int = 0) -> Callable:
    """``fit(model) -> {"outputs", "rewards"}``: the replies to the adaptive ratios' fit prompts and their rewards."""
    from tandem.evaluation import metrics as M
    from tandem.evaluation.generation import generate

    def fit(model) -> dict:
        model.eval()
        outs = generate(model, tokenizer, prompts, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                        batch_size=batch_size)
        return {"outputs": outs, "rewards": M.reward_scores(reward_model, reward_tokenizer, prompts, outs,
                                                            batch_size=batch_size)}

    return fit


def run_tax_search(model, merger, score: Callable, cfg, out: Path, resume: bool = False, tokenizer=None,
                   prompts=None, progress=None, fit: Callable | None = None, fit_prompts=None) -> dict:
    """Score the global sweep, the optuna per-group search and the adaptive ratios; write the outputs.

    ``model`` receives every candidate's weights in place; ``cfg`` is a :class:`tandem.config.recipe.TaxConfig`.
    """
    from tandem.merging.groups import describe_groups, group_of, tensor_alphas
    from tandem.merging.search import global_sweep, search_group_ratios

    names = merger.names
    _, n_groups = group_of(names, cfg.groups)
    cands = CandidateLog(out / "candidates.jsonl", resume)
    t_start = time.perf_counter()

    def scored(kind: str, alphas: list[float], count: bool = True) -> dict:
        head = cfg.head_alpha
        key = candidate_key(alphas, head)
        row = cands.get(key)
        if row is None:
            merger.merge_into(model, tensor_alphas(names, cfg.groups, alphas, head))
            t0 = time.perf_counter()
            s = score(model)
            row = {"key": key, "kind": kind, "alphas": list(alphas), "head_alpha": head, "reward": s["reward"],
                   cfg.tax_metric: s["raw_tax"], "seconds": time.perf_counter() - t0, "outputs": s["outputs"],
                   "rewards": s["rewards"]}
            cands.add(row)
        if progress is not None and count:
            progress()
        return row

    base = scored("base", [0.0] * n_groups)
    base_raw = base[cfg.tax_metric]

    def evaluator(kind: str):
        def evaluate(alphas: list[float]) -> dict:
            row = scored(kind, alphas)
            return {"reward": row["reward"], "tax": tax_of(cfg.tax_metric, row[cfg.tax_metric], base_raw)}
        return evaluate

    sweep = global_sweep(evaluator("global"), cfg.sweep, n_groups=n_groups)
    group = search_group_ratios(evaluator("group"), n_groups, cfg.trials, seed=cfg.seed) if cfg.trials else []
    for p in group:
        p["kind"] = "group"
    adaptive = []
    if cfg.adaptive.enabled:
        if fit is None or not fit_prompts:
            raise ValueError("tax.adaptive: the ratios are fitted on prompts disjoint from the scoring prompts; give "
                             "fit prompts (tax.adaptive.prompts, or a tax.adaptive.fit_fraction of the prompts)")
        ratios, history = learn_adaptive(model, merger, cfg, fit, tokenizer, fit_prompts, n_groups)
        p = evaluator("adaptive")(ratios)
        adaptive = [{"kind": "adaptive", "alphas": ratios, "loss_history": history, **p}]
    for p in sweep:
        p["kind"] = "global"

    points = sweep + group + adaptive
    front = pareto_front(points)
    pick = pick_under_budget(points, cfg.budget) if cfg.budget is not None else None
    for i, p in enumerate(points):
        p["on_front"] = i in front
        p["picked"] = i == pick
    plot_pareto(sweep, group + adaptive, front, out / "pareto.png",
                title=f"Reward vs alignment tax ({cfg.tax_metric}; groups {cfg.groups})",
                tax_metric=cfg.tax_metric, budget=cfg.budget, pick=pick)
    summary = {
        "convention": "theta = (1 - alpha) * theta_0 + alpha * theta_1 (alpha = 1: tuned model)",
        "groups": cfg.groups, "group_layers": describe_groups(names, cfg.groups), "tax_metric": cfg.tax_metric,
        f"base_{cfg.tax_metric}": base_raw, "base_reward": base["reward"], "budget": cfg.budget,
        "points": points, "front": front, "pick": pick, "seconds": time.perf_counter() - t_start,
        "score_prompts": len(prompts or []), "fit_prompts": len(fit_prompts or []) if cfg.adaptive.enabled else 0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(table_markdown(summary))
    if pick is not None:
        merger.merge_into(model, tensor_alphas(names, cfg.groups, points[pick]["alphas"], cfg.head_alpha))
    return summary


def learn_adaptive(model, merger, cfg, fit: Callable, tokenizer, prompts, n_groups: int) -> tuple[list[float], list[float]]:
    """Learned group ratios on the ``top_k`` highest-reward replies of theta_1 to the FIT prompts (disjoint from the
    prompts the candidates are scored on); ``fit(model) -> {"outputs", "rewards"}`` on those prompts."""
    from tandem.data import collate, encode_all
    from tandem.data.types import SFTExample
    from tandem.merging.groups import tensor_alphas
    from tandem.merging.search import learn_group_ratios

    merger.merge_into(model, tensor_alphas(merger.names, cfg.groups, [1.0] * n_groups, cfg.head_alpha))
    tuned = fit(model)
    order = sorted(range(len(prompts)), key=lambda i: -tuned["rewards"][i])[: cfg.adaptive.top_k]
    examples = [SFTExample(prompt=prompts[i], response=tuned["outputs"][i]) for i in order if tuned["outputs"][i].strip()]
    if not examples:
        raise ValueError("tax.adaptive: the tuned model's replies are all empty; nothing to learn the ratios on")
    feats, _ = encode_all(tokenizer, examples, 1024, "truncate")
    pad = pad_token_id(tokenizer)
    batches = [collate(feats[i : i + 4], mode="pad", pad_id=pad) for i in range(0, len(feats), 4)]
    theta0 = dict(zip(merger.names, merger.theta0))
    theta1 = dict(zip(merger.names, merger.theta1))
    history: list[float] = []
    ratios = learn_group_ratios(model, theta0, theta1, cfg.groups, batches, mean_ratio=cfg.adaptive.mean_ratio,
                                steps=cfg.adaptive.steps, lr=cfg.adaptive.lr, history=history,
                                parametrisation=cfg.adaptive.parametrisation, pull=cfg.adaptive.pull,
                                pull_weights=cfg.adaptive.pull_weights)
    return ratios, history


def table_markdown(summary: dict) -> str:
    m = summary["tax_metric"]
    lines = [
        f"# Alignment tax: reward vs {m}", "",
        f"{summary['convention']}; groups `{summary['groups']}` = layers {', '.join(summary['group_layers'])}.",
        f"theta_0: reward {summary['base_reward']:.4f}, {m} {summary[f'base_{m}']:.4f}. "
        f"Tax = {'ppl / ppl_0 - 1' if m == 'perplexity' else 'acc_0 - acc'}. Budget: {summary['budget']}.", "",
        "| kind | alphas | reward | tax | Pareto | pick |", "|---|---|---:|---:|:---:|:---:|",
    ]
    for p in summary["points"]:
        alphas = ", ".join(f"{a:.2f}" for a in p["alphas"])
        lines.append(f"| {p['kind']} | {alphas} | {p['reward']:.4f} | {p['tax']:.4f} | {'x' if p['on_front'] else ''} | "
                     f"{'x' if p['picked'] else ''} |")
    return "\n".join(lines) + "\n"

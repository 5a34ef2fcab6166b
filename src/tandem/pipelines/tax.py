"""``tandem tax``: a recipe's ``tax`` block -> theta_0 / theta_1, reward model, prompts, tax texts -> the candidate
search of :mod:`tandem.merging.tax`, its table, Pareto plot and picked model.

OUT is a tandem run directory (``tandem.io.rundir``): new or empty, or an earlier search's with ``--resume`` (its
scored candidates are reused) or ``--overwrite`` (replaced); a directory tandem did not create is refused. It is
locked while it is written. Every input is checked before OUT is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tandem.merging.tax import make_fit, make_scorer, run_tax_search


def run_tax(recipe, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Everything ``tandem tax RECIPE`` does: load theta_0 / theta_1, score the candidates, save the pick."""
    from tandem.data.formats import load_source
    from tandem.evaluation.inputs import eval_inputs, read_texts
    from tandem.evaluation.metrics import load_mc_rows
    from tandem.io.rundir import check_run_dir, open_run_dir, path_inputs
    from tandem.models import check_exists

    cfg = recipe.tax
    out = Path(cfg.out or Path(recipe.output_dir) / "tax")
    check_run_dir(out, resume=resume, overwrite=overwrite)
    base_path = cfg.base or recipe.model.name_or_path
    tuned_path = cfg.tuned or str(Path(recipe.output_dir) / "final")
    if not Path(tuned_path).exists():
        raise FileNotFoundError(f"tax.tuned: {tuned_path} does not exist (train the recipe first, or set tax.tuned)")
    check_exists(base_path, "tax.base (or model.name_or_path)")
    reward_path = cfg.reward_model or recipe.eval.reward_model
    if not reward_path:
        raise ValueError("tax.reward_model (or eval.reward_model) is needed for the reward side")
    check_exists(reward_path, "tax.reward_model (or eval.reward_model)")
    if cfg.prompts is not None:
        examples, _ = load_source(cfg.prompts)
        prompts = [e.prompt for e in examples]
    else:
        prompts = eval_inputs(recipe.eval).get("prompts")
    if not prompts:
        raise ValueError("tax.prompts (or eval.data) is needed for the reward side")
    prompts, fit_prompts = adaptive_split(cfg, prompts)
    heldout = read_texts(cfg.heldout_text or recipe.eval.heldout_text) if (cfg.heldout_text or recipe.eval.heldout_text) else None
    if heldout and cfg.heldout_limit:
        heldout = heldout[: cfg.heldout_limit]
    mc_path = cfg.mc or recipe.eval.mc
    mc_rows = load_mc_rows(mc_path) if mc_path else None
    inputs = {"tax.base": base_path, "tax.tuned": tuned_path, "tax.reward_model": reward_path,
              **path_inputs(recipe.tax.model_dump(mode="json"), "tax", exclude=("tax.out",))}
    with open_run_dir(out, resume=resume, overwrite=overwrite, command="tax", inputs=inputs):
        return _search(recipe, out, resume, show_progress, base_path, tuned_path, reward_path, prompts, heldout, mc_rows,
                       fit_prompts)


def adaptive_split(cfg, prompts: list) -> tuple[list, list]:
    """(scoring prompts, fit prompts of the adaptive ratios): ``tax.adaptive.prompts`` when given, else a seeded
    ``fit_fraction`` of the prompts held out from scoring, so the ratios are never fitted on the scored prompts."""
    import random

    from tandem.data.formats import load_source

    a = cfg.adaptive
    if not a.enabled:
        return prompts, []
    if a.prompts is not None:
        examples, _ = load_source(a.prompts)
        return prompts, [e.prompt for e in examples]
    idx = list(range(len(prompts)))
    random.Random(cfg.seed).shuffle(idx)
    n_fit = max(1, round(a.fit_fraction * len(prompts)))
    if n_fit >= len(prompts):
        raise ValueError(f"tax.adaptive.fit_fraction {a.fit_fraction}: {len(prompts)} prompts leave none to score; "
                         "give more prompts or tax.adaptive.prompts")
    fit = set(idx[:n_fit])
    return [p for i, p in enumerate(prompts) if i not in fit], [p for i, p in enumerate(prompts) if i in fit]


def _search(recipe, out: Path, resume: bool, show_progress: bool, base_path: str, tuned_path: str, reward_path: str,
            prompts: list, heldout: list[str] | None, mc_rows: list[dict] | None, fit_prompts: list) -> dict:
    """Load theta_0 / theta_1 and the reward model, score the candidates into ``out``, save the pick."""
    from rich.progress import Progress

    from tandem.merging.lerp import Merger
    from tandem.models import load_full_weights, load_reward_model, save_model, stage_weights, tokenizer_of

    cfg = recipe.tax
    dtype = torch.float32
    model = load_full_weights(base_path, dtype=dtype)
    # theta_1 an adapter: on theta_0 as its base, unless theta_0 is a stage of a run (then the adapter's own base)
    tuned = load_full_weights(tuned_path, base=None if stage_weights(base_path) else base_path, dtype=dtype)
    merger = Merger.from_models(model, tuned)
    del tuned
    tok = tokenizer_of(base_path)
    rm, rtok = load_reward_model(reward_path, scorer=True)  # a causal LM would score with a random head
    score = make_scorer(tok, prompts, rm, rtok, cfg.tax_metric, heldout, mc_rows, cfg.max_new_tokens, cfg.temperature,
                        cfg.batch_size, cfg.seed)
    total = 1 + len(cfg.sweep) + cfg.trials + (1 if cfg.adaptive.enabled else 0)
    with Progress(disable=not show_progress) as prog:
        task = prog.add_task("scoring merge candidates", total=total)
        fit = make_fit(tok, fit_prompts, rm, rtok, cfg.max_new_tokens, cfg.temperature, cfg.batch_size, cfg.seed)
        summary = run_tax_search(model, merger, score, cfg, out, resume=resume, tokenizer=tok, prompts=prompts,
                                 progress=lambda: prog.advance(task), fit=fit, fit_prompts=fit_prompts)
    if summary["pick"] is not None:
        save_model(model, tok, out / "picked")
        summary["picked_dir"] = str(out / "picked")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

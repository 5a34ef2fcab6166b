"""Score a finished study's generations again with another reward model: the reward and win-rate columns of
``tandem study`` without generating anything again.

For every row of ``STUDY/table.json`` (the base row included) and every generation set of its evaluation
(``eval/generations.jsonl`` at ``eval.temperature`` and the sweep's ``eval/t<T>-s<seed>/generations.jsonl``), the
replies are scored by ``--reward-model`` as the ``reward`` metric scores them (:func:`tandem.evaluation.metrics.
reward_scores`), and the win rate is taken against the base model's replies at ``eval.temperature``
(``STUDY/base/eval/generations.jsonl``), as the study's ``reward_win_rate`` does. Scores are kept per file in
``OUT/scores`` (a stopped rescoring resumes). Writes ``OUT/table.json`` (one row per run, columns ``reward/mean``,
``reward_win_rate/win_rate`` and ``t<T>/...``) and ``OUT/table.md`` (mean ± std per method).

    python benchmarks/rescore_study.py runs/study --reward-model runs/reward-mix/final --out runs/study-rescore
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

from tandem.evaluation.metrics import reward_scores, reward_win_rate
from tandem.models import load_reward_model


def generation_sets(eval_dir: Path) -> dict[str, Path]:
    """``{"": eval/generations.jsonl, "t0.25": eval/t0.25-s0/generations.jsonl, ...}`` of one evaluation (the sweep's
    first seed)."""
    sets = {"": eval_dir / "generations.jsonl"} if (eval_dir / "generations.jsonl").is_file() else {}
    for d in sorted(eval_dir.glob("t*-s0")):
        if (d / "generations.jsonl").is_file():
            sets[d.name.rsplit("-s", 1)[0]] = d / "generations.jsonl"
    return sets


def read(path: Path) -> tuple[list, list[str]]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["prompt"] for r in rows], [r["output"] for r in rows]


def scored(cache: Path, path: Path, model, tok) -> list[float]:
    """The reward of every reply of ``path``, from ``cache`` when an earlier call wrote it."""
    if cache.is_file():
        return json.loads(cache.read_text())
    prompts, outputs = read(path)
    scores = reward_scores(model, tok, prompts, outputs)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(scores))
    os.replace(tmp, cache)
    return scores


def rescore(study: Path, reward_model: str, out: Path, dtype: str = "bfloat16") -> list[dict]:
    rows = json.loads((study / "table.json").read_text())
    baseline = study / "base" / "eval" / "generations.jsonl"
    model, tok = load_reward_model(reward_model, dtype=dtype)
    model.eval()
    (out / "scores").mkdir(parents=True, exist_ok=True)
    base_prompts, _ = read(baseline)
    base_scores = scored(out / "scores" / "base-baseline.json", baseline, model, tok)
    result = []
    for r in rows:
        run = Path(r["run"])
        row = {"method": r["method"], "seed": r["seed"], "run": str(run)}
        for name, path in generation_sets(run / "eval").items():
            prompts, _ = read(path)
            if prompts != base_prompts:
                raise ValueError(f"{path}: not the prompts of the baseline {baseline}, in the same order")
            s = scored(out / "scores" / f"{run.name}-{name or 'main'}.json", path, model, tok)
            key = f"{name}/" if name else ""
            row[f"{key}reward/mean"] = sum(s) / len(s)
            if r["method"] != "base":
                row[f"{key}reward_win_rate/win_rate"] = reward_win_rate(s, base_scores)["win_rate"]
        result.append(row)
    (out / "table.json").write_text(json.dumps({"reward_model": reward_model, "study": str(study), "rows": result},
                                                indent=2))
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="a finished tandem study directory (its table.json)")
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "auto"])
    a = ap.parse_args(argv)
    rows = rescore(a.study, a.reward_model, a.out, a.dtype)
    spec = importlib.util.spec_from_file_location("study_table", Path(__file__).with_name("study_table.py"))
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    temps = sorted({k.split("/")[0] for r in rows for k in r if k.startswith("t") and "/" in k})
    cols = [("reward/mean", "reward"), ("reward_win_rate/win_rate", "win vs base")]
    cols += [(f"{t}/{k}", f"{h} {t}") for t in temps for k, h in cols[:2]]
    md = st.table(rows, cols)
    (a.out / "table.md").write_text(f"reward model: {a.reward_model}\n\n{md}\n")
    print(md)
    return rows


if __name__ == "__main__":
    main()

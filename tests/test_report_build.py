"""tandem.report: run report (two stages) and compare report on synthetic dirs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from tandem.evaluation.metrics import temperature_sweep
from tandem.report import summarize, write_report
from tandem.report.plots import stage_spans


def make_run_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, 21):
        sft = step <= 10
        stage, idx = ("01-sft", 0) if sft else ("02-dpo", 1)
        row = {"split": "train", "stage": stage, "stage_index": idx, "step": step, "stage_step": step if sft else step - 10,
               "epoch": 0, "loss": 2.0 / step + (0 if sft else 0.5), "lr": 1e-5 * min(1, step / 3),
               "tokens_per_s": 300.0 + step}
        if not sft:
            row.update({"chosen_logp": -20 + step * 0.3, "rejected_logp": -20 - step * 0.3,
                        "rewards/accuracy": min(1.0, 0.4 + 0.05 * (step - 10)), "rewards/margin": 0.1 * (step - 10)})
        rows.append(row)
        if step % 5 == 0:
            rows.append({"split": "val", "stage": stage, "stage_index": idx, "step": step, "loss": 2.2 / step + 0.1})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"split": "tra')  # torn last line
    return d


def make_compare_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    table = []
    for m, (rl, wr) in {"sft+dpo": (0.30, 0.55), "hbat": (0.33, 0.62), "merge-0.5": (0.34, 0.58)}.items():
        for seed in range(3):
            table.append({"method": m, "seed": seed, "rougeL": rl + 0.01 * seed, "reward_win_rate": wr - 0.02 * seed,
                          "perplexity": 12.0 + seed})
    (d / "table.json").write_text(json.dumps(table))
    rows = temperature_sweep(lambda t, s: {"rougeL": 0.35 - 0.1 * t + 0.01 * s, "reward": 1.0 - t + 0.05 * s},
                             [0.0, 0.25, 0.5, 0.75, 1.0], repeats=3)
    (d / "temperature_sweep.json").write_text(json.dumps(rows))
    return d


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 15_000  # not an empty canvas
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 400
    assert img[..., :3].std() > 0.05  # something is drawn


def test_run_report(tmp_path):
    d = make_run_dir(tmp_path / "run")
    md_path = write_report(d)
    assert md_path == d / "report.md"
    md = md_path.read_text()
    assert "# Run: run" in md
    assert "| 0 | 01-sft | 1–10 | 0.2000 | 0.3200 |" in md  # last train loss 2/10, last val 2.2/10 + 0.1
    assert "| 1 | 02-dpo | 11–20 |" in md
    assert "![training curves](report_plots/training_curves.png)" in md
    assert "rewards/accuracy" in md and "tokens_per_s" in md
    _png_ok(d / "report_plots" / "training_curves.png")
    assert stage_spans([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()[:-1]]) == [
        ("01-sft", 1, 10), ("02-dpo", 11, 20)]


def test_compare_report_mean_std_scatter_and_sweep(tmp_path):
    d = make_compare_dir(tmp_path / "cmp")
    out = write_report(d, out=tmp_path / "reports" / "cmp.md")
    md = out.read_text()
    s = summarize(json.loads((d / "table.json").read_text()))
    hb = s["hbat"]["rougeL"]
    assert hb["mean"] == pytest.approx(0.34) and hb["n"] == 3
    assert hb["std"] == pytest.approx(statistics.stdev([0.33, 0.34, 0.35]))
    assert s["sft+dpo"]["perplexity"]["std"] == pytest.approx(1.0)
    assert "| method | seeds | perplexity | reward_win_rate | rougeL |" in md
    assert "| hbat | 3 | 13.0000 ± 1.0000 | 0.6000 ± 0.0200 | 0.3400 ± 0.0100 |" in md
    assert "## reward_win_rate vs rougeL" in md
    _png_ok(tmp_path / "reports" / "cmp_plots" / "methods_scatter.png")
    _png_ok(tmp_path / "reports" / "cmp_plots" / "temperature_sweep.png")
    assert "![temperature_sweep](cmp_plots/temperature_sweep.png)" in md

    # configurable keys, and a clear error for a missing one
    write_report(d, out=tmp_path / "r2.md", x_key="perplexity", y_key="rougeL")
    assert "## rougeL vs perplexity" in (tmp_path / "r2.md").read_text()
    with pytest.raises(ValueError, match="'ifeval' is not in table.json"):
        write_report(d, out=tmp_path / "r3.md", x_key="ifeval")


def test_report_errors_and_eval_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run dir"):
        write_report(tmp_path)
    d = make_run_dir(tmp_path / "run")
    (d / "eval").mkdir()
    (d / "eval" / "results.json").write_text(json.dumps({"model": "m", "metrics": {"rouge": {"rougeL": 0.25}}}))
    md = write_report(d).read_text()
    assert "| `run/eval/results.json` | rouge/rougeL | 0.2500 |" in md or "| `eval/results.json` | rouge/rougeL | 0.2500 |" in md
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "table.json").write_text(json.dumps([{"seed": 0, "x": 1}]))
    with pytest.raises(ValueError, match=r"table.json: .*'method'"):
        write_report(bad)


def test_runs_overlay_report(tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from tandem.cli.main import app

    for name, slope in (("a", 1.0), ("b", -1.0)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"split": "train", "step": s, "chosen_logp": -10 + slope * s, "rejected_logp": -12.0} for s in (1, 2, 3)]
        (d / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cmp.md"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "a"), "--with", str(tmp_path / "b"), "--keys",
                                   "chosen_logp,rejected_logp,missing", "-o", str(out)])
    assert res.exit_code == 0, res.output
    md = out.read_text()
    assert "| a | -9.0000 → -7.0000 | -12.0000 → -12.0000 | - |" in md and "| b | -11.0000 → -13.0000 |" in md
    assert (tmp_path / "cmp_plots" / "runs_overlay.png").stat().st_size > 0


# ------------------------------------------------------------------------- reports a researcher reads at a glance


def hbat_rows(parts: int = 2, steps: int = 3) -> list[dict]:
    """Rows as the engine writes them: SFT and preference stages alternate, validation at each stage end."""
    rows, step = [], 0
    for i in range(2 * parts):
        sft = i % 2 == 0
        name = f"{i + 1:02d}-{'sft' if sft else 'pref'}-{i // 2 + 1}"
        for s in range(1, steps + 1):
            step += 1
            row = {"split": "train", "stage": name, "stage_index": i, "step": step, "stage_step": s, "epoch": 0,
                   "lr": 1e-4, "tokens": 100.0, "tokens_per_s": 1000.0 + step, "grad_norm": 1.0, "reg/penalty": 0.0}
            row.update({"loss": 5.0 - 0.1 * step, "nll": 5.0 - 0.1 * step, "n_tokens": 10.0} if sft else
                       {"loss": 0.69 - 0.01 * s, "rewards/accuracy": 0.5 + 0.1 * s, "rewards/margin": 0.01 * s,
                        "chosen_logp": -10.0 - s, "rejected_logp": -10.0 - 2 * s})
            rows.append(row)
        rows.append({"split": "val", "stage": name, "stage_index": i, "step": step, "sft/loss": 4.0 - 0.1 * i,
                     "preference/loss": 0.7 - 0.01 * i, "preference/rewards/accuracy": 0.5 + 0.05 * i})
    return rows


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the report functions save (inspected before they are closed)."""
    import tandem.io.figures as F
    import tandem.report.compare as C
    import tandem.report.plots as P

    seen = []
    real = F.save_figure

    def keep(fig, path, **kw):
        seen.append(fig)
        return real(fig, path, **kw)

    for mod in (F, C, P):
        monkeypatch.setattr(mod, "save_figure", keep)
    return seen


def test_each_objective_is_its_own_curve_with_its_validation():
    from tandem.report.plots import curves, default_tags, unit_of

    c = curves(hbat_rows())
    assert c["sft/loss"]["train"] == [(s, pytest.approx(5.0 - 0.1 * s)) for s in (1, 2, 3, 7, 8, 9)]
    assert [p[0] for p in c["preference/loss"]["train"]] == [4, 5, 6, 10, 11, 12]
    assert c["sft/loss"]["val"] == [(3, 4.0), (6, pytest.approx(3.9)), (9, pytest.approx(3.8)), (12, pytest.approx(3.7))]
    assert [p[0] for p in c["lr"]["train"]] == list(range(1, 13))  # run-level: one curve over every stage
    assert default_tags(c) == ["sft/loss", "preference/loss", "preference/rewards/accuracy",
                               "preference/rewards/margin", "lr", "grad_norm", "tokens_per_s"]  # zero penalty left out
    assert unit_of("sft/loss") == "NLL (nats / token)" and unit_of("preference/loss") == "loss (nats / pair)"
    assert unit_of("tokens_per_s") == "tokens / s" and unit_of("preference/rewards/accuracy") == "fraction of pairs"


def test_training_curves_figure_overlays_train_and_validation_with_units_and_stages(tmp_path, figures):
    from tandem.report.plots import plot_training_curves

    rows = hbat_rows()
    assert plot_training_curves(rows, tmp_path / "c.png").is_file()
    axes = [a for a in figures[0].axes if a.get_visible() and a.get_title()]
    by_title = {a.get_title(): a for a in axes}
    sft = by_title["SFT loss"]
    assert sft.get_ylabel() == "NLL (nats / token)" and sft.get_xlabel() == "optimizer step"
    lines = [ln for ln in sft.get_lines() if ln.get_linestyle() != "--" or ln.get_label() == "validation"]
    train = [ln for ln in lines if ln.get_color() == "tab:blue"]
    assert [list(ln.get_xdata()) for ln in train] == [[1, 2, 3], [7, 8, 9]]  # no line across preference stages
    val = [ln for ln in sft.get_lines() if ln.get_label() == "validation"]
    assert list(val[0].get_xdata()) == [3, 6, 9, 12]
    assert {t.get_text() for t in sft.get_legend().get_texts()} == {"train", "validation"}
    boundaries = [ln.get_xdata()[0] for ln in sft.get_lines() if ln.get_linestyle() == "--" and ln.get_label() != "validation"]
    assert boundaries == [3.5, 6.5, 9.5]
    top = [c for c in sft.child_axes]
    assert [t.get_text() for t in top[0].get_xticklabels()] == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    assert all(float(t).is_integer() for t in sft.get_xticks())
    assert by_title["Throughput"].get_ylabel() == "tokens / s"


def test_run_report_reads_role_losses_and_the_eval_temperature_sweep(tmp_path):
    d = tmp_path / "run"
    (d / "eval").mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hbat_rows()))
    rows = temperature_sweep(lambda t, s: {"rouge/rougeL": 0.3 - 0.1 * t}, [0.0, 0.5, 1.0], repeats=2)
    (d / "eval" / "temperature_sweep.json").write_text(json.dumps(rows))
    md = write_report(d).read_text()
    assert "| 0 | 01-sft-1 | 1–3 | 4.7000 | 4.0000 |" in md  # last val loss of an SFT stage is its sft/loss
    assert "| 1 | 02-pref-1 | 4–6 | 0.6600 | 0.6900 |" in md  # ... of a preference stage its preference/loss
    assert "## Temperature sweep (`eval/temperature_sweep.json`)" in md
    assert "![eval_temperature_sweep](report_plots/eval_temperature_sweep.png)" in md
    _png_ok(d / "report_plots" / "eval_temperature_sweep.png")


COMPARE_ROWS = [
    {"method": m, "seed": s, "run": f"cmp/{m}-s{s}", "steps": 8, "seconds": 12.0, "sft/loss": sl + 0.02 * s,
     "sft/n_tokens": 15.0, "preference/rewards/accuracy": acc + 0.02 * s, "preference/rewards/margin": 0.1,
     "preference/loss": 0.6, "perplexity/perplexity": 12.0 + s, "perplexity/n": 4}
    for m, (sl, acc) in {"sequential": (1.9, 0.70), "hbat": (1.75, 0.72)}.items() for s in range(3)]


def test_default_scatter_axes_are_instruction_following_and_preference_never_a_count():
    from tandem.report.compare import lower_is_better, pick_axes

    keys = sorted({k for r in COMPARE_ROWS for k in r if k not in ("method", "seed", "run")})
    # an evaluation metric beats a validation one on each side (held-out perplexity over the SFT validation loss);
    # with no preference evaluation metric the DPO validation accuracy stays
    assert pick_axes(keys) == ("perplexity/perplexity", "preference/rewards/accuracy")
    assert pick_axes([k for k in keys if not k.startswith("perplexity")]) == ("sft/loss", "preference/rewards/accuracy")
    assert pick_axes(keys + ["rouge/rougeL", "judge_win_rate/win_rate"]) == ("rouge/rougeL", "judge_win_rate/win_rate")
    assert pick_axes(["perplexity/n", "sft/n_tokens", "steps", "seconds", "score", "other"]) == ("score", "other")
    assert lower_is_better("sft/loss") and lower_is_better("perplexity/perplexity")
    assert not lower_is_better("preference/rewards/accuracy")


def test_compare_scatter_says_which_way_is_better(tmp_path, figures):
    from tandem.report.compare import plot_method_scatter

    plot_method_scatter(summarize(COMPARE_ROWS), "sft/loss", "preference/rewards/accuracy", tmp_path / "s.png")
    ax = figures[0].axes[0]
    assert "sft/loss" in ax.get_xlabel() and "lower is better" in ax.get_xlabel()
    assert "instruction following" in ax.get_xlabel() and "preference" in ax.get_ylabel()
    assert "higher is better" in ax.get_ylabel()
    assert ax.xaxis_inverted() and not ax.yaxis_inverted()  # better is to the right and up
    assert any(t.get_text() == "better" and t.arrow_patch is not None for t in ax.texts)
    assert {t.get_text() for t in ax.texts} >= {"sequential", "hbat"}


def test_console_table_fits_100_columns_and_names_what_it_left_out():
    from tandem.report import console_table

    wide = [{**r, "method": r["method"] + "-with-a-very-long-method-name", **{f"extra/metric_{i}": 0.5 for i in range(12)}}
            for r in COMPARE_ROWS]
    text = console_table(wide)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    assert lines[0].split()[:4] == ["method", "seeds", "ppl", "↓"]  # evaluation metrics first: the scatter's x
    assert "sft loss ↓" in lines[0]
    assert "pref acc ↑" in lines[0]
    assert lines[-1].startswith("+ ") and "more metrics in table.md / report.md" in lines[-1]
    short = console_table(COMPARE_ROWS).splitlines()
    hbat = next(ln for ln in short if ln.startswith("hbat"))
    assert hbat.split()[:4] == ["hbat", "3", "13.0±1", "0.740±0.02"]
    assert not short[-1].startswith("+ ")  # everything fitted
    assert "perplexity/n" not in "\n".join(short) and "seconds" not in "\n".join(short)


def test_pareto_plot_names_the_tax_and_draws_budget_pick_and_kinds(tmp_path, figures):
    from tandem.merging.pareto import pareto_front, pick_under_budget, plot_pareto

    sweep = [{"alpha": a, "reward": a, "tax": 0.3 * a * a, "kind": "global", "perplexity": 10.0} for a in (0, .5, 1)]
    group = [{"reward": 0.6, "tax": 0.05, "kind": "group"}, {"reward": 0.4, "tax": 0.2, "kind": "group"}]
    adaptive = [{"reward": 0.7, "tax": 0.08, "kind": "adaptive"}]
    pts = sweep + group + adaptive
    pick = pick_under_budget(pts, 0.1)
    for i, p in enumerate(pts):
        p["picked"] = i == pick
    plot_pareto(sweep, group + adaptive, pareto_front(pts), tmp_path / "p.png", budget=0.1)
    ax = figures[0].axes[0]
    assert "perplexity increase over θ₀" in ax.get_xlabel() and "lower is better" in ax.get_xlabel()
    assert "higher is better" in ax.get_ylabel()
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert labels >= {"tax budget (0.1)", "global α (Wise-FT sweep)", "per-group ratios (optuna)",
                      "adaptive ratios (learned)", "Pareto front", "picked (highest reward under budget)"}
    star = next(c for c in ax.collections if c.get_label().startswith("picked"))
    assert [tuple(x) for x in star.get_offsets()] == [(0.08, 0.7)]  # the adaptive point: best reward under 0.1
    assert any(ln.get_xdata()[0] == 0.1 and ln.get_linestyle() == ":" for ln in ax.get_lines())
    plot_pareto(sweep, group, [], tmp_path / "q.png", tax_metric="mc")
    assert "accuracy drop" in figures[1].axes[0].get_xlabel()


def test_scatter_labels_never_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tandem.report.compare import label_points

    fig, ax = plt.subplots()
    ax.plot([0.0, 0.0, 1.0], [0.0, 0.0, 1.0], "o")  # two methods at the same point
    label_points(fig, ax, [("sequential", 0.0, 0.0), ("hbat", 0.0, 0.0), ("orpo", 1.0, 1.0)])
    texts = ax.texts
    assert [t.get_text() for t in texts] == ["sequential", "hbat", "orpo"]
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)

"""Comparisons that read right at a glance: one seed shows no ±, evaluation metrics come first with the right arrows
(a budget is not "higher is better"), the scatter's default axes are evaluation metrics (instruction following vs
preference), its labels stay inside the axes clear of the points and of the "better" arrow, which sits inside."""

from __future__ import annotations

import json

import pytest

from tandem.pipelines.compare import table_markdown
from tandem.report import console_table, summarize
from tandem.report.compare import X_FAMILIES, Y_FAMILIES, direction, is_eval_metric, pick_axes, plot_method_scatter

ONE_SEED = [  # a comparison at one seed, as `tandem compare` writes table.json (base row first)
    {"method": "base", "seed": 0, "steps": 0, "seconds": 0.0, "exact_match/exact_match": 0.03,
     "reward_win_rate/win_rate": 0.5},
    *[{"method": m, "seed": 0, "steps": 12, "seconds": 70.0, "budget/sft": 48, "budget/preference": 48,
       "sft/loss": sl, "preference/rewards/accuracy": 1.0, "preference/loss": 0.2,
       "exact_match/exact_match": em, "reward_win_rate/win_rate": wr, "reward_win_rate/n": 32}
      for m, sl, em, wr in (("sequential", 2.25, 0.156, 0.66), ("hbat", 2.15, 0.188, 0.63))],
]


def test_each_side_of_the_scatter_names_metrics_tandem_eval_has():
    from tandem.evaluation.registry import METRIC_TABLE

    assert not set(X_FAMILIES) & set(Y_FAMILIES)
    assert set(X_FAMILIES) - {"instruction_following", "ifeval"} <= set(METRIC_TABLE) and set(Y_FAMILIES) <= set(METRIC_TABLE)


def test_one_seed_shows_no_plus_minus_anywhere():
    text = console_table(ONE_SEED)
    assert "±" not in text
    md = table_markdown(summarize(ONE_SEED))
    assert "±" not in md and "| hbat |" in md and "0.188" in md


def test_console_table_puts_evaluation_metrics_first_with_true_arrows():
    lines = console_table(ONE_SEED).splitlines()
    head = lines[0]
    # the scatter's two evaluation metrics lead, validation metrics follow, budgets last and neutral
    assert head.index("exact_match") < head.index("RM win") < head.index("sft loss") < head.index("budget")
    assert "RM win ↑" in head and "sft loss ↓" in head and "budget/sft" not in head or "sft ·" in head
    assert direction("budget/sft") == "·" and direction("steps") == "·"
    assert direction("sft/loss") == "↓" and direction("reward_win_rate/win_rate") == "↑"
    assert [ln.split()[0] for ln in lines[2:5]] == ["base", "sequential", "hbat"]


def test_default_axes_are_evaluation_metrics_not_a_constant_training_metric():
    keys = sorted({k for r in ONE_SEED for k in r if k not in ("method", "seed")})
    assert pick_axes(keys) == ("exact_match/exact_match", "reward_win_rate/win_rate")
    assert not is_eval_metric("preference/rewards/accuracy") and not is_eval_metric("budget/sft")
    assert not is_eval_metric("reward/accuracy") and is_eval_metric("reward/mean") and is_eval_metric("rouge/rougeL")
    # validation metrics only: the SFT loss and the DPO accuracy, as before
    assert pick_axes(["sft/loss", "preference/rewards/accuracy", "budget/sft"]) == ("sft/loss", "preference/rewards/accuracy")


@pytest.fixture
def figures(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    made = []
    real = pyplot.subplots

    def spy(*a, **kw):
        fig, ax = real(*a, **kw)
        made.append(fig)
        return fig, ax

    monkeypatch.setattr("tandem.report.compare.plt.subplots", spy)
    yield made
    for f in made:
        pyplot.close(f)


def test_scatter_one_seed_labels_and_arrow_inside_the_axes(tmp_path, figures):
    rows = [*ONE_SEED, *[{"method": f"m{i}", "seed": 0, "exact_match/exact_match": 0.17 + 0.001 * i,
                          "reward_win_rate/win_rate": 0.64 + 0.001 * i} for i in range(4)]]  # crowded
    x, y = pick_axes(sorted({k for r in rows for k in r if k not in ("method", "seed")}))
    assert plot_method_scatter(summarize(rows), x, y, tmp_path / "s.png") is not None
    fig = figures[0]
    ax = fig.axes[0]
    assert "one seed" in ax.get_title() and "±" not in ax.get_title()
    assert all(len(c.lines[2]) == 0 for c in ax.containers)  # no error bars at n = 1
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()  # the saved figure's canvas is closed; the same dpi, the same extents
    inside = ax.get_window_extent(r)
    arrow = next(t for t in ax.texts if t.get_text() == "better")
    assert all(0 <= v <= 1 for v in (*arrow.xy, *arrow.xyann))  # axes fraction: inside the axes
    labels = [t for t in ax.texts if t.get_text() != "better"]
    boxes = [t.get_window_extent(r) for t in labels] + [arrow.get_window_extent(r)]
    assert labels and all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
                          for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"base", "sequential", "hbat"} <= legend  # every point is named there too


def test_report_md_one_seed(tmp_path):
    from tandem.report import write_report

    d = tmp_path / "cmp"
    d.mkdir()
    (d / "table.json").write_text(json.dumps(ONE_SEED))
    md = write_report(d).read_text()
    assert "## Methods (one seed)" in md and "±" not in md.split("## Methods", 1)[1].split("##", 1)[0]

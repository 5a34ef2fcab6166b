"""The conflict benchmark's control arms: uniform and shuffled importance (damping without / with the wrong
importance) and the sequential order with as many restarts as hbat."""

import pytest

from tandem.regularizers.importance import importance
from tandem.schedules import get_method

AC = {"a": 1.0, "b": 2.0, "c": 10.0, "d": 0.5}


def test_uniform_importance_is_f_max_over_n():
    assert importance(AC, 4.0, "uniform") == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert importance({"x": 3.0}, 2.0, "uniform") == {"x": 2.0}


def test_shuffled_importance_permutes_the_zscore_values():
    z, s = importance(AC, 4.0, "zscore"), importance(AC, 4.0, "shuffled")
    assert sorted(s.values()) == pytest.approx(sorted(z.values()))  # the same spread ...
    assert s != z  # ... on other tensors
    assert importance(dict(reversed(list(AC.items()))), 4.0, "shuffled") == pytest.approx(s)  # fixed: by the names, not the order
    assert sum(s.values()) == pytest.approx(4.0)


def test_sequential_restarts_orders_sft_parts_before_preference_parts():
    stages = get_method("sequential-restarts").schedule(2)
    assert [(s.role, s.part) for s in stages] == [("sft", 0), ("sft", 1), ("preference", 0), ("preference", 1)]
    assert len(stages) == len(get_method("hbat").schedule(2))  # as many optimizer restarts as hbat
    assert get_method("sequential-restarts").regularizer is None


def test_frontier_interpolation_by_hand():
    from tandem.pipelines.frontier import interpolate

    pts = [(0.0, 0.9), (0.5, 0.6), (1.0, 0.1)]  # (style rate, pass rate)
    assert interpolate(pts, 0.25) == pytest.approx(0.75)
    assert interpolate(pts, 0.75) == pytest.approx(0.35)
    assert interpolate(pts, 0.5) == pytest.approx(0.6)
    assert interpolate(pts, 1.2) is None and interpolate([], 0.5) is None  # outside the frontier: not measured
    assert interpolate([(0.2, 0.4), (0.2, 0.6), (0.6, 0.0)], 0.4) == pytest.approx(0.25)  # equal styles averaged


def test_pass_at_style_reads_the_pareto_front_by_hand():
    """Seed 0 of the pilot (style, pass): final, three early stops, two Wise-FT merges. The early stop at 0.5
    (0.498, 0.315) is beaten on both rates by Wise-FT 0.75 (0.680, 0.385), so at style 0.5 the frontier runs from
    (0.023, 0.568) to (0.680, 0.385): 0.568 + (0.5 - 0.023) / 0.657 * (0.385 - 0.568) = 0.4351."""
    from tandem.pipelines.frontier import pass_at_style

    pts = [(0.986, 0.258), (0.012, 0.494), (0.498, 0.315), (0.906, 0.326), (0.023, 0.568), (0.680, 0.385)]
    assert pass_at_style(pts, 0.5) == pytest.approx(0.568 + (0.5 - 0.023) / 0.657 * (0.385 - 0.568))
    assert pass_at_style(pts, 0.0) == pytest.approx(0.568)  # below the front: its lowest-style point reaches it
    assert pass_at_style(pts, 0.95) == pytest.approx(0.326 + (0.95 - 0.906) / 0.080 * (0.258 - 0.326))
    assert pass_at_style(pts, 0.99) is None and pass_at_style([], 0.5) is None  # no point reaches that style


def test_frontier_block_is_checked():
    from tandem.pipelines.frontier import check_frontier

    assert check_frontier(None, "f") == {}
    with pytest.raises(ValueError, match="early_stop needs exactly"):
        check_frontier({"early_stop": {"arm": "sequential", "at": [1.5]}}, "f")
    assert check_frontier({"early_stop": {"arm": "sequential", "at": [0, 0.5]}}, "f")  # 0: the stage's start
    with pytest.raises(ValueError, match=r"alphas a list of numbers in \(0, 1\)"):
        check_frontier({"wise_ft": {"toward": "sft-only", "alphas": [0]}}, "f")  # alpha 0 is the toward arm itself
    with pytest.raises(ValueError, match="takes early_stop"):
        check_frontier({"wise": {}}, "f")
    with pytest.raises(ValueError, match="style_at"):
        check_frontier({"style_at": 2}, "f")


def test_an_early_stop_at_0_is_not_on_the_arm_s_curve():
    """By hand: the run's own SFT model (style 0, pass 0.8) would lift the curve at style 0.5 from 0.6 to 0.633; it is
    left out, as every Wise-FT curve lacks its alpha-0 end."""
    from tandem.pipelines.frontier import arm_curve, pass_at_style

    row = {"conflict/style_rate": 0.9, "conflict/pass_rate": 0.5}
    at0, half = {"conflict/style_rate": 0.0, "conflict/pass_rate": 0.8}, {"conflict/style_rate": 0.6, "conflict/pass_rate": 0.6}
    curve = arm_curve(row, [(0, at0), (0.5, half)])
    assert curve == [(0.9, 0.5), (0.6, 0.6)]
    assert pass_at_style(curve, 0.5) == 0.6
    assert pass_at_style(curve + [(0.0, 0.8)], 0.5) == pytest.approx(0.8 - 0.2 * 0.5 / 0.6)  # what including it would give

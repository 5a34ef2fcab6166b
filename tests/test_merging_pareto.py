import pytest

from tandem.merging.pareto import pareto_front, pick_under_budget, plot_pareto

POINTS = [(1.0, 0.5), (2.0, 0.5), (2.0, 0.3), (0.5, 0.1), (3.0, 0.9), (2.5, 0.9), (0.5, 0.1), (1.5, 0.2)]


def test_pareto_front_fixed_points():
    # 0 dominated by 1, 1 by 2, 5 by 4; 3 and 6 are duplicates and both kept
    assert pareto_front(POINTS) == [2, 3, 4, 6, 7]
    assert pareto_front(POINTS, maximize=(True, True)) == [4]
    assert pareto_front(POINTS, maximize=(False, False)) == [3, 6]
    dicts = [{"reward": r, "tax": t} for r, t in POINTS]
    assert pareto_front(dicts) == [2, 3, 4, 6, 7]
    assert pareto_front([]) == []


def test_pick_under_budget():
    assert pick_under_budget(POINTS, 0.3) == 2
    assert pick_under_budget(POINTS, 0.25) == 7
    assert pick_under_budget(POINTS, 1.0) == 4
    assert pick_under_budget(POINTS, 0.05) is None
    assert pick_under_budget([(1.0, 0.2), (1.0, 0.1), (1.0, 0.1)], 1.0) == 1  # tie: lower tax, then lower index


def test_plot_pareto(tmp_path):
    sweep = [{"alpha": a, "reward": a, "tax": a * a} for a in (0.0, 0.5, 1.0)]
    groups = [{"alphas": [0.2, 0.9], "reward": 0.6, "tax": 0.2}, {"alphas": [0.9, 0.2], "reward": 0.4, "tax": 0.3}]
    allp = sweep + groups
    front = pareto_front(allp)
    assert front == [0, 2, 3]
    out = plot_pareto(sweep, groups, front, tmp_path / "p" / "front.png")
    assert out.exists() and out.stat().st_size > 5000
    assert out.read_bytes()[:4] == b"\x89PNG"

"""benchmarks/study_table.py: the chosen columns of a study's table.json, mean ± std over seeds, rows in order."""

from __future__ import annotations


from helpers_bench import load_benchmark


def load():
    return load_benchmark("study_table")


def test_mean_and_sample_std_per_method_in_first_seen_order():
    rows = [{"method": "base", "seed": 0, "a": 1.0},
            {"method": "hbat", "seed": 0, "a": 0.2, "b": 3.0}, {"method": "hbat", "seed": 1, "a": 0.4, "b": 5.0}]
    md = load().table(rows, [("a", "A"), ("b", "B")], digits=2).splitlines()
    assert md[0] == "| method | seeds | A | B |"
    assert md[2] == "| base | 0 | 1.00 | - |"
    assert md[3] == "| hbat | 0,1 | 0.30 ± 0.14 | 4.00 ± 1.41 |"  # std of (0.2, 0.4) = 0.1414

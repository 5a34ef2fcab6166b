"""benchmarks/study_table.py: the chosen columns of a study's table.json, mean ± std over seeds, rows in order."""

from __future__ import annotations

import json

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


def test_tables_merge_one_row_per_method_and_seed_later_wins(tmp_path):
    mod = load()
    first = [{"method": "hbat", "seed": 0, "a": 1.0}, {"method": "seq", "seed": 0, "a": 2.0}]
    later = [{"method": "hbat", "seed": 0, "a": 3.0}, {"method": "hbat", "seed": 1, "a": 5.0}]
    rows = mod.merged([first, later])
    assert [(r["method"], r["seed"], r["a"]) for r in rows] == [("hbat", 0, 3.0), ("seq", 0, 2.0), ("hbat", 1, 5.0)]
    (tmp_path / "table.json").write_text(json.dumps(first))
    assert mod.read_table(tmp_path) == first == mod.read_table(tmp_path / "table.json")
    assert mod.table(rows, [("a", "A")], digits=1).splitlines()[2] == "| hbat | 0,1 | 4.0 ± 1.4 |"

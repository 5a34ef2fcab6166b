"""benchmarks/reward_heldout.py: a reward model's held-out ranking accuracy, split by which reply is longer."""

from __future__ import annotations

import json

import pytest


from helpers_bench import load_benchmark


def load():
    return load_benchmark("reward_heldout")


def test_summary_by_hand():
    # rewards right on pairs 0, 1, 3; chosen longer on 0, 2; shorter on 1, 3; pair 4 equal length
    s = load().summarise([0.5, 0.2, -0.1, 1.0, -0.3], [3, -2, 4, -1, 0])
    assert s["pairs"] == 5 and s["accuracy"] == pytest.approx(0.6)
    assert s["se"] == pytest.approx((0.6 * 0.4 / 5) ** 0.5)
    assert (s["chosen_longer"], s["acc_chosen_longer"]) == (2, 0.5)  # right on 0, wrong on 2
    assert (s["chosen_shorter"], s["acc_chosen_shorter"]) == (2, 1.0)
    assert s["longer_wins"] == pytest.approx(0.4)
    # Pearson correlation of the reward and length differences, computed here independently
    d, l = [0.5, 0.2, -0.1, 1.0, -0.3], [3, -2, 4, -1, 0]
    md, ml = sum(d) / 5, sum(l) / 5
    num = sum((a - md) * (b - ml) for a, b in zip(d, l))
    assert s["corr_reward_length"] == pytest.approx(num / (sum((a - md) ** 2 for a in d) * sum((b - ml) ** 2 for b in l)) ** 0.5)
    assert s["corr_reward_length"] < 0


def test_scores_a_model_end_to_end(tmp_path, tiny_model_dir, synthetic_files):
    rows = load().main(["--model", f"tiny={tiny_model_dir}", "--pairs", str(synthetic_files["preference"]),
                        "--max-length", "64", "--out", str(tmp_path)])
    (row,) = rows
    assert row["pairs"] + row["dropped"] == 48
    assert row["chosen_longer"] + row["chosen_shorter"] <= row["pairs"]
    assert 0.0 <= row["accuracy"] <= 1.0
    assert json.loads((tmp_path / "table.json").read_text())["rows"][0]["model"] == "tiny"
    assert "| tiny | " in (tmp_path / "table.md").read_text()

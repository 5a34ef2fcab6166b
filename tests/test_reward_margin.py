"""Reward models with a per-pair ``margin`` column (Llama 2 style, as TRL's RewardTrainer): the loss by hand, the
column read (JSON numbers, CSV text, a column map), encoded, collated and trained on; a bad margin is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from helpers_entry import train
from helpers_objectives import tiny_reward_model
from helpers_recipe import base_raw, with_overrides

from tandem.data import synthetic
from tandem.data.collate import collate
from tandem.data.encode import encode_all
from tandem.data.errors import DataError
from tandem.data.formats import load_examples
from tandem.objectives.reward import Reward, bradley_terry_loss, sequence_rewards


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_margin_loss_by_hand():
    rc, rr, m = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.5, -1.0])
    want = (-math.log(sig(2.0 - 1.0 - 0.5)) - math.log(sig(0.0 - 1.0 + 1.0))) / 2
    assert float(bradley_terry_loss(rc, rr, margin=m)) == pytest.approx(want)
    assert float(bradley_terry_loss(rc, rr, margin=torch.zeros(2))) == pytest.approx(float(bradley_terry_loss(rc, rr)))


ROWS = [{"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6", "margin": 2.0},
        {"prompt": "Say hi.", "chosen": "hi", "rejected": "bye", "margin": 0.5}]


def test_the_margin_column_is_read_from_json_csv_and_a_column_map(tmp_path):
    ex, _ = load_examples(str(write_jsonl(tmp_path / "p.jsonl", ROWS)), role="preference")
    assert [e.margin for e in ex] == [2.0, 0.5]
    p = tmp_path / "p.csv"
    p.write_text("prompt,chosen,rejected,margin\nq,a,b,1.5\nq2,a,b,\n")
    ex, _ = load_examples(str(p), role="preference")
    assert [e.margin for e in ex] == [1.5, None]  # an empty cell: no margin
    renamed = [{**{k: v for k, v in r.items() if k != "margin"}, "gap": r["margin"]} for r in ROWS]
    ex, _ = load_examples(str(write_jsonl(tmp_path / "g.jsonl", renamed)), role="preference", columns={"margin": "gap"})
    assert [e.margin for e in ex] == [2.0, 0.5]


def test_a_bad_margin_is_one_line_naming_the_row(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {**ROWS[1], "margin": "large"}])
    with pytest.raises(DataError) as e:
        load_examples(str(p), role="preference")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: row 2: field 'margin' must be a number, got 'large'")


def test_margin_is_encoded_and_collated_and_missing_ones_count_zero(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex, _ = load_examples(str(write_jsonl(tmp_path / "p.jsonl", ROWS)), role="preference")
    plain, _ = load_examples(str(write_jsonl(tmp_path / "q.jsonl", [{k: v for k, v in ROWS[0].items() if k != "margin"}])),
                             role="preference")
    feats, _ = encode_all(tok, ex + plain, 64)
    assert [f.get("margin") for f in feats] == [2.0, 0.5, None]
    for kw in ({"mode": "pack"}, {"mode": "pad"}, {"mode": "pack", "prefix_sharing": True}):
        assert collate(feats, pad_id=0, **kw)["margin"].tolist() == [2.0, 0.5, 0.0]
    assert "margin" not in collate(feats[2:], pad_id=0)


def test_the_reward_objective_subtracts_the_margin():
    model = tiny_reward_model()
    feats = [{"chosen_input_ids": [1, 5, 6, 2], "chosen_labels": [-100, -100, 6, 2],
              "rejected_input_ids": [1, 5, 7, 8, 2], "rejected_labels": [-100, -100, 7, 8, 2], "margin": m}
             for m in (3.0, -0.5)]
    batch = collate(feats)
    with torch.no_grad():
        r = sequence_rewards(model, batch, 4)
        loss, _ = Reward()(model, batch)
    want = -torch.nn.functional.logsigmoid(r[:2] - r[2:] - torch.tensor([3.0, -0.5])).mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert float(loss) != pytest.approx(float(Reward()(model, collate([{k: v for k, v in f.items() if k != "margin"}
                                                                       for f in feats]))[0]), rel=1e-3)


def test_a_reward_model_trains_on_pairs_with_margins(tmp_path, tiny_model_dir, synthetic_files, one_thread):
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "margin": float(i % 3)}
            for i, p in enumerate(synthetic.preference_pairs(24, 5))]
    data = write_jsonl(tmp_path / "margin.jsonl", rows)
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "reward"),
                       {"data.preference": {"source": str(data)}, "schedule.max_steps_per_stage": 2})
    train(r)
    tr = [json.loads(x) for x in (Path(r.output_dir) / "metrics.jsonl").read_text().splitlines()]
    tr = [x for x in tr if x["split"] == "train"]
    assert len(tr) == 2 and all(math.isfinite(x["loss"]) for x in tr)

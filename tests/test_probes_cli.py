"""``tandem probe entanglement`` end to end on the tiny saved model and a small JSONL of pairs."""

from __future__ import annotations

import json

from conftest import write_jsonl
from typer.testing import CliRunner

from tandem.cli.main import app

PAIRS = [
    {"prompt": "What is 23 + 45?", "chosen": "The answer is 68.", "rejected": "The answer is 67."},
    {"prompt": "Capitalise river.", "chosen": "RIVER", "rejected": "river"},
    {"prompt": "Letter after g?", "chosen": "h", "rejected": "The letter is i."},
]


def test_probe_entanglement_writes_every_file(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "probe"
    res = CliRunner().invoke(app, ["probe", "entanglement", "--model", str(tiny_model_dir), "--data", str(data),
                                   "--pairs", "2", "--out", str(out), "--heatmap-pairs", "1", "--heatmap-tokens", "6",
                                   "--params", r"layers\.1\."])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"dot", "norm_w", "norm_l", "cosine", "chosen_falls", "rejected_rises"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 2 and summary["settings"]["params"] == r"layers\.1\."
    assert summary["heatmaps"] == ["token_heatmap_0.png"]
    assert "| frac_chosen_falls |" in (out / "summary.md").read_text()
    for png in ("cosine_hist.png", "token_heatmap_0.png"):
        assert (out / png).stat().st_size > 1000


def test_probe_entanglement_errors_name_the_option(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    res = CliRunner().invoke(app, ["probe", "entanglement", "--model", str(tiny_model_dir), "--data", str(data),
                                   "--params", "lora", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--params" in res.output
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "response": "hello"}])
    res = CliRunner().invoke(app, ["probe", "entanglement", "--model", str(tiny_model_dir), "--data", str(sft)])
    assert res.exit_code == 2 and "no preference pairs" in " ".join(res.output.split())


def test_probe_entanglement_on_a_lora_run_dir(tmp_path, tiny_model_dir):
    from tandem.models import apply_lora, load_policy

    model, tok = load_policy(str(tiny_model_dir), dtype="float32")
    model = apply_lora(model, r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "probe"
    res = CliRunner().invoke(app, ["probe", "entanglement", "--model", str(run), "--data", str(data), "--pairs", "1",
                                   "--params", "lora", "--heatmap-pairs", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["n_tensors"] == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert summary["mean_norm_w"] > 0 and summary["heatmaps"] == []

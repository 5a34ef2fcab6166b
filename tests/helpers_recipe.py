"""Recipes for end-to-end tests on the tiny model: a base recipe dict plus dotted overrides."""

from __future__ import annotations

from tandem.config.recipe import parse_recipe


def base_raw(tmp_path, model_dir, files, method: str = "sft") -> dict:
    return {
        "name": "t",
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "precision": "fp32",
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "data": {
            "sft": {"source": str(files["sft"])},
            "preference": {"source": str(files["preference"])},
            "max_length": 64,
            "val_size": 8,
        },
        "batching": {"mode": "pack", "batch_size": 4},
        "optimizer": {"lr": 1e-3, "scheduler": "linear"},
        "schedule": {"method": method, "epochs": 1, "max_steps_per_stage": 6},
        "objectives": {"sft": {"name": "sft"}, "preference": {"name": "dpo", "beta": 0.1}, "reward": {"name": "reward"}},
        "checkpoint": {"every": 2, "keep": 2},
        "logging": {"progress": False},
    }


def with_overrides(raw: dict, over: dict):
    """``parse_recipe`` of ``raw`` with ``{"a.b.c": value}`` overrides applied."""
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return parse_recipe(raw)


def unpaired_copy(pairs_file, out_dir) -> str:
    """KTO's unpaired rows made from a JSONL file of prompt/chosen/rejected pairs (each pair gives a desirable and an
    undesirable completion), written once under ``out_dir``; returns its path."""
    import json
    from pathlib import Path

    out = Path(out_dir) / "unpaired.jsonl"
    if not out.exists():
        rows = []
        for line in Path(pairs_file).read_text().splitlines():
            p = json.loads(line)
            rows += [{"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                     {"prompt": p["prompt"], "completion": p["rejected"], "label": False}]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(out)

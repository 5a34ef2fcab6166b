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

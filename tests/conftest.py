"""Shared fixtures: a tiny random Llama with a real (small) tokenizer, saved like a Hub model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    from helpers_evaluation import tiny_config
    from helpers_tokenizer import make_tokenizer
    from transformers import LlamaForCausalLM

    tok = make_tokenizer(chat_template=True)
    cfg = tiny_config(tok, max_position_embeddings=512)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models: more threads only add synchronisation on busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory) -> dict[str, Path]:
    from tandem.data import synthetic

    d = tmp_path_factory.mktemp("synthetic-data")
    return {
        "sft": write_jsonl(d / "sft.jsonl", synthetic.to_records(synthetic.instruction_tasks(48, 0))),
        "preference": write_jsonl(d / "pref.jsonl", synthetic.to_records(synthetic.preference_pairs(48, 1))),
    }

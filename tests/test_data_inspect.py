"""tandem.data.inspect: summary of a source."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tokenizer import make_tokenizer
from rich.console import Console

from tandem.data.inspect import inspect_source, percentiles, render_inspection

FIX = Path(__file__).parent / "fixtures"


def test_percentiles_hand_computed():
    p = percentiles(list(range(1, 101)))
    assert p == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100.0})
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}


def test_inspect_words_without_tokenizer():
    r = inspect_source(str(FIX / "data_hh.jsonl"))
    assert r["format"] == "hh_rlhf" and r["kind"] == "preference"
    assert (r["rows"], r["kept"]) == (4, 2) and r["skipped"] == {"prompt_mismatch": 1, "identical": 1}
    assert r["length_unit"] == "whitespace words"
    # prompts: "How do I bake bread?" + "Do you have yeast?" + "Yes." = 10 words; "Tell a joke." = 3 words
    assert r["lengths"]["prompt"]["max"] == 10.0 and r["lengths"]["prompt"]["p50"] == 6.5
    assert r["lengths"]["chosen"]["max"] == 7.0  # "Why did the chicken cross the road?"
    assert r["sample"]["chosen"] == "Mix flour, water and yeast, then bake."


def test_inspect_with_tokenizer_and_render():
    tok = make_tokenizer(chat_template=True)
    r = inspect_source(str(FIX / "data_alpaca.json"), tokenizer=tok)
    assert r["format"] == "alpaca" and r["kind"] == "sft" and r["length_unit"] == "tokens"
    hello = len(tok("Hello!", add_special_tokens=False)["input_ids"])
    assert r["lengths"]["response"]["max"] >= hello > 0
    console = Console(record=True, width=120)
    console.print(render_inspection(r))
    text = console.export_text()
    for s in ("alpaca", "rows", "kept", "p50", "tokens", "[user] Give a synonym.", "[user]"):
        assert s in text


def test_inspect_declared_format():
    with pytest.raises(Exception, match="needs field"):
        inspect_source(str(FIX / "data_alpaca.json"), format="tldr")

"""The TL;DR summarisation recipe pair (recipes/summarization-*.yaml): each loads, builds its data on a few rows with
the tiny tokenizer in the summarize-from-feedback prompt format, keeps eval posts apart from training posts, and the
hbat recipe takes OpenAI's comparison records unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_tokenizer import make_tokenizer

from tandem.config.recipe import load_recipe
from tandem.data import DataFileNotFound, encode_all, load_examples
from tandem.data.encode import IGNORE
from tandem.evaluation.judge import SUMMARY_TEMPLATE, JudgeConfig

ROOT = Path(__file__).resolve().parents[1]
SFT, HBAT = ROOT / "recipes" / "summarization-sft.yaml", ROOT / "recipes" / "summarization-hbat.yaml"
pytestmark = pytest.mark.skipif(not (ROOT.parent / "shared/data/tldr/dove_tldr_test_500.jsonl.gz").exists(),
                                reason="needs ../shared/data/tldr")


def _load(src, role, limit=None):
    return load_examples(src.source, format=src.format, split=src.split, limit=limit or src.limit, role=role,
                         columns=src.columns, streaming=src.streaming, skip=src.skip)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(chat_template=True)


@pytest.mark.parametrize("path", [SFT, HBAT], ids=lambda p: p.name)
def test_recipe_builds_sft_data_in_the_tldr_prompt_format(monkeypatch, tok, path):
    monkeypatch.chdir(ROOT)
    r = load_recipe(path)
    ex, rep = _load(r.data.sft, "sft", limit=3)
    assert rep.format == "tldr" and len(ex) == 3
    text = ex[0].prompt[0]["content"]
    assert ex[0].prompt[0]["role"] == "user" and text.startswith("SUBREDDIT: r/") and text.endswith("\nTL;DR:")
    assert "\nTITLE: " in text and "\nPOST: " in text and ex[0].response == ex[0].response.strip()
    feats, stats = encode_all(tok, ex, r.data.max_length, r.data.overlong, loss_on=r.data.sft.loss_on)
    assert stats.kept == 3
    labelled = [i for i, lab in zip(feats[0]["input_ids"], feats[0]["labels"]) if lab != IGNORE]
    assert tok.decode(labelled) == ex[0].response + tok.eos_token


@pytest.mark.parametrize("path", [SFT, HBAT], ids=lambda p: p.name)
def test_eval_posts_are_not_training_posts_and_the_judge_is_the_summary_one(monkeypatch, path):
    monkeypatch.chdir(ROOT)
    r = load_recipe(path)
    train, _ = _load(r.data.sft, "sft")
    held, _ = _load(r.eval.data, None)
    assert len(train) == 400 and len(held) == r.eval.data.limit
    assert not {e.meta["instruction_id"] for e in train} & {e.meta["instruction_id"] for e in held}
    assert "rouge" in r.eval.metrics
    assert JudgeConfig(**r.eval.judge.model_dump()).template_text() == SUMMARY_TEMPLATE
    with_bart = load_recipe(path, ["eval.bartscore_model=facebook/bart-large-cnn", "eval.metrics=[rouge,bartscore]"])
    assert with_bart.eval.metrics == ["rouge", "bartscore"]


def _openai_comparison(i: int, choice: int) -> dict:
    """A record shaped like summarize-from-feedback's comparisons/batch*.json lines (and the Hub copy)."""
    return {"info": {"id": f"t3_{i}", "post": f"We had a fight about the dishes, day {i}.", "title": "My roommate and I",
                     "subreddit": "relationships", "site": None, "article": None},
            "summaries": [{"text": " we argued about dishes", "policy": "sup1", "note": None},
                          {"text": " roommate bad", "policy": "ref", "note": None}],
            "choice": choice, "worker": "w1", "batch": "batch3", "split": "train", "extra": {"confidence": 8}}


def test_hbat_recipe_runs_on_comparison_data_unchanged(monkeypatch, tmp_path, tok):
    monkeypatch.chdir(ROOT)
    r = load_recipe(HBAT)
    assert r.schedule.method == "hbat" and r.data.preference.format == "tldr_comparison"
    if not Path(r.data.preference.source).exists():  # the comparisons are not in ../shared/data: a clear error
        with pytest.raises(DataFileNotFound, match=f"data file not found: {r.data.preference.source}"):
            _load(r.data.preference, "preference")
    rows = [_openai_comparison(i, i % 2) for i in range(4)]
    rows.append({**_openai_comparison(9, 0), "info": {"article": "CNN text", "title": "News", "post": None,
                                                       "subreddit": None, "site": "cnn"}})
    data = tmp_path / "comparisons.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = load_recipe(HBAT, [f"data.preference.source={data}"])
    ex, rep = _load(r.data.preference, "preference")
    assert rep.skipped == {"not_a_post": 1} and len(ex) == 4
    assert (ex[0].chosen, ex[0].rejected) == ("we argued about dishes", "roommate bad")
    assert (ex[1].chosen, ex[1].rejected) == ("roommate bad", "we argued about dishes")
    assert ex[0].prompt[0]["content"].startswith("SUBREDDIT: r/relationships\nTITLE: My roommate and I\nPOST: We had")
    feats, stats = encode_all(tok, ex, r.data.max_length, r.data.overlong)
    assert stats.kept == 4 and {"chosen_input_ids", "rejected_input_ids"} <= set(feats[0])

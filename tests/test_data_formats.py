"""Readers and format detection/conversion (tandem.data.readers, tandem.data.formats)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tandem.data import DataError, PreferenceExample, SFTExample, detect_format, load_examples, read_records
from tandem.data.formats import parse_hh_transcript

FIX = Path(__file__).parent / "fixtures"
SHARED = Path("/work/shared/data")


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------------- readers


def test_jsonl_gz_and_json_variants_read_the_same_records(tmp_path):
    recs = [{"prompt": "x", "response": "y"}, {"prompt": "é🙂", "response": "z"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    (tmp_path / "a.jsonl").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    (tmp_path / "lines.json").write_text(text, encoding="utf-8")  # JSON Lines despite the name
    (tmp_path / "array.json").write_text(json.dumps(recs), encoding="utf-8")
    for name in ("a.jsonl", "a.jsonl.gz", "lines.json", "array.json"):
        assert read_records(str(tmp_path / name)) == recs, name


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"instruction": "i1", "input": "", "output": "o1"}, {"instruction": "i2", "input": "x", "output": "o2"}]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet")
    assert read_records(str(tmp_path / "d.parquet")) == recs
    ex, rep = load_examples(str(tmp_path / "d.parquet"))
    assert rep.format == "alpaca" and ex[1].prompt == [u("i2\n\nx")]


def test_malformed_line_names_file_and_line():
    path = FIX / "data_malformed.jsonl"
    with pytest.raises(DataError, match=r"data_malformed\.jsonl:3: malformed JSON"):
        read_records(str(path))
    assert issubclass(DataError, ValueError)


def test_malformed_json_array_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"a": 1},\n {"a": 2,,}\n]')
    with pytest.raises(DataError, match=r"bad\.json:3"):
        read_records(str(p))


def test_record_that_is_not_an_object():
    with pytest.raises(DataError, match=r"data_not_object\.jsonl:2: expected a JSON object.*list"):
        read_records(str(FIX / "data_not_object.jsonl"))


def test_missing_local_file_is_file_not_found():
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records("/tmp/definitely/nope.jsonl")


# ----------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "record, name",
    [
        ({"prompt": "p", "response": "r"}, "prompt_response"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        ({"messages": [u("q"), a("r")]}, "messages"),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: c", "rejected": "\n\nHuman: q\n\nAssistant: r"}, "hh_rlhf"),
        ({"subreddit": "s", "title": "t", "instruction": "p", "gold_response": "g"}, "tldr"),
        ({"subreddit": "s", "title": "t", "post": "p", "summary": "g"}, "tldr"),
        ({"subreddit": "s", "title": "t", "post": "p", "summaries": ["a", "b"], "choice": 0}, "tldr_comparison"),
        ({"info": {"post": "p"}, "summary_0": "a", "summary_1": "b", "choice": 1}, "tldr_comparison"),
    ],
)
def test_detect_format(record, name):
    assert detect_format(record) == name


def test_unknown_schema_lists_keys_and_formats(tmp_path):
    with pytest.raises(DataError) as e:
        detect_format({"question": "q", "answer": "a"})
    msg = str(e.value)
    assert "['answer', 'question']" in msg
    for name in ("prompt_response", "alpaca", "messages", "preference", "hh_rlhf", "tldr", "tldr_comparison"):
        assert name in msg
    p = tmp_path / "odd.jsonl"
    p.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"odd\.jsonl: row 1: unknown record schema"):
        load_examples(str(p))


def test_declared_format_overrides_detection_and_missing_field_is_named(tmp_path):
    p = tmp_path / "d.jsonl"
    # detection would say "tldr"; declared alpaca uses instruction/output
    p.write_text(json.dumps({"subreddit": "s", "title": "t", "instruction": "Do it.", "summary": "s", "output": "Done."}) + "\n")
    ex, rep = load_examples(str(p), format="alpaca")
    assert rep.format == "alpaca" and ex == [SFTExample([u("Do it.")], "Done.")]
    with pytest.raises(DataError, match=r"d\.jsonl: row 1: format 'messages' needs field 'messages'"):
        load_examples(str(p), format="messages")
    with pytest.raises(DataError, match="unknown format 'chatml'"):
        load_examples(str(p), format="chatml")


# ---------------------------------------------------------------------------------------- conversion


def test_prompt_response():
    ex, rep = load_examples(str(FIX / "data_prompt_response.jsonl"))
    assert rep.format == "prompt_response" and (rep.rows, rep.kept, rep.skipped) == (2, 2, {})
    assert ex == [SFTExample([u("What is 2 + 2?")], "4"), SFTExample([u("Name a colour.")], "Blue.")]
    assert ex[0].meta["answer"] == "4" and ex[0].meta["row"] == 1


def test_alpaca_input_appended_with_blank_line():
    ex, rep = load_examples(str(FIX / "data_alpaca.json"))
    assert rep.format == "alpaca"
    assert [e.prompt for e in ex] == [[u("Give a synonym.\n\nhappy")], [u("Say hello.")], [u("Count to three.")]]
    assert [e.response for e in ex] == ["Glad.", "Hello!", "1, 2, 3"]


def test_messages_last_assistant_turn_is_response():
    ex, rep = load_examples(str(FIX / "data_messages.jsonl"))
    assert rep.format == "messages" and rep.rows == 3 and rep.kept == 2
    assert rep.skipped == {"no_assistant_turn": 1}
    assert ex[0].prompt == [{"role": "system", "content": "Be brief."}, u("Hi"), a("Hello."), u("How are you?")]
    assert ex[0].response == "Fine, thanks."
    assert ex[1] == SFTExample([u("Q")], "A")  # turns after the last assistant turn are dropped


def test_preference_prompt_string_or_messages():
    ex, rep = load_examples(str(FIX / "data_preference.jsonl"))
    assert rep.format == "preference" and (rep.rows, rep.kept) == (3, 2) and rep.skipped == {"identical": 1}
    assert ex[0] == PreferenceExample([u("Pick a number.")], "Seven.", "No.")
    assert ex[1] == PreferenceExample([{"role": "system", "content": "Be kind."}, u("Hello?")], "Hi there!", "What.")


def test_hh_rlhf_split_skips_and_counts():
    ex, rep = load_examples(str(FIX / "data_hh.jsonl"))
    assert rep.format == "hh_rlhf"
    assert (rep.rows, rep.kept) == (4, 2)
    assert rep.skipped == {"prompt_mismatch": 1, "identical": 1}
    assert ex[0] == PreferenceExample(
        [u("How do I bake bread?"), a("Do you have yeast?"), u("Yes.")],
        "Mix flour, water and yeast, then bake.",
        "Buy some bread.",
    )
    # the shared prompt is cut from chosen; a rejected response with its own "\n\nAssistant:" stays whole
    assert ex[1] == PreferenceExample([u("Tell a joke.")], "Why did the chicken cross the road?", "No.\n\nAssistant: Fine, knock knock.")


def test_parse_hh_transcript_merges_repeated_roles():
    t = "\n\nHuman: a\n\nHuman: b\n\nAssistant: c\n\nHuman: d\n\nAssistant:"
    assert parse_hh_transcript(t) == [u("a\n\nb"), a("c"), u("d")]


def test_preference_with_hh_prompt_string():
    rec = {"prompt": "\n\nHuman: Hi\n\nAssistant: Yo\n\nHuman: Bye\n\nAssistant:", "chosen": " Goodbye!", "rejected": " No."}
    from tandem.data.formats import convert

    assert convert(rec, "preference") == PreferenceExample([u("Hi"), a("Yo"), u("Bye")], "Goodbye!", "No.")


def test_tldr_posts():
    ex, rep = load_examples(str(FIX / "data_tldr.jsonl"))
    assert rep.format == "tldr" and rep.kept == 2
    assert ex[0].prompt == [u("SUBREDDIT: r/relationships\nTITLE: A fight\nPOST: We argued about dishes.\nTL;DR:")]
    assert ex[0].response == "we argued about dishes"
    assert ex[1].prompt == [u("SUBREDDIT: r/tifu\nTITLE: Oops\nPOST: I dropped my phone.\nTL;DR:")]
    assert ex[1].response == "dropped phone"


def test_tldr_comparisons():
    ex, rep = load_examples(str(FIX / "data_tldr_comparison.jsonl"))
    assert rep.format == "tldr_comparison" and (rep.rows, rep.kept) == (3, 2) and rep.skipped == {"identical": 1}
    prompt = [u("SUBREDDIT: r/cats\nTITLE: My cat\nPOST: My cat sleeps all day.\nTL;DR:")]
    assert ex[0] == PreferenceExample(prompt, "dog barks", "cat sleeps")  # choice 1
    assert ex[1] == PreferenceExample(prompt, "cat sleeps", "cat is lazy")  # choice 0


def test_limit_counts_kept_examples():
    ex, rep = load_examples(str(FIX / "data_hh.jsonl"), limit=1)
    assert len(ex) == 1 and rep.rows == 1 and rep.kept == 1
    ex, rep = load_examples(str(FIX / "data_hh.jsonl"), limit=2)
    assert len(ex) == 2 and rep.rows == 4


# ------------------------------------------------------------------------------------ shared real data


def _shared(rel):
    p = SHARED / rel
    return pytest.mark.skipif(not p.exists(), reason=f"{p} not present")


@_shared("hh-rlhf/helpful-online/test.jsonl.gz")
def test_shared_hh_helpful_online():
    ex, rep = load_examples(str(SHARED / "hh-rlhf/helpful-online/test.jsonl.gz"))
    # README: 1,137 rows, 2 with chosen == rejected, 0 whose rejected text does not start with the prompt
    assert rep.format == "hh_rlhf" and rep.rows == 1137
    assert rep.skipped == {"identical": 2} and rep.kept == 1135
    assert all(e.prompt[-1]["role"] == "user" and e.chosen != e.rejected for e in ex)
    assert not any(e.chosen.startswith(" ") for e in ex[:50])


@_shared("hh-rlhf/harmless-base/test.jsonl.gz")
def test_shared_hh_harmless_base_prompt_mismatches():
    _, rep = load_examples(str(SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"))
    assert rep.rows == 2312 and rep.skipped == {"prompt_mismatch": 4} and rep.kept == 2308


@_shared("alpaca/alpaca_data_sample5000.jsonl.gz")
def test_shared_alpaca_sample():
    path = SHARED / "alpaca/alpaca_data_sample5000.jsonl.gz"
    ex, rep = load_examples(str(path))
    assert rep.format == "alpaca" and rep.rows == rep.kept == 5000
    recs = read_records(str(path))
    with_input = sum(1 for r in recs if r["input"].strip())
    assert with_input == 1943  # README: 1,943 rows with a non-empty input
    assert sum("\n\n" + r["input"] in e.prompt[0]["content"] for r, e in zip(recs, ex) if r["input"].strip()) == 1943


@_shared("tldr/dove_tldr_test_500.jsonl.gz")
def test_shared_tldr():
    ex, rep = load_examples(str(SHARED / "tldr/dove_tldr_test_500.jsonl.gz"))
    assert rep.format == "tldr" and rep.rows == rep.kept == 500
    subs = [e.prompt[0]["content"].split("\n", 1)[0] for e in ex]
    assert subs.count("SUBREDDIT: r/relationships") == 267  # README: relationships 267
    assert all(e.prompt[0]["content"].endswith("\nTL;DR:") for e in ex)

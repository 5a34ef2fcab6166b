"""Data checked against its role, read guards (UTF-8, record size, missing files) and drop counts."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest
from helpers_tokenizer import make_tokenizer

from tandem.data import (
    DataError,
    DataFileNotFound,
    PreferenceExample,
    SFTExample,
    encode_all,
    load_examples,
    no_usable_message,
    read_records,
)
from tandem.data.formats import LoadReport
from tandem.data.types import user


def _jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows), encoding="utf-8")
    return p


ALPACA = {"instruction": "Say hi.", "input": "", "output": "Hi."}
PAIR = {"prompt": "Pick.", "chosen": "Seven.", "rejected": "No."}


def test_alpaca_rows_given_as_preference_data_are_refused(tmp_path):
    p = _jsonl(tmp_path, [ALPACA, ALPACA])
    with pytest.raises(DataError) as e:
        load_examples(str(p), role="preference")
    msg = str(e.value)
    assert f"{p}: row 1" in msg and "'alpaca'" in msg and "['input', 'instruction', 'output']" in msg
    assert "data.sft" in msg


def test_preference_rows_given_to_an_sft_role_are_refused(tmp_path):
    p = _jsonl(tmp_path, [PAIR])
    with pytest.raises(DataError, match=r"d\.jsonl: row 1: the sft data needs .*'preference'.*\['chosen', 'prompt', 'rejected'\]"):
        load_examples(str(p), role="sft")


def test_declared_format_of_the_wrong_kind_is_refused(tmp_path):
    p = _jsonl(tmp_path, [ALPACA])
    with pytest.raises(DataError, match="declared"):
        load_examples(str(p), format="alpaca", role="preference")


def test_kto_style_unpaired_rows_are_refused_for_every_role(tmp_path):
    rows = [{"prompt": "q", "completion": "good", "label": True}, {"prompt": "q", "completion": "bad", "label": False}]
    p = _jsonl(tmp_path, rows)
    for role in ("sft", "preference"):
        with pytest.raises(DataError) as e:
            load_examples(str(p), role=role)
        msg = str(e.value)
        assert "row 1" in msg and "KTO-style" in msg and "'label'" in msg and "kto objective" in msg
    ex, _ = load_examples(str(p))  # without a role (prompts for eval): read as prompt/response
    assert len(ex) == 2


def test_a_non_boolean_label_is_just_metadata(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "q", "response": "r", "label": "math"}])
    ex, _ = load_examples(str(p), role="sft")
    assert ex[0].meta["label"] == "math"


def test_preference_filters_are_counted(tmp_path):
    rows = [PAIR, {**PAIR, "chosen": " "}, {**PAIR, "rejected": ""}, {**PAIR, "rejected": "Seven."}]
    ex, rep = load_examples(str(_jsonl(tmp_path, rows)), role="preference")
    assert ex == [PreferenceExample(user("Pick."), "Seven.", "No.")]
    assert rep.skipped == {"empty_chosen": 1, "empty_rejected": 1, "identical": 1}


def test_sft_empty_response_is_left_out_with_a_role_only(tmp_path):
    p = _jsonl(tmp_path, [ALPACA, {**ALPACA, "output": ""}])
    ex, rep = load_examples(str(p), role="sft")
    assert len(ex) == 1 and rep.skipped == {"empty_response": 1}
    assert len(load_examples(str(p))[0]) == 2


def test_all_rows_filtered_says_how_many_each_filter_removed(tmp_path):
    rows = [{**PAIR, "rejected": "Seven."}] * 3 + [{**PAIR, "rejected": ""}] * 2
    with pytest.raises(DataError) as e:
        load_examples(str(_jsonl(tmp_path, rows)), role="preference")
    msg = str(e.value)
    assert "all 5 rows were left out" in msg and "3 identical" in msg and "2 empty_rejected" in msg


def test_empty_file_with_a_role(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match=r"e\.jsonl: no records"):
        load_examples(str(p), role="sft")


def test_rows_and_lines_named_when_blank_lines_shift_them(tmp_path):
    p = _jsonl(tmp_path, [ALPACA, "", "", {"instruction": "x"}])
    with pytest.raises(DataError, match=r"d\.jsonl: row 2 \(line 4\): format 'alpaca' needs field 'output'"):
        load_examples(str(p), role="sft")


def test_non_utf8_input_names_file_and_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8 \(byte 0xe9"):
        read_records(str(p))
    q = tmp_path / "latin1.json"
    q.write_bytes(b'[\n{"prompt": "a", "response": "b"},\n{"prompt": "caf\xe9", "response": "b"}\n]')
    with pytest.raises(DataError, match=r"latin1\.json:3: not valid UTF-8"):
        read_records(str(q))


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(ALPACA).encode() + b"\n")
    assert read_records(str(p)) == [ALPACA]


def test_oversized_record_is_refused_without_reading_it_whole(tmp_path):
    p = tmp_path / "big.jsonl"
    big = json.dumps({"prompt": "x" * (20 * 2**20), "response": "y"})
    p.write_text(json.dumps(ALPACA) + "\n" + big + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"big\.jsonl:2: record is over the size cap of 1\.0 MiB"):
            read_records(str(p), max_record_bytes=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # the 20 MiB line was never held in memory
    with pytest.raises(DataError, match="size cap"):
        load_examples(str(p), max_record_bytes=2**20, role="sft")


def test_record_exactly_at_the_cap_is_read_also_gzipped(tmp_path):
    line = json.dumps({"prompt": "p", "response": "r" * 100})
    p = tmp_path / "x.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(line + "\n" + line)  # last line without a newline
    assert len(read_records(str(p), max_record_bytes=len(line))) == 2
    with pytest.raises(DataError, match=r"x\.jsonl\.gz:1: record is over"):
        read_records(str(p), max_record_bytes=len(line) - 1)


@pytest.mark.parametrize("src", ["/no/such/train.jsonl", "data/missing.parquet", "./rel", "a/b/c"])
def test_missing_local_file_is_one_clear_line(src):
    with pytest.raises(DataFileNotFound) as e:
        load_examples(src, role="sft")
    assert str(e.value) == f"data file not found: {src}"
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataError)


def test_bad_role_name_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="role must be one of"):
        load_examples(str(_jsonl(tmp_path, [ALPACA])), role="reward")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(chat_template=True)


def test_encode_stats_count_drop_reasons(tok):
    exs = [SFTExample(user("q"), "ok"), SFTExample(user("long " * 40), "ok")]
    _, stats = encode_all(tok, exs, max_length=20, overlong="drop")
    assert stats.dropped == 1 and stats.reasons == {"over_long": 1}
    _, stats = encode_all(tok, exs, max_length=1, overlong="truncate")
    assert stats.dropped == 2 and stats.reasons == {"no_room": 2}


def test_no_usable_message_lists_each_cause(tok):
    exs = [SFTExample(user("long " * 40), "ok")] * 2
    feats, stats = encode_all(tok, exs, max_length=20, overlong="drop")
    rep = LoadReport(source="d.jsonl", format="alpaca", rows=5, kept=2, skipped={"empty_response": 3})
    msg = no_usable_message("d.jsonl", rep, stats, max_length=20, overlong="drop")
    assert feats == [] and msg.startswith("d.jsonl: no usable examples: 5 rows read")
    assert "3 empty_response" in msg and "2 over_long" in msg and "max_length=20" in msg
    assert "raise data.max_length or set data.overlong: truncate" in msg and "\n" not in msg

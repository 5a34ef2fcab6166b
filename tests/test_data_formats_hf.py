"""The Hugging Face ecosystem's data formats (tandem.data): TRL standard/conversational, explicit and implicit prompt,
prompt/completion, ShareGPT, CSV/TSV/Parquet/saved datasets through ``datasets``, the column map, rows read lazily."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.data import DataError, PreferenceExample, SFTExample, detect_format, iter_records, load_examples

FIX = Path(__file__).parent / "fixtures"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


def _jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows), encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------------------ TRL


def test_trl_prompt_completion_standard_and_conversational():
    ex, rep = load_examples(str(FIX / "data_trl_prompt_completion.jsonl"), role="sft")
    assert rep.format == "prompt_response"
    assert ex == [SFTExample([u("The sky is")], " blue."), SFTExample([u("What color is the sky?")], "It is blue.")]


def test_trl_explicit_prompt_conversational_preference():
    rec = {"prompt": [s("Be kind."), u("Hello?")], "chosen": [a("Hi there!")], "rejected": [a("What.")]}
    assert detect_format(rec) == "preference"


def test_trl_implicit_prompt_splits_at_the_shared_turns():
    ex, rep = load_examples(str(FIX / "data_trl_implicit.jsonl"), role="preference")
    assert rep.format == "implicit_preference" and rep.rows == 3
    assert ex[0] == PreferenceExample([u("What color is the sky?")], "It is blue.", "It is green.")
    assert ex[1] == PreferenceExample([s("Be brief."), u("Hi"), a("Hello."), u("2+2?")], "4", "5")
    assert rep.skipped == {"reply_not_one_turn": 1}  # the pair differs in an earlier turn


def test_implicit_prompt_strings_without_markers_are_refused_clearly(tmp_path):
    p = _jsonl(tmp_path, [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    with pytest.raises(DataError) as e:
        load_examples(str(p), role="preference")
    msg = str(e.value)
    assert msg.startswith(f"{p}: row 1: chosen/rejected without a prompt") and "explicit 'prompt'" in msg


def test_kto_unpaired_rows_stay_refused_also_from_csv(tmp_path):
    with pytest.raises(DataError, match=r"data_kto\.jsonl: row 1: unpaired preference row .*KTO-style"):
        load_examples(str(FIX / "data_kto.jsonl"), role="preference")
    with pytest.raises(DataError, match="KTO-style"):
        load_examples(str(FIX / "data_kto.jsonl"), role="sft")
    p = tmp_path / "kto.csv"
    p.write_text("prompt,completion,label\nThe sky is, blue.,True\n")
    with pytest.raises(DataError, match=r"kto\.csv: row 1 \(line 2\): unpaired preference row"):
        load_examples(str(p), role="sft")


def test_language_modelling_text_rows_get_a_clear_error(tmp_path):
    p = _jsonl(tmp_path, [{"text": "Once upon a time"}])
    with pytest.raises(DataError, match=r"row 1: language-modelling rows \(a 'text' field.*prompt/completion or messages"):
        load_examples(str(p), role="sft")


# -------------------------------------------------------------------------------------------- ShareGPT


def test_sharegpt_conversations_with_system_field_and_turn():
    ex, rep = load_examples(str(FIX / "data_sharegpt.json"), role="sft")
    assert rep.format == "sharegpt"
    assert ex[0] == SFTExample([s("Be brief."), u("Hi"), a("Hello!"), u("Name a fruit.")], "Apple.")
    assert ex[1] == SFTExample([s("You count."), u("1, 2, ...")], "3")


def test_sharegpt_preference():
    ex, rep = load_examples(str(FIX / "data_sharegpt_preference.jsonl"), role="preference")
    assert rep.format == "sharegpt_preference" and ex == [PreferenceExample([u("Pick a number.")], "Seven.", "No.")]


def test_sharegpt_unknown_speaker_names_row_and_turn(tmp_path):
    p = _jsonl(tmp_path, [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]},
                          {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "x"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl: row 2: conversations\[1\]: speaker 'observation' is not one"):
        load_examples(str(p), role="sft")


# ------------------------------------------------------------------------------------ CSV through datasets


def test_csv_alpaca_cells_are_strings_as_written():
    ex, rep = load_examples(str(FIX / "data_alpaca.csv"), role="sft")
    assert rep.format == "alpaca"
    assert ex == [SFTExample([u("Add the numbers.\n\n2, 3")], "5"), SFTExample([u("Say hi.")], "Hi,\nthere!")]


def test_tsv_with_a_column_map_keeps_other_columns_as_meta():
    ex, rep = load_examples(str(FIX / "data_qa.tsv"), role="sft", columns={"prompt": "question", "response": "answer"})
    assert rep.format == "prompt_response"
    assert ex[0] == SFTExample([u("What is 2+2?")], "4") and ex[0].meta["id"] == "0042"  # not the number 42
    assert ex[1].meta["row"] == 2


def test_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('prompt,response\n"multi\nline",ok\nx,y,z\n')
    with pytest.raises(DataError, match=r"bad\.csv:4: 3 fields, but the header has 2 \(prompt, response\)"):
        load_examples(str(p), role="sft")
    q = tmp_path / "latin1.csv"
    q.write_bytes(b"prompt,response\na,b\ncaf\xe9,b\n")
    with pytest.raises(DataError, match=r"latin1\.csv:3: not valid UTF-8 \(byte 0xe9"):
        load_examples(str(q), role="sft")
    big = tmp_path / "big.csv"
    big.write_text("prompt,response\n" + "x" * 3000 + ",y\n")
    with pytest.raises(DataError, match=r"big\.csv:2: record is over the size cap"):
        load_examples(str(big), role="sft", max_record_bytes=1000)


def test_csv_row_errors_name_row_and_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('instruction,output,input\n"a\nb",o,\nq,,\n')
    ex, rep = load_examples(str(p), role="sft")  # an empty output is left out, not an error
    assert len(ex) == 1 and rep.skipped == {"empty_response": 1}
    with pytest.raises(DataError, match=r"d\.csv: row 2 \(line 4\): format 'messages' needs field 'messages'"):
        load_examples(str(p), format="messages", skip=1)


def test_csv_tldr_comparison_choice_as_text(tmp_path):
    p = tmp_path / "cmp.csv"
    p.write_text("subreddit,title,post,summary_0,summary_1,choice\nrelationships,T,We had a fight.,we argued,we ate,1\n")
    ex, rep = load_examples(str(p), role="preference")
    assert rep.format == "tldr_comparison" and (ex[0].chosen, ex[0].rejected) == ("we ate", "we argued")


# ---------------------------------------------------------------------------- Parquet, saved datasets, Hub


def test_parquet_conversational_rows_and_streaming_read_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [u("Hi"), a("Hello.")], "id": "a"}, {"messages": [u("Q"), a("A"), u("Q2"), a("A2")], "id": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    eager, rep = load_examples(str(tmp_path / "chat.parquet"), role="sft")
    lazy, _ = load_examples(str(tmp_path / "chat.parquet"), role="sft", streaming=True)
    assert rep.format == "messages" and eager == lazy
    assert eager[1] == SFTExample([u("Q"), a("A"), u("Q2")], "A2")
    assert eager[0].meta["id"] == "a" and "id" not in eager[1].meta  # a null cell is an absent field


def test_saved_dataset_dict_picks_the_split(tmp_path):
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({"train": Dataset.from_list([{"prompt": "p", "completion": "c"}]),
                      "test": Dataset.from_list([{"prompt": "t", "completion": "x"}])})
    dd.save_to_disk(str(tmp_path / "saved"))
    ex, _ = load_examples(str(tmp_path / "saved"), split="test", role="sft")
    assert ex == [SFTExample([u("t")], "x")]
    with pytest.raises(DataError, match="no split 'dev' \\(available: train, test\\)"):
        load_examples(str(tmp_path / "saved"), split="dev")


def test_hub_names_go_to_load_dataset_with_config_split_and_streaming(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(repo, config=None, split=None, streaming=False):
        calls.append((repo, config, split, streaming))
        return datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r", "extra": None}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex, rep = load_examples("org/prefs:cfg", split="train[:10]", role="preference", streaming=True)
    assert calls == [("org/prefs", "cfg", "train[:10]", True)] and rep.format == "preference" and len(ex) == 1


# ----------------------------------------------------------------------------------- lazily read rows


def test_limit_reads_no_row_after_it(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}, "{not json"])
    ex, rep = load_examples(str(p), role="sft", limit=2)  # the malformed third line is never read
    assert len(ex) == 2 and rep.rows == 2
    with pytest.raises(DataError, match=r"d\.jsonl:3: malformed JSON"):
        load_examples(str(p), role="sft")
    rows = iter_records(str(p))
    assert next(rows) == ({"prompt": "a", "response": "b"}, 1)


def test_skip_leaves_out_the_first_rows_and_keeps_row_numbers(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": f"q{i}", "response": f"r{i}"} for i in range(1, 6)])
    ex, rep = load_examples(str(p), role="sft", skip=3)
    assert [e.response for e in ex] == ["r4", "r5"] and [e.meta["row"] for e in ex] == [4, 5] and rep.rows == 2
    with pytest.raises(DataError, match=r"d\.jsonl: no records after the first 9 rows"):
        load_examples(str(p), role="sft", skip=9)


# ----------------------------------------------------------------------------------------- column map


def test_column_map_renames_before_detection(tmp_path):
    p = _jsonl(tmp_path, [{"q": "Pick.", "good": "7", "bad": "no", "prompt": "ignored"}])
    ex, rep = load_examples(str(p), role="preference", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert rep.format == "preference" and ex == [PreferenceExample([u("Pick.")], "7", "no")]


def test_column_map_errors_name_the_field_or_column(tmp_path):
    p = _jsonl(tmp_path, [{"question": "q", "answer": "a"}, {"question": "q2"}])
    with pytest.raises(DataError, match=r"column map names \['promt'\], which no format reads"):
        load_examples(str(p), columns={"promt": "question", "response": "answer"})
    with pytest.raises(DataError, match=r"d\.jsonl: row 1: column\(s\) \['answr'\] named in the column map are not in the row"):
        load_examples(str(p), columns={"prompt": "question", "response": "answr"})
    with pytest.raises(DataError, match=r"d\.jsonl: row 2: format 'prompt_response' needs field 'response' or 'completion'"):
        load_examples(str(p), columns={"prompt": "question", "response": "answer"})


def test_load_source_reads_a_recipe_source_block(tmp_path):
    from tandem.config.inputs import SourceConfig
    from tandem.data import load_source

    p = _jsonl(tmp_path, [{"q": f"q{i}", "a": f"a{i}"} for i in range(1, 6)])
    src = SourceConfig(source=str(p), skip=1, limit=2, columns={"prompt": "q", "response": "a"})
    ex, rep = load_source(src, role="sft")
    assert [e.response for e in ex] == ["a2", "a3"] and rep.format == "prompt_response"
    assert len(load_source(src, role="sft", limit=4)[0]) == 4


def test_inspect_reads_rows_lazily_with_a_column_map():
    from tandem.data.inspect import inspect_source

    info = inspect_source(str(FIX / "data_qa.tsv"), columns={"prompt": "question", "response": "answer"})
    assert (info["format"], info["rows"], info["kept"]) == ("prompt_response", 2, 2)

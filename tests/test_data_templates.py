"""data.chat_template (tandem.data.templates): named templates render as written, a file (Jinja or a tokenizer
config) replaces the tokenizer's template, and a bad name, file or template is one clear DataError."""

from __future__ import annotations

import json

import pytest
from helpers_tokenizer import make_tokenizer

from tandem.data import DataError, NAMED_TEMPLATES, SFTExample, encode_sft, resolve_chat_template, set_chat_template
from tandem.data.encode import IGNORE

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _render(name: str) -> str:
    tok = make_tokenizer(chat_template=False)
    set_chat_template(tok, name)
    return tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)


def test_named_templates_render_as_written():
    assert set(NAMED_TEMPLATES) == {"chatml", "llama3", "zephyr"}
    assert _render("chatml") == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    assert _render("llama3") == ("<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                                 "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert _render("zephyr") == "<|system|>\nBe brief.<|im_end|>\n<|user|>\nHi<|im_end|>\n<|assistant|>\n"


def test_a_set_template_replaces_the_fallback_in_encoding():
    tok = make_tokenizer(chat_template=False)
    ex = SFTExample([{"role": "user", "content": "Hi"}], "Hello.")
    before = tok.decode(encode_sft(tok, ex, 64)["input_ids"])
    assert before.startswith("<s>### User:")
    set_chat_template(tok, "zephyr")
    feat = encode_sft(tok, ex, 64)
    assert tok.decode(feat["input_ids"]) == "<|user|>\nHi<|im_end|>\n<|assistant|>\nHello.<|im_end|>"
    assert tok.decode([i for i, lab in zip(feat["input_ids"], feat["labels"]) if lab != IGNORE]) == "Hello.<|im_end|>"


def test_template_from_a_jinja_file_or_a_tokenizer_config(tmp_path):
    j = tmp_path / "t.jinja"
    j.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")
    tok = make_tokenizer(chat_template=True)
    set_chat_template(tok, str(j))
    assert tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True) == (
        "[system] Be brief.\n[user] Hi\n[assistant] ")
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"chat_template": NAMED_TEMPLATES["chatml"], "eos_token": "<|im_end|>"}))
    assert resolve_chat_template(str(cfg)) == NAMED_TEMPLATES["chatml"]


def test_none_leaves_the_tokenizer_alone():
    tok = make_tokenizer(chat_template=True)
    before = tok.chat_template
    set_chat_template(tok, None)
    assert tok.chat_template == before


def test_bad_names_files_and_templates_are_one_clear_line(tmp_path):
    with pytest.raises(DataError, match=r"data\.chat_template: 'chatlm' is neither a named template \(chatml, llama3, zephyr\) nor a file"):
        resolve_chat_template("chatlm")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m['content'] }\n")
    with pytest.raises(DataError, match=r"bad\.jinja: not a valid Jinja chat template \(line 2\)"):
        resolve_chat_template(str(bad))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"eos_token": "x"}))
    with pytest.raises(DataError, match=r"c\.json: a JSON file without a 'chat_template' string"):
        resolve_chat_template(str(cfg))
    empty = tmp_path / "e.jinja"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty file"):
        resolve_chat_template(str(empty))

"""Chat templates that travel with the model: a tokenizer without one gets tandem's fallback with one warning line, the
fallback is saved into final/ and final/merged, and the saved model renders prompts (and generates) the way it was
trained; its model card's snippet runs. Templates that mark assistant turns label through
``return_assistant_tokens_mask``."""

from __future__ import annotations

import logging
import re

import pytest
import torch

import tandem
from tandem.data import synthetic
from tandem.data.encode import FALLBACK_TEMPLATE, IGNORE, prompt_ids, prompt_ids_labels, render_fallback


def test_the_fallback_template_renders_as_the_fallback_encoder():
    from helpers_tokenizer import make_tokenizer

    tok = make_tokenizer(chat_template=False)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    plain = prompt_ids(tok, msgs)  # no template: the fallback path
    tok.chat_template = FALLBACK_TEMPLATE
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "<s>" + render_fallback(msgs)
    assert prompt_ids(tok, msgs) == plain  # holding the fallback changes nothing in training
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"] == plain


def test_a_template_less_tokenizer_trains_saves_its_template_and_generates(tmp_path, one_thread, caplog):
    from helpers_evaluation import tiny_config
    from helpers_tokenizer import make_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = make_tokenizer(chat_template=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(tok, max_position_embeddings=512))
    rows = synthetic.to_records(synthetic.instruction_tasks(16, 0))
    with caplog.at_level(logging.WARNING, logger="tandem"):
        run = tandem.train({"method": "sft", "max_steps": 2, "batching": {"batch_size": 4}, "max_length": 64,
                            "precision": "fp32", "logging": {"progress": False}, "output_dir": str(tmp_path / "run"),
                            "model": {"name_or_path": "tiny", "lora": {"r": 4, "alpha": 8}}},
                           model=model, tokenizer=tok, data={"sft": rows})
    warnings = [r.getMessage() for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(warnings) == 1 and "### User:" in warnings[0] and "final/" in warnings[0]

    for folder in (run.dir / "final", run.dir / "final" / "merged"):
        saved = AutoTokenizer.from_pretrained(folder)
        assert saved.chat_template == FALLBACK_TEMPLATE, folder
    saved = AutoTokenizer.from_pretrained(run.dir / "final" / "merged")
    msgs = [{"role": "user", "content": rows[0]["prompt"] if isinstance(rows[0].get("prompt"), str) else "Add 2 and 3."}]
    inputs = saved.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert inputs["input_ids"][0].tolist() == prompt_ids(tok, msgs)  # the trained model's prompt format
    trained = AutoModelForCausalLM.from_pretrained(run.dir / "final" / "merged")
    out = trained.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=saved.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]

    # the model card's own snippet runs on the saved folder
    card = (run.dir / "final" / "merged" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = code.replace('"path/to/final"', repr(str(run.dir / "final" / "merged"))).replace("max_new_tokens=64",
                                                                                         "max_new_tokens=2")
    scope: dict = {}
    exec(compile(code, "model-card-snippet", "exec"), scope)  # noqa: S102 - the card's code, on local files
    assert scope["out"].shape[1] > scope["inputs"]["input_ids"].shape[1]


GENERATION_CHATML = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_marks_assistant_turns_labels_through_its_mask():
    from helpers_tokenizer import make_tokenizer

    tok = make_tokenizer(chat_template=True)
    tok.chat_template = GENERATION_CHATML
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "Bye"}]
    ids, labels = prompt_ids_labels(tok, msgs, loss_on="all_assistant")
    assert ids == tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    labelled = tok.decode([t for t in labels if t != IGNORE])
    assert labelled == "Hello there.<|im_end|>"
    last_ids, last_labels = prompt_ids_labels(tok, msgs, loss_on="last")
    assert set(last_labels) == {IGNORE}


@pytest.mark.parametrize("has_template", [True, False])
def test_only_a_tokenizer_without_a_template_gets_the_fallback(has_template, caplog):
    from helpers_tokenizer import make_tokenizer

    from tandem.data.templates import ensure_chat_template

    tok = make_tokenizer(chat_template=has_template)
    before = tok.chat_template
    with caplog.at_level(logging.WARNING, logger="tandem"):
        assert ensure_chat_template(tok) is (not has_template)
    assert tok.chat_template == (before if has_template else FALLBACK_TEMPLATE)
    assert len(caplog.records) == (0 if has_template else 1)

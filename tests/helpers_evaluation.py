"""Tiny models for the tests of tandem.evaluation (random Llama LM and reward model on the test tokenizer)."""

from __future__ import annotations

import torch
from helpers_tokenizer import make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


def tiny_config(tok, max_position_embeddings: int = 256, **kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        **kw,
    )


def tiny_lm(seed: int = 0, chat_template: bool = True):
    tok = make_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tok)).eval()
    return model, tok


def tiny_reward_model(seed: int = 0):
    tok = make_tokenizer(chat_template=True)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_config(tok, num_labels=1)).eval()
    return model, tok


def tax_inputs(tmp) -> tuple:
    """``(reward model dir, held-out text file)`` for a ``tandem tax`` recipe on the tiny models, written under ``tmp``."""
    rm, rtok = tiny_reward_model(0)
    rm.save_pretrained(tmp / "rm")
    rtok.save_pretrained(tmp / "rm")
    (tmp / "heldout.txt").write_text("The river runs to the sea.\n\nApples are red or green.\n\nWinter is cold.\n")
    return tmp / "rm", tmp / "heldout.txt"

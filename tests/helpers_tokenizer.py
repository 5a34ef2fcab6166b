"""A tiny offline tokenizer for tests: byte-level BPE trained in memory on a few sentences.

Byte-level means any text (any language, emoji, newlines) encodes and decodes back exactly, while the vocab
stays small (256 bytes + special tokens + a few merges, ~300 ids). Special tokens: ``<pad>``, ``<s>`` (BOS),
``<|im_end|>`` (EOS, ends an assistant turn like SmolLM2/ChatML models) and ``<|im_start|>``. The tokenizer adds
no special tokens by itself (``add_special_tokens`` is a no-op), like ChatML models.
"""

from __future__ import annotations

from functools import lru_cache

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 23 + 45? Reply with the number only. The answer is 68.",
    "Write the word 'river' in capital letters. RIVER",
    "Which letter comes right after 'g' in the alphabet? Reply with the letter only.",
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "SUBREDDIT: r/relationships TITLE: My friend and I POST: We had a fight. TL;DR: we argued.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
]


@lru_cache(maxsize=2)
def _tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.to_str()


def make_tokenizer(chat_template: bool = True):
    """A ``PreTrainedTokenizerFast`` (pad ``<pad>``, bos ``<s>``, eos ``<|im_end|>``), with a ChatML-style
    chat template when ``chat_template`` is true, else none (so encoders use their fallback template)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_object()),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok

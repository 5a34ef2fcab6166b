"""Models: load (Hub id, local dir, GGUF), LoRA, reward/value heads, atomic saves, the default SmolLM2."""

from tandem.models.atomic import atomic_dir
from tandem.models.load import load_policy, load_reward_model, load_saved, load_tokenizer, load_value_model
from tandem.models.lora import apply_lora, trainable_summary
from tandem.models.save import save_model
from tandem.models.smollm2 import find_smollm2, pull_smollm2

__all__ = [
    "apply_lora", "atomic_dir", "find_smollm2", "load_policy", "load_reward_model", "load_saved", "load_tokenizer",
    "load_value_model", "pull_smollm2", "save_model", "trainable_summary",
]

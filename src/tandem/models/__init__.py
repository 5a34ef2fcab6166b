"""Models: the one place that loads them (Hub id, local dir, run dir, LoRA adapter dir, GGUF; policy, reward
model, merged weights) and the one place that samples from them; LoRA, atomic saves, the default SmolLM2.

==============================  =============================================================================
:mod:`tandem.models.resolve`    what a reference names: "not found: PATH" for a missing local path, run dir
                                -> ``final/``, a run's stage (``RUN/stages/NN-name``), adapter base and
                                tokenizer source
:mod:`tandem.models.load`       ``load_policy``, ``load_reward_model``, ``load_saved``, ``load_any``,
                                ``load_tokenizer``
:mod:`tandem.models.merged`     ``load_full_weights`` / ``load_merged``: an adapter dir merged into its base
                                (a run's stage: its weights over the run's final model)
:mod:`tandem.models.sampling`   ``sample_ids`` (greedy or nucleus, seeded, stops at EOS), ``eos_ids``,
                                ``left_pad``
:mod:`tandem.models.decode`     ``decode``: the batched decode loop under ``sample_ids`` (slab KV cache,
                                finished rows leave the batch, greedy = ``model.generate``'s tokens)
==============================  =============================================================================
"""

from tandem.models.atomic import atomic_dir
from tandem.models.load import (
    load_any,
    load_policy,
    load_reward_model,
    load_saved,
    load_tokenizer,
    load_value_model,
)
from tandem.models.lora import apply_lora, trainable_summary
from tandem.models.merged import load_full_weights, load_merged, tokenizer_of
from tandem.models.resolve import check_exists, is_adapter_dir, resolve_model_path, stage_weights, tokenizer_source
from tandem.models.sampling import eos_ids, left_pad, sample_ids
from tandem.models.save import save_model
from tandem.models.smollm2 import find_smollm2, pull_smollm2

__all__ = [
    "apply_lora", "atomic_dir", "check_exists", "eos_ids", "find_smollm2", "is_adapter_dir", "left_pad", "load_any",
    "load_full_weights", "load_merged", "load_policy", "load_reward_model", "load_saved", "load_tokenizer",
    "load_value_model", "pull_smollm2", "resolve_model_path", "sample_ids", "save_model", "stage_weights",
    "tokenizer_of", "tokenizer_source", "trainable_summary",
]

"""The recipe blocks that say what a run reads: ``model`` (with LoRA and the training options) and ``data``
(its sources, lengths and chat template)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from tandem.config.base import Strict


class LoraConfig(Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


#: ``model.attn_implementation`` values transformers knows, besides a Hub kernel ``org/name[@rev][:fn]``.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", "paged|eager")
_HUB_KERNEL = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?(:[\w-]+)?$")


class ModelConfig(Strict):
    name_or_path: str
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    revision: str | None = None
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in the backward pass (less memory, ~30% slower)")
    attn_implementation: str | None = Field(
        default="auto", description="auto: eager for bf16 training on a CPU with rows of at most 256 tokens and no "
        "prefix sharing (faster there: tandem.models.precision.training_attention), else transformers' default; "
        "eager, sdpa, flash_attention_2, ...; null = transformers' default")
    quantization: Literal["4bit", "8bit"] | None = Field(default=None, description="QLoRA: load the base quantized with bitsandbytes (CUDA only; needs lora)")

    @field_validator("attn_implementation")
    @classmethod
    def _attn_known(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and v not in ATTN_IMPLEMENTATIONS and not _HUB_KERNEL.match(v):
            raise ValueError(f"unknown attention implementation {v!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                             "a Hub kernel (org/name), auto, or null for transformers' default")
        return v

    @model_validator(mode="after")
    def _quantization_needs_lora(self) -> "ModelConfig":
        if self.quantization is not None and self.lora is None:
            raise ValueError(f"quantization: {self.quantization} (QLoRA) trains LoRA adapters on a frozen quantized "
                             "base: add a model.lora block, or remove model.quantization")
        if self.quantization is not None and self.gguf_file is not None:
            raise ValueError("quantization and gguf_file cannot be combined: a GGUF file is dequantised to dense "
                             "weights on load; remove one of them")
        return self


class SourceConfig(Strict):
    source: str
    format: str | None = None
    split: str = "train"
    limit: int | None = Field(default=None, ge=1)
    skip: int = Field(default=0, ge=0, description="rows left out at the start (e.g. rows another source trains on)")
    columns: dict[str, str] | None = Field(default=None, description="tandem field -> column of the source, e.g. {prompt: question, response: answer}")
    loss_on: Literal["last", "all_assistant"] = Field(default="last", description="SFT: label the last reply only, or every assistant turn")
    streaming: bool = Field(default=False, description="read a datasets source (Hub, CSV, Parquet) lazily, without a cached copy")

    @field_validator("columns")
    @classmethod
    def _columns_known(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v:
            from tandem.data.columns import check_columns  # imported only when a map is given (tandem.data loads torch)

            check_columns(v)
        return v


MIX = "; a list of sources is read in order and concatenated (each with its own skip, limit, format, columns)"
BRANCH_TAGS = ("one-source", "source-list")  # union branch names: left out of error locations (parse_recipe)


def _one_or_list(v: Any) -> str:
    return BRANCH_TAGS[1] if isinstance(v, list) else BRANCH_TAGS[0]


# one source or a list of them; the discriminator validates only the branch the YAML has (one error, not two)
Sources = Annotated[Union[Annotated[SourceConfig, Tag(BRANCH_TAGS[0])], Annotated[list[SourceConfig], Tag(BRANCH_TAGS[1])]],
                    Discriminator(_one_or_list)]


class DataConfig(Strict):
    sft: Sources | None = Field(default=None, description="instruction data" + MIX)
    preference: Sources | None = Field(default=None, description="preference pairs" + MIX)
    pretrain: Sources | None = Field(
        default=None, description="plain text (LM loss) for rlhf+pt / ppo+pt: a text file (paragraphs) or JSONL with a "
        "'text' field" + MIX)
    max_length: int = Field(default=512, ge=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    val_size: int = Field(default=0, ge=0)
    val: dict[Literal["sft", "preference"], SourceConfig] = Field(
        default_factory=dict, description="held-out validation data per role, from its own source (e.g. a file never "
        "trained on); a role listed here trains on all its rows and ignores val_size")
    max_record_mb: float = Field(default=10.0, gt=0, description="largest JSON Lines record (line) read, in MiB")
    max_truncated: float = Field(default=1.0, ge=0.0, le=1.0, description="largest fraction of a source's rows that "
                                 "may be cut to max_length (more is an error; over half is always a warning line)")
    chat_template: str | None = Field(default=None, description="chatml, llama3, zephyr or a Jinja file; replaces the tokenizer's template")

    def sources(self, key: str) -> list[SourceConfig]:
        """The sources of ``data.<key>`` (``sft``, ``preference``, ``pretrain``) as a list (empty when unset)."""
        v = getattr(self, key)
        return [] if v is None else list(v) if isinstance(v, list) else [v]

    @model_validator(mode="after")
    def _loss_on_is_sft_only(self) -> "DataConfig":
        for key in ("sft", "preference", "pretrain"):
            if getattr(self, key) == []:
                raise ValueError(f"{key}: an empty list of sources; give at least one source or leave the role out")
        if any(src.loss_on != "last" for src in self.sources("preference")):
            raise ValueError("preference.loss_on: a preference pair is labelled on its two final replies; "
                             "loss_on: all_assistant applies to data.sft only")
        return self

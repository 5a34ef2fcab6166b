"""What ``accelerate launch --config_file <config>`` asks for, and the combinations tandem refuses at start.

``accelerate launch`` passes its config to the processes as environment variables (``ACCELERATE_USE_FSDP``,
``FSDP_VERSION``, ``FSDP_*``, ``ACCELERATE_USE_DEEPSPEED``); accelerate's own ``FullyShardedDataParallelPlugin``
parses them. tandem applies ``fully_shard`` itself (:mod:`tandem.distributed.shard`) on every device type, because
accelerate 1.15 on CPU runs an FSDP config as plain data parallel without calling ``fully_shard``, and on GPU
its FSDP2 preparation needs the optimizer, which tandem builds per stage.

Refused, each with one line saying what to do instead: DeepSpeed (ZeRO-1/2/3), FSDP version 1, activation
checkpointing and ``cpu_ram_efficient_loading`` from the FSDP config, size-based auto wrap, fp16 with FSDP, PPO
stages and the gradient probe (``probe.every``) with FSDP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

log = logging.getLogger("tandem")


class UnsupportedDistributed(ValueError):
    """A launch configuration tandem does not run (the message is one line: what, and what to do instead)."""


@dataclass(frozen=True)
class FSDPSettings:
    """How tandem shards the model (from the accelerate config)."""

    reshard_after_forward: bool = True
    offload_params: bool = False
    wrap: str = "layers"  # "layers": one FSDP group per decoder layer, then the root; "root": the root only
    layer_classes: tuple[str, ...] = ()  # () = the model's own ``_no_split_modules``


def _flag(env: Mapping[str, str], key: str, default: str = "false") -> bool:
    return env.get(key, default).strip().lower() in ("1", "true", "yes", "on")


def fsdp_requested(env: Mapping[str, str] | None = None) -> bool:
    return _flag(os.environ if env is None else env, "ACCELERATE_USE_FSDP")


def read_settings(env: Mapping[str, str] | None = None) -> FSDPSettings | None:
    """The FSDP settings of the launch, ``None`` for a launch without FSDP; raises :class:`UnsupportedDistributed`
    for DeepSpeed and for FSDP options tandem does not honour (it never ignores one silently)."""
    env = os.environ if env is None else env
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        raise UnsupportedDistributed(
            "DeepSpeed (ZeRO) is not supported by tandem: its ZeRO-3 partitions hide the parameters from the "
            "regularizers (numel() == 0); launch with an FSDP2 config instead, e.g. accelerate launch --config_file "
            "configs/accelerate/fsdp2-single-node.yaml")
    if not fsdp_requested(env):
        return None
    version = env.get("FSDP_VERSION", "1").strip()
    if version != "2":
        raise UnsupportedDistributed(
            f"FSDP version {version} is not supported: set fsdp_version: 2 in the accelerate config "
            "(configs/accelerate/fsdp2-single-node.yaml)")
    for key, what in (("FSDP_ACTIVATION_CHECKPOINTING", "fsdp_activation_checkpointing"),
                      ("FSDP_CPU_RAM_EFFICIENT_LOADING", "fsdp_cpu_ram_efficient_loading")):
        if _flag(env, key):
            raise UnsupportedDistributed(f"{what}: true is not supported by tandem's FSDP2 path; set it to false in "
                                         "the accelerate config")
    policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").strip().upper()
    if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise UnsupportedDistributed(f"fsdp_auto_wrap_policy: {policy} is not supported; use TRANSFORMER_BASED_WRAP "
                                     "(one FSDP group per decoder layer) or NO_WRAP")
    if not _flag(env, "FSDP_RESHARD_AFTER_FORWARD", "true"):
        raise UnsupportedDistributed("fsdp_reshard_after_forward: false is not supported (after a no-grad pass the "
                                     "gathered weights would stay unsharded); set it to true in the accelerate config")
    classes = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
    return FSDPSettings(
        reshard_after_forward=True,
        offload_params=_flag(env, "FSDP_OFFLOAD_PARAMS"),
        wrap="layers" if policy == "TRANSFORMER_BASED_WRAP" else "root",
        layer_classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
    )


def check_supported(settings: FSDPSettings | None, *, loops: Iterable[str], probe_every: int, mixed_precision: str,
                    num_processes: int) -> FSDPSettings | None:
    """The settings to shard with (``None``: train unsharded). Raises :class:`UnsupportedDistributed` for a
    combination tandem does not run; an FSDP config on one process trains unsharded, with a warning."""
    if settings is None:
        return None
    if "ppo" in set(loops):
        raise UnsupportedDistributed(
            "PPO stages are not supported with FSDP (the rollout samples with generate() and keeps a critic and a "
            "reward model beside the policy); run PPO methods with a DDP config (configs/accelerate/ddp.yaml) or one "
            "process")
    if "group" in set(loops):
        raise UnsupportedDistributed(
            "GRPO / RLOO stages are not supported with FSDP (the rollout samples with a KV cache on the whole policy); "
            "run them with a DDP config (configs/accelerate/ddp.yaml) or one process")
    if probe_every:
        raise UnsupportedDistributed(
            "probe.every > 0 is not supported with FSDP (the gradient probe runs on the main process only); set "
            "probe.every: 0 for the sharded run and probe its saved stages afterwards with tandem probe")
    if mixed_precision == "fp16":
        raise UnsupportedDistributed("precision fp16 is not supported with FSDP (no sharded loss scaling): use "
                                     "precision: bf16 (or fp32)")
    if num_processes < 2:
        log.warning("FSDP config with one process: nothing to shard, training unsharded")
        return None
    return settings

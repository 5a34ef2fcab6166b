"""Sharded training (FSDP2) under ``accelerate launch``; see docs/distributed.md.

==========================================  ==========================================================================
:mod:`tandem.distributed.settings`          the launch's FSDP settings (``read_settings``) and the combinations
                                            refused at start (``check_supported``, ``UnsupportedDistributed``)
:mod:`tandem.distributed.shard`             ``shard_model``: ``fully_shard`` per decoder layer, then the root
:mod:`tandem.distributed.tensors`           ``local`` slices and ``whole_sums`` (per-tensor sums over the shards)
:mod:`tandem.distributed.state`             ``save_final``: consolidated ``final/`` through ``tandem.models.save_model``
:mod:`tandem.distributed.checkpoint`        sharded checkpoints (torch.distributed.checkpoint + per-process files)
==========================================  ==========================================================================
"""

from tandem.distributed.settings import FSDPSettings, UnsupportedDistributed, check_supported, read_settings
from tandem.distributed.shard import shard_model
from tandem.distributed.state import save_final
from tandem.distributed.tensors import is_sharded, local, whole_sums

__all__ = ["FSDPSettings", "UnsupportedDistributed", "check_supported", "is_sharded", "local", "read_settings",
           "save_final", "shard_model", "whole_sums"]

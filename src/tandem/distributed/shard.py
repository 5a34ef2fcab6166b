"""``fully_shard`` (FSDP2) applied to a Hugging Face model or a peft (LoRA) model around one.

Groups, each a ``fully_shard`` call (a group's parameters are all-gathered together before its forward):

- every decoder layer (the classes the model declares in ``_no_split_modules``, or the accelerate config's
  ``fsdp_transformer_layer_cls_to_wrap``), LoRA adapters included;
- the decoder body (``base_model``: embeddings and final norm), the parent of the layers;
- every other module holding parameters (``lm_head``, a reward model's ``score``, peft's ``modules_to_save``
  copies), each on its own.

tandem's objectives call the body and the head separately (no ``[rows, length, vocab]`` logits), so the body and
each head are independent FSDP roots; every group reshards after its forward, so after a no-grad pass (reference
log-probs, validation) every parameter is a sharded ``DTensor`` again and the optimizer, the regularizers and the
checkpoints always see shards. Models whose input and output embeddings are tied are refused (the tied weight would
need one group spanning the body and the head). With ``bf16`` FSDP2 all-gathers and computes in bfloat16 and
reduces gradients in float32; the sharded weights (and every regularizer snapshot) keep the loaded dtype.
"""

from __future__ import annotations

import logging

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from tandem.distributed.settings import FSDPSettings, UnsupportedDistributed
from tandem.distributed.state import remember
from tandem.distributed.tensors import is_sharded, rank, world_size

__all__ = ["is_sharded", "shard_model"]

log = logging.getLogger("tandem")


def hf_model(model: torch.nn.Module):
    """The transformers model (under a peft wrapper when there is one)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def layer_class_names(model: torch.nn.Module, settings: FSDPSettings) -> tuple[str, ...]:
    return settings.layer_classes or tuple(hf_model(model)._no_split_modules or ())


def mp_policy(mixed_precision: str) -> MixedPrecisionPolicy:
    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _check_untied(model: torch.nn.Module) -> None:
    base = hf_model(model)
    inp, out = base.get_input_embeddings(), base.get_output_embeddings()
    if inp is not None and out is not None and inp.weight is out.weight:
        raise UnsupportedDistributed(
            f"FSDP: {type(base).__name__} ties its input and output embeddings, which tandem's FSDP2 path does not "
            "shard; train it with DDP (configs/accelerate/ddp.yaml): models with tied embeddings are small enough")


def shard_model(model: torch.nn.Module, settings: FSDPSettings, device_type: str, mixed_precision: str = "no"):
    """Apply ``fully_shard`` to the groups of the module docstring (in place; returns ``model``). A meta-device
    twin of the model is remembered first, for the consolidated saves of :mod:`tandem.distributed.state`."""
    if is_sharded(model):
        return model
    _check_untied(model)
    mesh = init_device_mesh(device_type, (world_size(),), mesh_dim_names=("shard",))
    kw = dict(mesh=mesh, reshard_after_forward=True, mp_policy=mp_policy(mixed_precision),
              offload_policy=CPUOffloadPolicy() if settings.offload_params else OffloadPolicy())
    body = hf_model(model).base_model
    layers: list[torch.nn.Module] = []
    if settings.wrap == "layers":
        names = layer_class_names(model, settings)
        layers = [m for m in body.modules() if type(m).__name__ in names]
        if not layers:
            raise UnsupportedDistributed(
                f"FSDP: no decoder layer of class {list(names) or '(none declared)'} in {type(body).__name__}; set "
                "fsdp_transformer_layer_cls_to_wrap in the accelerate config to the model's layer class")
    in_body = {id(m) for m in body.modules()}
    heads = [m for m in model.modules() if id(m) not in in_body and any(True for _ in m.parameters(recurse=False))]
    remember(model)
    for layer in layers:
        fully_shard(layer, **kw)
    fully_shard(body, **kw)
    for head in heads:
        fully_shard(head, **kw)
    params = list(model.named_parameters())
    loose = [n for n, p in params if not isinstance(p, DTensor)]
    if loose:
        raise UnsupportedDistributed(f"FSDP: parameters outside every FSDP group, e.g. {loose[:3]}; this model "
                                     "layout is not supported by tandem's FSDP2 path: train it with DDP")
    if rank() == 0:
        held = sum(p.to_local().numel() for _, p in params)
        log.info("FSDP2: sharded %d tensors (%d trainable) in %d groups over %d processes; process 0 holds %d of "
                 "%d elements", len(params), sum(p.requires_grad for _, p in params), len(layers) + 1 + len(heads),
                 world_size(), held, sum(p.numel() for _, p in params))
    return model

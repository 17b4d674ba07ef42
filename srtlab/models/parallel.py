"""FSDP2 sharding and activation checkpointing of a decoder-only transformer."""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar

import torch

from srtlab.models.forward import recompute_context


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: modules of the classes the model names in ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__} names no decoder layer class in _no_split_modules; "
                         "cannot pick FSDP units or checkpointed blocks")
    return layers


def shard_model(model: torch.nn.Module, mesh) -> None:
    """FSDP2 in place: each decoder layer one unit, the rest (embeddings, final norm, head) the root unit.

    Lightning's mesh is (nodes, devices per node): on a 2-D mesh ``fully_shard`` shards within a node
    and replicates across nodes (HSDP); on one node that is plain FSDP. Parameters become DTensors.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


_CHECKPOINTING: ContextVar[bool] = ContextVar("srtlab_checkpointing", default=True)


@contextlib.contextmanager
def layer_checkpointing(on: bool):
    """Whether the checkpointed decoder layers (:func:`checkpoint_layers`) recompute in this pass (a long pass) or
    keep their activations (a short one, where recomputing costs time and saves little)."""
    token = _CHECKPOINTING.set(bool(on))
    try:
        yield
    finally:
        _CHECKPOINTING.reset(token)


def _checkpoint_when_on(function, *args, **kwargs):
    if _CHECKPOINTING.get() and torch.is_grad_enabled():
        recompute = recompute_context()  # this forward's attention kernel and cache pass, for backward
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs,
                                                 context_fn=lambda: (contextlib.nullcontext(), recompute))
    return function(*args, **kwargs)


def checkpoint_layers(model: torch.nn.Module, offload: bool = False) -> None:
    """Activation checkpointing of every decoder layer: only its input is kept, the rest recomputed in backward
    (in the passes :func:`layer_checkpointing` says).

    Safe with the shared-prompt forward: its cache (``srtlab.models.forward.PrefixLayer``) gives a recomputed layer
    exactly the keys and values it saw in forward. Apply before FSDP sharding (``shard_model``), as torch's FSDP2
    recipes do. ``offload``: on a GPU, keep the checkpointed inputs in pinned host memory until backward
    (Unsloth's long-context recipe), leaving accelerator memory to the recomputed layer alone.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
        checkpoint_wrapper,
        offload_wrapper,
    )

    layers = {id(layer) for layer in decoder_layers(model)}
    wrap = functools.partial(checkpoint_wrapper, checkpoint_fn=_checkpoint_when_on)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrap, check_fn=lambda m: id(m) in layers)
    if offload and next(model.parameters()).is_cuda:
        wrapped = {id(m) for m in model.modules() if type(m).__name__ == "CheckpointWrapper"}
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=offload_wrapper,
                                       check_fn=lambda m: id(m) in wrapped)


def mark_sharded(model: torch.nn.Module) -> None:
    """Tell transformers' ``generate`` the model is FSDP-sharded (``synced_gpus``): ranks sampling different
    prompts then keep decoding until every rank is done, since each forward gathers shards collectively."""
    model._is_fsdp_managed_module = True
    if hasattr(model, "get_base_model"):  # peft: generate runs on the base model
        model.get_base_model()._is_fsdp_managed_module = True

"""FSDP2 sharding and activation checkpointing of a decoder-only transformer."""

from __future__ import annotations

import torch


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


def checkpoint_mlps(model: torch.nn.Module) -> None:
    """Activation checkpointing of each decoder layer's ``mlp`` (recomputed in backward)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    mlps = {id(layer.mlp) for layer in decoder_layers(model)}
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: id(m) in mlps)


def mark_sharded(model: torch.nn.Module) -> None:
    """Tell transformers' ``generate`` the model is FSDP-sharded (``synced_gpus``): ranks sampling different
    prompts then keep decoding until every rank is done, since each forward gathers shards collectively."""
    model._is_fsdp_managed_module = True
    if hasattr(model, "get_base_model"):  # peft: generate runs on the base model
        model.get_base_model()._is_fsdp_managed_module = True

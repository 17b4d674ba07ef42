"""Attention for the sampling copy: single-token decode as two small matmuls, everything else by SDPA.

``transformers`` runs decode attention (one new token per row against the cached keys) through torch's
scaled-dot-product attention. On the CPU that picks the flash kernel, which is tuned for long queries and slow
on one query per row (docs/scale.md has the profile). Written out (the query heads that share a key/value head
as the rows of one matmul, so nothing is repeated or copied), the same attention is a [groups x d] by [d x L]
product per row and head group, in the model's dtype with the softmax in float32 (as exact as SDPA against the
fp32 trainer, by the sync probe; float32 matmuls cost copies of the cache). Every other case (prompts, training,
gradients, dropout) goes to ``transformers``' own SDPA function unchanged.

Registered with ``transformers``' ``AttentionInterface`` under :data:`NAME`; the engine sets it on its own
sampling model (``srtlab.rollout.hf``).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "srtlab_decode"


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """``transformers`` attention function: query [b, H, q, d], key and value [b, K, L, d], mask [b, 1, q, L]
    (bool, True = attend) or None -> ([b, q, H, d], None). Decode (q = 1, no gradient) is computed here."""
    if query.shape[2] != 1 or torch.is_grad_enabled() or dropout or attention_mask is not None and (
            attention_mask.dtype != torch.bool) or kwargs.get("softcap") is not None or query.shape[1] % key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, d)  # head h uses key/value head h // groups
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (scaling if scaling is not None else d ** -0.5)
    if attention_mask is not None:  # [b, 1, 1, L]: padding and the unwritten end of a static cache
        scores = scores.masked_fill(~attention_mask, float("-inf"))  # [b, K, groups, L]
    out = torch.matmul(torch.softmax(scores, -1).to(value.dtype), value)  # [b, K, groups, d]
    return out.to(query.dtype).reshape(b, heads, 1, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA

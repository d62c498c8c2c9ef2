"""Transformers' SDPA attention without copying grouped-query K/V heads.

With a padding mask, transformers expands a grouped-query model's K/V heads to one per query
head on every layer and call (`repeat_kv`), because some CUDA kernels take GQA only unmasked.
torch's CPU kernels take a mask and `enable_gqa` together, so on CPU the copy is pure cost:
12% of a SmolLM2 decode forward at 32 rows (BENCHMARKS.md). `GROUPED_SDPA` is the same
attention reading the shared heads in place; results are bitwise equal."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "sdpa_grouped"


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """[B, H, Q, D] queries over [B, H_kv, K, D] keys and values -> [B, Q, H, D]."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # Without a mask the causal flag does the masking; a single query (decode) sees all keys.
    causal = bool(causal and attention_mask is None and query.shape[2] > 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


def use_grouped_sdpa(model: torch.nn.Module) -> None:
    """Switch a model that will run on CPU from transformers' SDPA to `GROUPED_SDPA`; any other
    attention (eager, flash) is left as it is. Not for GPU models: CUDA's fused kernels take
    GQA only unmasked, and the masked fallback is slower than the copy."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(GROUPED_SDPA)

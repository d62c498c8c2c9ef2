"""Per-token log-probs (and entropies) of a padded batch under a causal LM, computed from its
last hidden states so the full-vocabulary logits of a micro-batch never exist whole."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from relayrl.grouped_attention import GROUPED_SDPA
from relayrl.learner.algorithms.logprobs import head_token_scores
from relayrl.learner.batching import PaddedBatch

# Attention implementations that take a custom [B, 1, Q, K] mask, and the mask each reads:
# SDPA a boolean "may attend", eager an additive bias.
MASK_AS = {"sdpa": torch.bool, GROUPED_SDPA: torch.bool, "eager": torch.float32}


def token_scores(
    engine: Any,
    batch: PaddedBatch,
    temperature: float,
    with_entropy: bool = False,
    loss_positions_only: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """`engine` is a DeepSpeed engine (called through, so its backward hooks are set) or a
    Hugging Face causal LM. The model's own head runs on the last position only; the chunked
    head of head_token_scores runs on every position, or with `loss_positions_only` on the
    loss mask's positions only (every other score is then 0: losses never read it).

    A batch with shared-prompt packing runs its packed rows and gathers the hidden states back
    into the padded layout; the scores are the same, the shared prompts ran once."""
    model = getattr(engine, "module", engine)
    packing = batch.packing
    attention = getattr(model.config, "_attn_implementation", None)
    if packing is not None and attention in MASK_AS:
        mask = packing.attention_mask()
        if MASK_AS[attention] != torch.bool:
            blocked = torch.finfo(model.dtype).min
            mask = torch.zeros(mask.shape, dtype=model.dtype).masked_fill(~mask, blocked)
        out = engine(
            input_ids=packing.input_ids,
            position_ids=packing.position_ids,
            attention_mask=mask.to(packing.input_ids.device),
            output_hidden_states=True,
            logits_to_keep=1,
        )
        packed = out.hidden_states[-1]
        hidden = packed.reshape(-1, packed.shape[-1])[packing.gather.reshape(-1)]
        hidden = hidden.view(*batch.input_ids.shape, packed.shape[-1])
    else:
        out = engine(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        hidden = out.hidden_states[-1]
    return head_token_scores(
        hidden,
        model.get_output_embeddings(),
        batch.input_ids,
        temperature,
        with_entropy,
        where=batch.loss_mask > 0 if loss_positions_only else None,
    )

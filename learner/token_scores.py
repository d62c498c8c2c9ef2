"""Per-token log-probs (and entropies) of a padded batch under a causal LM, computed from its
last hidden states so the full-vocabulary logits of a micro-batch never exist whole."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from relayrl.learner.algorithms.logprobs import head_token_scores
from relayrl.learner.batching import PaddedBatch


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
    loss mask's positions only (every other score is then 0: losses never read it)."""
    model = getattr(engine, "module", engine)
    out = engine(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    return head_token_scores(
        out.hidden_states[-1],
        model.get_output_embeddings(),
        batch.input_ids,
        temperature,
        with_entropy,
        where=batch.loss_mask > 0 if loss_positions_only else None,
    )

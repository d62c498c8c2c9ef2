"""What the learner would score a sampled completion at: the log-probs an engine's reported
behaviour log-probs are checked against."""

from __future__ import annotations

import torch

from relayrl.learner.algorithms.logprobs import token_logprobs


def completion_logprobs(
    model: torch.nn.Module, prompt: list[int], completion: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """Log-probs of `completion`'s tokens after `prompt` under `model`, by the learner's own
    scoring of one plain forward pass."""
    tokens = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    return token_logprobs(logits, tokens, temperature)[0, len(prompt) :]

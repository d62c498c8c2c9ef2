"""TOPR (Le Roux et al. 2025, "Tapered Off-Policy REINFORCE")."""

from __future__ import annotations

import torch

from relayrl.algorithm_config import AggregationMode
from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.importance import importance_weighted
from relayrl.learner.algorithms.masked import masked_mean, scalar_metrics, zero_off_mask
from relayrl.learner.algorithms.registry import register_loss
from relayrl.learner.algorithms.types import LossInputs, LossOutput


@register_loss("topr")
class TOPRLoss:
    """-w * A * log p per token: w = 1 for A >= 0 (plain REINFORCE, no IS weight, so good
    samples are learned even when off-policy), and for A < 0 the sequence's importance ratio
    truncated to [0, 1] (so bad samples the policy already avoids stop pushing it)."""

    def __init__(
        self, *, aggregation: AggregationMode = "token_mean", constant_length: int | None = None
    ) -> None:
        # token_mean rather than the paper's sum over tokens keeps the gradient scale of the
        # other losses, so learning rates carry over.
        self.aggregation = Aggregation(aggregation, constant_length)

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        mask = inputs.loss_mask
        advantages = zero_off_mask(inputs.require("advantages"), mask)
        logprobs = zero_off_mask(inputs.logprobs, mask)
        with torch.no_grad():
            log_ratio = zero_off_mask(logprobs - inputs.require("old_logprobs"), mask)
            # min(pi/mu, 1) of the whole sequence, in log space: the product of token ratios.
            truncated_ratio = torch.exp((log_ratio * mask).sum(dim=-1).clamp(max=0.0))
            negative = advantages < 0
            weight = torch.where(negative, truncated_ratio[:, None], torch.ones_like(advantages))
        per_token = importance_weighted(-weight * advantages * logprobs, inputs.importance_weights)
        with torch.no_grad():
            negative_tokens = negative.float() * mask
            metrics = {
                "negative_fraction": masked_mean(negative.float(), mask),
                "negative_weight_mean": masked_mean(weight, negative_tokens),
            }
        loss = self.aggregation(per_token, mask, normalizer)
        return LossOutput(loss=loss, metrics=scalar_metrics(metrics))

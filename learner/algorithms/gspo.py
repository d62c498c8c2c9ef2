"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): sequence-level ratios."""

from __future__ import annotations

import torch

from relayrl.algorithm_config import AggregationMode
from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.importance import importance_weighted
from relayrl.learner.algorithms.masked import masked_max, masked_mean, scalar_metrics, zero_off_mask
from relayrl.learner.algorithms.ppo import MAX_LOG_RATIO, clipped_surrogate
from relayrl.learner.algorithms.registry import register_loss
from relayrl.learner.algorithms.types import LossInputs, LossOutput


@register_loss("gspo")
class GSPOLoss:
    """One ratio per sequence, exp(mean over its tokens of the log-ratio), clipped per sequence.

    Written in the paper's GSPO-token form: every token's ratio has the sequence ratio's value
    and a gradient through that token's own log-prob, so token-level advantages also work; with
    one advantage per sequence and seq_mean_token_mean this is exactly the sequence objective.
    """

    def __init__(
        self,
        *,
        eps_low: float = 3e-4,
        eps_high: float = 4e-4,
        aggregation: AggregationMode = "seq_mean_token_mean",
        constant_length: int | None = None,
    ) -> None:
        self.eps_low = eps_low
        self.eps_high = eps_high
        self.aggregation = Aggregation(aggregation, constant_length)

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        mask = inputs.loss_mask
        advantages = zero_off_mask(inputs.require("advantages"), mask)
        log_ratio = zero_off_mask(inputs.logprobs - inputs.require("old_logprobs"), mask)
        sequence_log_ratio = (log_ratio * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
        own_gradient = zero_off_mask(inputs.logprobs - inputs.logprobs.detach(), mask)
        token_log_ratio = sequence_log_ratio.detach()[:, None] + own_gradient
        ratio = torch.exp(token_log_ratio.clamp(max=MAX_LOG_RATIO))
        per_token, clip_active = clipped_surrogate(ratio, advantages, self.eps_low, self.eps_high)
        per_token = importance_weighted(per_token, inputs.importance_weights)
        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(clip_active.float(), mask),
                "ratio_mean": masked_mean(ratio, mask),
                "ratio_max": masked_max(ratio, mask),
            }
        loss = self.aggregation(per_token, mask, normalizer)
        return LossOutput(loss=loss, metrics=scalar_metrics(metrics))

"""PPO-clip (Schulman et al. 2017) with clip-higher (DAPO, Yu et al. 2025) and dual-clip
(Ye et al. 2020, "Mastering Complex Control in MOBA Games")."""

from __future__ import annotations

import torch
from torch import Tensor

from relayrl.algorithm_config import AggregationMode
from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.importance import importance_weighted
from relayrl.learner.algorithms.masked import masked_max, masked_mean, scalar_metrics, zero_off_mask
from relayrl.learner.algorithms.registry import register_loss
from relayrl.learner.algorithms.types import LossInputs, LossOutput

# exp(20) is finite in every float type we train in; a diverged token must not make inf * 0.
MAX_LOG_RATIO = 20.0


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """Per-token -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), and where the clip
    decided it (those tokens get no gradient)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@register_loss("ppo_clip")
class PPOClipLoss:
    def __init__(
        self,
        *,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        dual_clip: float | None = None,
        aggregation: AggregationMode = "token_mean",
        constant_length: int | None = None,
    ) -> None:
        self.eps_low = eps_low
        self.eps_high = eps_high
        self.dual_clip = dual_clip
        self.aggregation = Aggregation(aggregation, constant_length)

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        mask = inputs.loss_mask
        advantages = zero_off_mask(inputs.require("advantages"), mask)
        log_ratio = zero_off_mask(inputs.logprobs - inputs.require("old_logprobs"), mask)
        ratio = torch.exp(log_ratio.clamp(max=MAX_LOG_RATIO))
        per_token, clip_active = clipped_surrogate(ratio, advantages, self.eps_low, self.eps_high)
        metrics: dict[str, Tensor] = {}
        if self.dual_clip is not None:
            # A negative-advantage token with a huge ratio would dominate the batch; cap its loss.
            dual_bound = -self.dual_clip * advantages
            dual_active = (advantages < 0) & (per_token > dual_bound)
            per_token = torch.where(dual_active, dual_bound, per_token)
            metrics["dual_clip_fraction"] = masked_mean(dual_active.float(), mask)
        per_token = importance_weighted(per_token, inputs.importance_weights)
        with torch.no_grad():
            metrics |= {
                "clip_fraction": masked_mean(clip_active.float(), mask),
                "ratio_mean": masked_mean(ratio, mask),
                "ratio_max": masked_max(ratio, mask),
                # Schulman's k3 estimate of KL(old || current) over the batch's tokens.
                "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            }
        loss = self.aggregation(per_token, mask, normalizer)
        return LossOutput(loss=loss, metrics=scalar_metrics(metrics))

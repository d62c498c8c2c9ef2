"""Critic value loss for PPO with GAE (Schulman et al. 2017), clipped as in OpenAI baselines."""

from __future__ import annotations

import torch
from torch import Tensor

from relayrl.algorithm_config import AggregationMode
from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.masked import masked_mean, scalar_metrics, zero_off_mask
from relayrl.learner.algorithms.types import LossInputs, LossOutput


class ValueLoss:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, +-value_clip):
    the critic moves at most value_clip from the values that scored the batch per step."""

    def __init__(
        self,
        *,
        value_clip: float | None = 0.2,
        aggregation: AggregationMode = "token_mean",
        constant_length: int | None = None,
    ) -> None:
        self.value_clip = value_clip
        self.aggregation = Aggregation(aggregation, constant_length)

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        mask = inputs.loss_mask
        values = zero_off_mask(inputs.require("values"), mask)
        returns = zero_off_mask(inputs.require("returns"), mask)
        squared_error = (values - returns) ** 2
        with torch.no_grad():
            metrics: dict[str, Tensor] = {
                "value_mean": masked_mean(values, mask),
                "value_mse": masked_mean(squared_error, mask),
            }
        if self.value_clip is not None:
            old_values = zero_off_mask(inputs.require("old_values"), mask)
            step = (values - old_values).clamp(-self.value_clip, self.value_clip)
            clipped_error = (old_values + step - returns) ** 2
            clip_active = clipped_error > squared_error
            metrics["value_clip_fraction"] = masked_mean(clip_active.float(), mask)
            squared_error = torch.maximum(squared_error, clipped_error)
        loss = self.aggregation(0.5 * squared_error, mask, normalizer)
        return LossOutput(loss=loss, metrics=scalar_metrics(metrics))

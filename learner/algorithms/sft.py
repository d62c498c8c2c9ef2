"""Supervised fine-tuning loss for cold-start warm-up in the RL learner."""

from __future__ import annotations

import torch

from relayrl.algorithm_config import AggregationMode
from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.masked import masked_mean, scalar_metrics
from relayrl.learner.algorithms.registry import register_loss
from relayrl.learner.algorithms.types import LossInputs, LossOutput


@register_loss("sft")
class SFTLoss:
    """Negative log-likelihood of the masked tokens; needs only logprobs and loss_mask."""

    def __init__(
        self, *, aggregation: AggregationMode = "token_mean", constant_length: int | None = None
    ) -> None:
        self.aggregation = Aggregation(aggregation, constant_length)

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        nll = -inputs.logprobs
        loss = self.aggregation(nll, inputs.loss_mask, normalizer)
        with torch.no_grad():
            metrics = {"nll": masked_mean(nll, inputs.loss_mask)}
        return LossOutput(loss=loss, metrics=scalar_metrics(metrics))

"""Per micro-batch: where the loss's ratio starts and the behaviour importance weights (see
OffPolicyConfig), plus the step's statistics of those weights over all ranks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from relayrl import metric_keys as keys
from relayrl.algorithm_config import OffPolicyConfig
from relayrl.learner.algorithms.importance import importance_weights
from relayrl.learner.batching import PaddedBatch
from relayrl.learner.rank_sync import max_over_ranks, sum_over_ranks


class OffPolicyCorrection:
    def __init__(self, config: OffPolicyConfig | None) -> None:
        self.config = config
        self._reset()

    def _reset(self) -> None:
        self._totals = torch.zeros(3, dtype=torch.float64)  # weight sum, tokens, corrected
        self._extremes = torch.full((2,), -math.inf, dtype=torch.float64)  # max, -min

    @property
    def needs_proximal(self) -> bool:
        """Decoupled PPO needs the policy's log-probs before the update (a no-grad pass)."""
        return self.config is not None and self.config.decoupled

    def ratio_inputs(
        self, logprobs: Tensor, batch: PaddedBatch, proximal: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """(log-probs the ratio starts from, importance weights or None) for one micro-batch."""
        behaviour = batch.old_logprobs
        if self.config is None:
            return behaviour, None
        start = proximal if self.config.decoupled else logprobs.detach()
        assert start is not None, "decoupled PPO needs the proximal log-probs"
        weights = importance_weights(
            start, behaviour, batch.loss_mask, self.config.importance_sampling
        )
        self._accumulate(weights.raw, weights.corrected, batch.loss_mask > 0)
        return start, weights.weights

    def _accumulate(self, raw: Tensor, corrected: Tensor, on_mask: Tensor) -> None:
        if not on_mask.any():
            return
        values = raw[on_mask].double()
        # Statistics stay on the CPU whatever device the micro-batch trained on.
        self._totals += torch.stack(
            [values.sum(), values.new_tensor(values.numel()), corrected[on_mask].double().sum()]
        ).cpu()
        self._extremes = torch.maximum(
            self._extremes, torch.stack([values.max(), -values.min()]).cpu()
        )

    def metrics(self) -> dict[str, float]:
        """The step's weight statistics over every rank's tokens; every rank calls this."""
        if self.config is None:
            return {}
        weight_sum, tokens, corrected = sum_over_ranks(self._totals).tolist()
        largest, negated_smallest = max_over_ranks(self._extremes).tolist()
        self._reset()
        if not tokens:
            return {}
        metrics = {
            keys.OFF_POLICY_IS_WEIGHT_MEAN: weight_sum / tokens,
            keys.OFF_POLICY_IS_WEIGHT_MAX: largest,
            keys.OFF_POLICY_IS_WEIGHT_MIN: -negated_smallest,
        }
        sampling = self.config.importance_sampling
        if sampling is not None:
            kind = "truncated" if sampling.mode == "truncate" else "masked"
            metrics[keys.off_policy_fraction(kind)] = corrected / tokens
        return metrics

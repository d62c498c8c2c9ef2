"""A policy loss plus a KL penalty to the reference model and an entropy bonus."""

from __future__ import annotations

from torch import Tensor

from relayrl.algorithm_config import KLEstimator
from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.kl import kl_divergence
from relayrl.learner.algorithms.masked import masked_mean, scalar_metrics, zero_off_mask
from relayrl.learner.algorithms.types import LossInputs, LossOutput, PolicyLoss


class RegularizedLoss:
    """loss + kl_coef * KL - entropy_coef * entropy, each aggregated like the policy loss so the
    coefficients mean the same under every aggregation and micro-batch split."""

    def __init__(
        self,
        policy_loss: PolicyLoss,
        *,
        kl_coef: float | None = None,
        kl_estimator: KLEstimator = "k3",
        entropy_coef: float | None = None,
    ) -> None:
        self.policy_loss = policy_loss
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.entropy_coef = entropy_coef

    @property
    def aggregation(self) -> Aggregation:
        return self.policy_loss.aggregation

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        output = self.policy_loss(inputs, normalizer)
        loss, mask = output.loss, inputs.loss_mask
        extra: dict[str, Tensor] = {}
        if self.kl_coef is not None:
            # Zeroed first: garbage off the mask would turn exp() in k3 into a NaN gradient.
            logprobs = zero_off_mask(inputs.logprobs, mask)
            ref_logprobs = zero_off_mask(inputs.require("ref_logprobs"), mask)
            kl = kl_divergence(logprobs, ref_logprobs, self.kl_estimator)
            loss = loss + self.kl_coef * self.aggregation(kl, mask, normalizer)
            extra["kl"] = masked_mean(kl.detach(), mask)
        if self.entropy_coef is not None:
            entropy = inputs.require("entropy")
            loss = loss - self.entropy_coef * self.aggregation(entropy, mask, normalizer)
            extra["entropy"] = masked_mean(entropy.detach(), mask)
        if extra:
            return LossOutput(loss=loss, metrics=output.metrics | scalar_metrics(extra))
        return LossOutput(loss=loss, metrics=output.metrics)

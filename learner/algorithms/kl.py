"""Per-token KL(pi || pi_ref) estimators (Schulman 2020, "Approximating KL Divergence").

With r = pi_ref / pi on tokens sampled from pi: k1 = -log r (unbiased, high variance),
k2 = (log r)^2 / 2 (biased, low variance), k3 = r - 1 - log r (unbiased, low variance, >= 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from relayrl.algorithm_config import KLEstimator
from relayrl.learner.algorithms.masked import zero_off_mask

# Bounds exp() in k3 so one diverged token cannot overflow.
MAX_ABS_LOG_RATIO = 20.0


def kl_divergence(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator) -> Tensor:
    """[B, T] per-token estimate; differentiable in `logprobs`."""
    log_ratio = (ref_logprobs - logprobs).clamp(-MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(log_ratio) - 1.0 - log_ratio


@torch.no_grad()
def kl_penalty_rewards(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    loss_mask: Tensor,
    *,
    coef: float,
    estimator: KLEstimator,
) -> Tensor:
    """[N, T] per-token rewards -coef * KL on policy tokens (AdvantageInputs.token_rewards)."""
    return zero_off_mask(-coef * kl_divergence(logprobs, ref_logprobs, estimator), loss_mask)

"""Behaviour-policy importance weights for off-policy corrections (see OffPolicyConfig).

w = pi / mu, where pi is the policy the loss's ratio starts from and mu the behaviour policy that
sampled the tokens; truncating or masking w bounds the variance a stale sample can add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from relayrl.algorithm_config import ImportanceSamplingConfig
from relayrl.learner.algorithms.masked import zero_off_mask

# exp(20) is finite in every float type we train in; a diverged sequence must not give inf.
MAX_LOG_WEIGHT = 20.0


@dataclass(frozen=True)
class ImportanceWeights:
    weights: Tensor  # [B, T] corrected weights to multiply each token's loss by, 0 off the mask
    raw: Tensor  # [B, T] w before truncation or masking, 0 off the mask
    corrected: Tensor  # [B, T] bool: tokens whose weight the cap truncated or the bounds masked


@torch.no_grad()
def importance_weights(
    logprobs: Tensor,
    behaviour_logprobs: Tensor,
    loss_mask: Tensor,
    config: ImportanceSamplingConfig | None,
) -> ImportanceWeights:
    """Detached weights of `logprobs` [B, T] against `behaviour_logprobs` [B, T]; with no
    config the raw weights are used as they are (the uncapped decoupled objective)."""
    on_mask = loss_mask > 0
    log_weight = zero_off_mask(logprobs - behaviour_logprobs, loss_mask)
    if config is not None and config.level == "sequence":
        sequence_log_weight = log_weight.sum(dim=-1, keepdim=True)
        log_weight = zero_off_mask(sequence_log_weight.expand_as(log_weight), loss_mask)
    log_weight = log_weight.clamp(-MAX_LOG_WEIGHT, MAX_LOG_WEIGHT)
    raw = zero_off_mask(torch.exp(log_weight), loss_mask)
    if config is None:
        return ImportanceWeights(raw, raw, torch.zeros_like(on_mask))
    if config.mode == "truncate":
        corrected = on_mask & (log_weight > math.log(config.cap))
        weights = raw.clamp(max=config.cap)
    else:
        lower = -math.inf if config.lower is None else math.log(config.lower)
        corrected = on_mask & ((log_weight > math.log(config.cap)) | (log_weight < lower))
        weights = torch.where(corrected, torch.zeros_like(raw), raw)
    return ImportanceWeights(weights, raw, corrected)


def importance_weighted(per_token: Tensor, weights: Tensor | None) -> Tensor:
    """A policy loss's per-token terms times the importance weights, when there are any."""
    return per_token if weights is None else per_token * weights

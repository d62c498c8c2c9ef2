"""Rewards as the advantage estimator sees them: the environment's reward, shaped by the
overlong penalty, plus the per-token KL penalty when the KL is placed in the reward."""

from __future__ import annotations

import torch
from torch import Tensor

from relayrl.algorithm_config import AlgorithmConfig, KLConfig, OverlongConfig
from relayrl.learner.algorithms.kl import kl_penalty_rewards
from relayrl.learner.algorithms.overlong import overlong_penalty
from relayrl.learner.algorithms.types import AdvantageInputs
from relayrl.learner.batching import PaddedBatch
from relayrl.learner.scoring import PROXIMAL, REFERENCE, VALUES
from relayrl.trajectory import Trajectory


def overlong_penalties(trajectories: list[Trajectory], overlong: OverlongConfig) -> Tensor:
    """[N] penalty of each trajectory for the tokens its policy generated."""
    lengths = torch.tensor([t.num_sampled_tokens for t in trajectories])
    return overlong_penalty(
        lengths,
        max_len=overlong.max_len,
        buffer_len=overlong.buffer_len,
        penalty_factor=overlong.penalty_factor,
    )


def shaped_rewards(trajectories: list[Trajectory], overlong: OverlongConfig | None) -> Tensor:
    """[N] float32: each trajectory's reward plus its overlong penalty (if configured)."""
    rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32)
    if overlong is None:
        return rewards
    return rewards + overlong_penalties(trajectories, overlong)


def kl_token_rewards(
    kl: KLConfig | None, logprobs: Tensor, ref_logprobs: Tensor | None, loss_mask: Tensor
) -> Tensor | None:
    """[N, T] -coef * KL(policy || reference) per token when the KL is placed in the reward;
    `logprobs` are those of the policy that sampled (or the proximal policy)."""
    if kl is None or kl.placement != "reward":
        return None
    assert ref_logprobs is not None, "a KL in the reward needs the reference log-probs"
    return kl_penalty_rewards(
        logprobs, ref_logprobs, loss_mask, coef=kl.coef, estimator=kl.estimator
    )


def advantage_inputs(
    trajectories: list[Trajectory],
    batch: PaddedBatch,
    scores: dict[str, Tensor],
    algorithm: AlgorithmConfig,
) -> AdvantageInputs:
    """The whole batch as the estimator needs it; `batch` pads every trajectory."""
    group_index = {g: i for i, g in enumerate(dict.fromkeys(t.group_id for t in trajectories))}
    # The KL reward compares the reference with the policy the ratio starts from.
    policy_logprobs = scores.get(PROXIMAL, batch.old_logprobs)
    return AdvantageInputs(
        rewards=shaped_rewards(trajectories, algorithm.overlong),
        group_ids=torch.tensor([group_index[t.group_id] for t in trajectories]),
        loss_mask=batch.loss_mask,
        token_rewards=kl_token_rewards(
            algorithm.kl, policy_logprobs, scores.get(REFERENCE), batch.loss_mask
        ),
        values=scores.get(VALUES),
    )

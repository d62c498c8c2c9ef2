"""Build the estimator and losses a validated AlgorithmConfig names."""

from __future__ import annotations

import inspect
from functools import partial
from typing import assert_never

from relayrl.algorithm_config import (
    AdvantageConfig,
    AlgorithmConfig,
    CriticConfig,
    CustomLossConfig,
    DrGRPOAdvantageConfig,
    GAEAdvantageConfig,
    GRPOAdvantageConfig,
    LossConfig,
    ReinforcePlusPlusAdvantageConfig,
    RLOOAdvantageConfig,
)

# Imported for their @register_loss side effect: the built-in losses.
from relayrl.learner.algorithms import gspo, ppo, sft, topr  # noqa: F401
from relayrl.learner.algorithms.advantages import (
    dr_grpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from relayrl.learner.algorithms.critic import ValueLoss
from relayrl.learner.algorithms.estimators import (
    GAEEstimator,
    SequenceEstimator,
    TokenReinforcePlusPlus,
)
from relayrl.learner.algorithms.registry import resolve_loss_factory
from relayrl.learner.algorithms.regularized import RegularizedLoss
from relayrl.learner.algorithms.types import AdvantageEstimator, PolicyLoss


def build_advantage_estimator(config: AdvantageConfig) -> AdvantageEstimator:
    match config:
        case GRPOAdvantageConfig():
            return SequenceEstimator(
                partial(grpo_advantages, normalize_std=config.normalize_std, eps=config.eps)
            )
        case DrGRPOAdvantageConfig():
            return SequenceEstimator(dr_grpo_advantages)
        case RLOOAdvantageConfig():
            return SequenceEstimator(rloo_advantages)
        case ReinforcePlusPlusAdvantageConfig(token_level_returns=True):
            return TokenReinforcePlusPlus(
                gamma=config.gamma, group_baseline=config.group_baseline, eps=config.eps
            )
        case ReinforcePlusPlusAdvantageConfig():
            return SequenceEstimator(
                partial(
                    reinforce_pp_advantages, group_baseline=config.group_baseline, eps=config.eps
                )
            )
        case GAEAdvantageConfig():
            return GAEEstimator(
                gamma=config.gamma, lam=config.lam, normalize=config.normalize, eps=config.eps
            )
        case _:
            assert_never(config)


def build_loss(config: LossConfig) -> PolicyLoss:
    """The policy loss alone; a custom target is called with its params as keyword arguments."""
    if isinstance(config, CustomLossConfig):
        factory = resolve_loss_factory(config.target)
        try:
            inspect.signature(factory).bind(**config.params)
        except TypeError as error:
            raise ValueError(f"loss target {config.target!r} rejects its params: {error}") from None
        return factory(**config.params)
    return resolve_loss_factory(config.name)(**config.model_dump(exclude={"name"}))


def build_critic_loss(config: CriticConfig) -> ValueLoss:
    return ValueLoss(**config.model_dump(exclude={"lr"}))


def build_objective(config: AlgorithmConfig) -> PolicyLoss:
    """The policy loss with the KL penalty (when placed in the loss) and the entropy bonus."""
    policy_loss = build_loss(config.loss)
    kl = config.kl if config.kl is not None and config.kl.placement == "loss" else None
    if kl is None and config.entropy is None:
        return policy_loss
    return RegularizedLoss(
        policy_loss,
        kl_coef=kl.coef if kl else None,
        kl_estimator=kl.estimator if kl else "k3",
        entropy_coef=config.entropy.coef if config.entropy else None,
    )

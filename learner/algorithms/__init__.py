"""The learner's algorithm library: advantage estimators, losses, regularizers, filters."""

from relayrl.learner.algorithms.aggregation import Aggregation
from relayrl.learner.algorithms.build import (
    build_advantage_estimator,
    build_critic_loss,
    build_loss,
    build_objective,
)
from relayrl.learner.algorithms.filters import dynamic_sampling_keep_mask
from relayrl.learner.algorithms.importance import ImportanceWeights, importance_weights
from relayrl.learner.algorithms.kl import kl_divergence, kl_penalty_rewards
from relayrl.learner.algorithms.logprobs import token_entropy, token_logprobs
from relayrl.learner.algorithms.overlong import overlong_penalty
from relayrl.learner.algorithms.registry import register_loss
from relayrl.learner.algorithms.types import (
    AdvantageEstimator,
    AdvantageInputs,
    AdvantageOutput,
    LossInputs,
    LossOutput,
    PolicyLoss,
)

__all__ = [
    "AdvantageEstimator",
    "AdvantageInputs",
    "AdvantageOutput",
    "Aggregation",
    "ImportanceWeights",
    "LossInputs",
    "LossOutput",
    "PolicyLoss",
    "build_advantage_estimator",
    "build_critic_loss",
    "build_loss",
    "build_objective",
    "dynamic_sampling_keep_mask",
    "importance_weights",
    "kl_divergence",
    "kl_penalty_rewards",
    "overlong_penalty",
    "register_loss",
    "token_entropy",
    "token_logprobs",
]

"""Inputs, outputs and protocols shared by the advantage estimators and the losses.

Shapes: N or B sequences, T token positions. Every per-token tensor is aligned to the tokens:
position t holds the quantity for token t (its log-prob given tokens[:t], its advantage, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Protocol

from torch import Tensor

from relayrl.learner.algorithms.aggregation import Aggregation


@dataclass(frozen=True, kw_only=True)
class AdvantageInputs:
    rewards: Tensor  # [N] float: one scalar reward per sequence
    group_ids: Tensor  # [N] int64: equal for the samples of one prompt
    loss_mask: Tensor  # [N, T] float: 1 on tokens the policy sampled
    # [N, T] per-token rewards added to `rewards`, e.g. -beta * KL (see kl.kl_penalty_rewards)
    # or per-turn rewards; one on an observation token counts for the policy token before it.
    token_rewards: Tensor | None = None
    values: Tensor | None = None  # [N, T] critic values V(tokens[:t]) (GAE only)


@dataclass(frozen=True, kw_only=True)
class AdvantageOutput:
    advantages: Tensor  # [N, T], 0 off the loss mask
    returns: Tensor | None = None  # [N, T] value targets for the critic (GAE only)


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    # [B, T] current policy log p(tokens[t] | tokens[:t]); may be garbage where loss_mask is 0.
    logprobs: Tensor
    loss_mask: Tensor  # [B, T] float: 1 on tokens the policy sampled
    old_logprobs: Tensor | None = None  # [B, T] behaviour (or proximal) policy log-probs
    advantages: Tensor | None = None  # [B, T]
    ref_logprobs: Tensor | None = None  # [B, T] reference model log-probs (KL in the loss)
    entropy: Tensor | None = None  # [B, T] current policy entropy (entropy bonus)
    values: Tensor | None = None  # [B, T] critic values being trained
    old_values: Tensor | None = None  # [B, T] critic values when the batch was scored
    returns: Tensor | None = None  # [B, T] value targets
    # [B, T] detached behaviour importance weights multiplying each token's policy loss
    # (off-policy corrections, see importance.py); a custom loss should apply them too.
    importance_weights: Tensor | None = None

    def require(self, name: str) -> Tensor:
        """The named input, or an error naming it if the caller left it out."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this loss needs LossInputs.{name}, which was not given")
        return value

    def rows(self, index: slice) -> LossInputs:
        """The same inputs for a subset of sequences (one micro-batch)."""
        sliced = {
            item.name: value[index]
            for item in fields(self)
            if (value := getattr(self, item.name)) is not None
        }
        return replace(self, **sliced)


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # scalar to backpropagate: this micro-batch's share of the batch loss
    metrics: dict[str, float] = field(default_factory=dict)  # means over this micro-batch


class AdvantageEstimator(Protocol):
    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput: ...


class PolicyLoss(Protocol):
    """A loss over a micro-batch; `normalizer` is `aggregation.normalizer` of the whole batch."""

    @property
    def aggregation(self) -> Aggregation: ...

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput: ...

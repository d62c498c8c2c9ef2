"""The learner's algorithm: advantage estimator, loss, critic and regularizers.

Lives in the spine so a job config validates without importing the learner (and torch). Each
estimator and loss is one model with a `name` tag; a config names exactly one and may set only
that variant's fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AggregationMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
KLEstimator = Literal["k1", "k2", "k3"]


class _Strict(BaseModel):
    # Infinity passes every lower bound, NaN any unbounded field: refuse both everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- advantage estimators -------------------------------------------------------------------


class GRPOAdvantageConfig(_Strict):
    """GRPO (Shao et al. 2024, DeepSeekMath): (reward - group mean) / group std."""

    name: Literal["grpo"] = "grpo"
    normalize_std: bool = True
    eps: float = Field(1e-6, gt=0)


class DrGRPOAdvantageConfig(_Strict):
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): group mean baseline only.

    The paper also drops length normalization: pair with loss aggregation `seq_mean_token_sum`
    and `constant_length` set to the generation budget.
    """

    name: Literal["dr_grpo"] = "dr_grpo"


class RLOOAdvantageConfig(_Strict):
    """RLOO (Ahmadian et al. 2024): reward minus the mean reward of the rest of its group."""

    name: Literal["rloo"] = "rloo"


class ReinforcePlusPlusAdvantageConfig(_Strict):
    """REINFORCE++ (Hu 2025): returns normalized over the whole batch, no critic."""

    name: Literal["reinforce_pp"] = "reinforce_pp"
    # Subtract the group mean before batch normalization (the paper's "REINFORCE++-baseline").
    group_baseline: bool = False
    # Per-token returns (sum of later token rewards), so a KL penalty in the reward shapes each
    # token; otherwise one advantage per sequence.
    token_level_returns: bool = False
    gamma: float = Field(1.0, gt=0, le=1)
    eps: float = Field(1e-6, gt=0)

    @model_validator(mode="after")
    def _gamma_needs_token_returns(self) -> ReinforcePlusPlusAdvantageConfig:
        if self.gamma != 1.0 and not self.token_level_returns:
            raise ValueError("gamma applies only with token_level_returns: true")
        return self


class GAEAdvantageConfig(_Strict):
    """GAE (Schulman et al. 2016) over the policy's tokens, from a critic's values."""

    name: Literal["gae"] = "gae"
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    # Whiten advantages over all policy tokens of the batch, as PPO implementations do.
    normalize: bool = True
    eps: float = Field(1e-6, gt=0)


AdvantageConfig = Annotated[
    GRPOAdvantageConfig
    | DrGRPOAdvantageConfig
    | RLOOAdvantageConfig
    | ReinforcePlusPlusAdvantageConfig
    | GAEAdvantageConfig,
    Field(discriminator="name"),
]


# --- losses ---------------------------------------------------------------------------------


class _AggregatedLossConfig(_Strict):
    # token_mean: sum over every token of the batch / token count (DAPO).
    # seq_mean_token_mean: mean over tokens within a sequence, then over sequences.
    # seq_mean_token_sum: token sum per sequence (/ constant_length if set), mean over sequences.
    aggregation: AggregationMode = "token_mean"
    constant_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _constant_length_needs_token_sum(self) -> _AggregatedLossConfig:
        if self.constant_length is not None and self.aggregation != "seq_mean_token_sum":
            raise ValueError("constant_length applies only to aggregation 'seq_mean_token_sum'")
        return self


class PPOClipLossConfig(_AggregatedLossConfig):
    """PPO-clip (Schulman 2017), clip-higher (DAPO, Yu 2025), dual-clip (Ye 2020)."""

    name: Literal["ppo_clip"] = "ppo_clip"
    eps_low: float = Field(0.2, gt=0, lt=1)
    eps_high: float = Field(0.2, gt=0)
    # Bounds the loss of a negative-advantage token at dual_clip * |advantage|.
    dual_clip: float | None = Field(None, gt=1)


class GSPOLossConfig(_AggregatedLossConfig):
    """GSPO (Zheng et al. 2025): one length-normalized importance ratio per sequence, clipped."""

    name: Literal["gspo"] = "gspo"
    # The paper's ranges: sequence ratios sit much closer to 1 than token ratios.
    eps_low: float = Field(3e-4, gt=0, lt=1)
    eps_high: float = Field(4e-4, gt=0)
    aggregation: AggregationMode = "seq_mean_token_mean"


class TOPRLossConfig(_AggregatedLossConfig):
    """TOPR (Le Roux et al. 2025): REINFORCE for positive, truncated IS for negative samples."""

    name: Literal["topr"] = "topr"


class SFTLossConfig(_AggregatedLossConfig):
    """Negative log-likelihood of the masked tokens, for cold-start warm-up."""

    name: Literal["sft"] = "sft"


class CustomLossConfig(_Strict):
    """A user loss: `target` is "module:attribute" or a name given to `register_loss`.

    The target is a factory called with `params` as keyword arguments; it returns a PolicyLoss.
    """

    name: Literal["custom"] = "custom"
    target: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


LossConfig = Annotated[
    PPOClipLossConfig | GSPOLossConfig | TOPRLossConfig | SFTLossConfig | CustomLossConfig,
    Field(discriminator="name"),
]


class CriticConfig(_AggregatedLossConfig):
    """The critic GAE needs: a value head on its own engine, trained with a clipped value loss."""

    value_clip: float | None = Field(0.2, gt=0)
    # The critic's own learning rate; none uses learner.lr.
    lr: float | None = Field(None, gt=0)


# --- regularizers and filters ---------------------------------------------------------------


class KLConfig(_Strict):
    """KL to the reference model, estimated per token (Schulman 2020, "Approximating KL")."""

    coef: float = Field(gt=0)
    estimator: KLEstimator = "k3"
    # loss: coef * KL added to the objective; reward: per-token reward -coef * KL.
    placement: Literal["loss", "reward"] = "loss"


class EntropyConfig(_Strict):
    """Entropy bonus: coef * entropy is subtracted from the loss."""

    coef: float = Field(gt=0)


class DynamicSamplingConfig(_Strict):
    """DAPO dynamic sampling (Yu et al. 2025): drop groups whose rewards are all equal."""

    # Groups whose rewards span no more than this count as all equal.
    reward_tolerance: float = Field(0.0, ge=0)


class OverlongConfig(_Strict):
    """DAPO soft overlong punishment (Yu et al. 2025): a linear penalty over the last buffer_len."""

    max_len: int = Field(ge=1)
    buffer_len: int = Field(ge=1)
    penalty_factor: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _buffer_fits(self) -> OverlongConfig:
        if self.buffer_len > self.max_len:
            raise ValueError(f"buffer_len {self.buffer_len} exceeds max_len {self.max_len}")
        return self


class ImportanceSamplingConfig(_Strict):
    """Importance weights w = pi / mu between the policy the loss's ratio starts from and the
    behaviour policy mu that sampled the tokens (the stored Trajectory.logprobs).

    truncate (IMPALA's rho-bar, Espeholt et al. 2018; TIS, Yao et al. 2025): min(w, cap).
    mask (IcePop, Ling Team 2025; MIS, Liu et al. 2025): w inside [lower, cap], else 0.
    sequence level uses one w per sequence, the product of its token ratios.
    """

    level: Literal["token", "sequence"] = "token"
    mode: Literal["truncate", "mask"] = "truncate"
    cap: float = Field(2.0, gt=1)
    # mask only: weights below this are masked too; none masks only above the cap.
    lower: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _lower_needs_mask(self) -> ImportanceSamplingConfig:
        if self.lower is not None and self.mode != "mask":
            raise ValueError("importance_sampling.lower applies only to mode 'mask'")
        return self


class OffPolicyConfig(_Strict):
    """Corrections for tokens sampled by an older policy, or by an inference engine whose
    numerics differ from the learner's.

    decoupled (Hilton et al. 2022; AReaL, Fu et al. 2025): the clipped ratio starts from the
    proximal policy, the learner's own log-probs of the batch before this step's update, and the
    behaviour policy enters only through the importance weight pi_prox / mu (capped by
    importance_sampling when set). Not decoupled with importance_sampling: the weight is
    pi / mu of the current policy, and the ratio starts from the current policy itself, so the
    truncated or masked weight is the whole off-policy correction.
    """

    decoupled: bool = False
    importance_sampling: ImportanceSamplingConfig | None = None

    @model_validator(mode="after")
    def _does_something(self) -> OffPolicyConfig:
        if not self.decoupled and self.importance_sampling is None:
            raise ValueError("off_policy needs decoupled: true or importance_sampling")
        return self


class AlgorithmConfig(_Strict):
    """Defaults: GRPO advantages, PPO-clip (eps 0.2, token_mean), no KL, no critic."""

    advantage: AdvantageConfig = Field(default_factory=GRPOAdvantageConfig)
    loss: LossConfig = Field(default_factory=PPOClipLossConfig)
    critic: CriticConfig | None = None
    kl: KLConfig | None = None
    entropy: EntropyConfig | None = None
    dynamic_sampling: DynamicSamplingConfig | None = None
    overlong: OverlongConfig | None = None
    off_policy: OffPolicyConfig | None = None

    @model_validator(mode="after")
    def _critic_iff_gae(self) -> AlgorithmConfig:
        uses_gae = self.advantage.name == "gae"
        if uses_gae and self.critic is None:
            raise ValueError("advantage 'gae' needs a critic: set algorithm.critic")
        if self.critic is not None and not uses_gae:
            raise ValueError("algorithm.critic is only used by advantage 'gae'")
        return self

    @model_validator(mode="after")
    def _off_policy_needs_a_behaviour_policy(self) -> AlgorithmConfig:
        if self.off_policy is not None and self.loss.name == "sft":
            raise ValueError(
                "off_policy does not apply to loss 'sft': demonstrations have no behaviour policy"
            )
        return self

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

    name: Literal["grpo"] = Field("grpo", description="Selects this variant.")
    normalize_std: bool = Field(True, description="Divide by the group's reward std.")
    eps: float = Field(1e-6, gt=0, description="Added to the std before dividing.")


class DrGRPOAdvantageConfig(_Strict):
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): group mean baseline only.

    The paper also drops length normalization: pair with loss aggregation `seq_mean_token_sum`
    and `constant_length` set to the generation budget.
    """

    name: Literal["dr_grpo"] = Field("dr_grpo", description="Selects this variant.")


class RLOOAdvantageConfig(_Strict):
    """RLOO (Ahmadian et al. 2024): reward minus the mean reward of the rest of its group."""

    name: Literal["rloo"] = Field("rloo", description="Selects this variant.")


class ReinforcePlusPlusAdvantageConfig(_Strict):
    """REINFORCE++ (Hu 2025): returns normalized over the whole batch, no critic."""

    name: Literal["reinforce_pp"] = Field("reinforce_pp", description="Selects this variant.")
    group_baseline: bool = Field(
        False,
        description="Subtract the group mean before batch normalization (the paper's "
        '"REINFORCE++-baseline").',
    )
    token_level_returns: bool = Field(
        False,
        description="Per-token returns (sum of later token rewards), so a KL penalty in the "
        "reward shapes each token; otherwise one advantage per sequence.",
    )
    gamma: float = Field(
        1.0, gt=0, le=1, description="Discount of later token rewards (token_level_returns)."
    )
    eps: float = Field(1e-6, gt=0, description="Added to the batch std before dividing.")

    @model_validator(mode="after")
    def _gamma_needs_token_returns(self) -> ReinforcePlusPlusAdvantageConfig:
        if self.gamma != 1.0 and not self.token_level_returns:
            raise ValueError("gamma applies only with token_level_returns: true")
        return self


class GAEAdvantageConfig(_Strict):
    """GAE (Schulman et al. 2016) over the policy's tokens, from a critic's values."""

    name: Literal["gae"] = Field("gae", description="Selects this variant.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda: bias against variance.")
    normalize: bool = Field(
        True,
        description="Whiten advantages over all policy tokens of the batch, as PPO "
        "implementations do.",
    )
    eps: float = Field(1e-6, gt=0, description="Added to the std before whitening.")


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
    aggregation: AggregationMode = Field(
        "token_mean",
        description="token_mean: sum over every token of the batch / token count (DAPO); "
        "seq_mean_token_mean: mean over tokens within a sequence, then over sequences; "
        "seq_mean_token_sum: token sum per sequence (/ constant_length if set), mean over "
        "sequences.",
    )
    constant_length: int | None = Field(
        None,
        ge=1,
        description="seq_mean_token_sum only: divide each sequence's sum by this constant "
        "(Dr.GRPO: the generation budget).",
    )

    @model_validator(mode="after")
    def _constant_length_needs_token_sum(self) -> _AggregatedLossConfig:
        if self.constant_length is not None and self.aggregation != "seq_mean_token_sum":
            raise ValueError("constant_length applies only to aggregation 'seq_mean_token_sum'")
        return self


class PPOClipLossConfig(_AggregatedLossConfig):
    """PPO-clip (Schulman 2017), clip-higher (DAPO, Yu 2025), dual-clip (Ye 2020)."""

    name: Literal["ppo_clip"] = Field("ppo_clip", description="Selects this variant.")
    eps_low: float = Field(0.2, gt=0, lt=1, description="The ratio's lower clip: 1 - eps_low.")
    eps_high: float = Field(
        0.2, gt=0, description="The ratio's upper clip: 1 + eps_high (clip-higher above eps_low)."
    )
    dual_clip: float | None = Field(
        None,
        gt=1,
        description="Bounds the loss of a negative-advantage token at dual_clip * |advantage|.",
    )


class GSPOLossConfig(_AggregatedLossConfig):
    """GSPO (Zheng et al. 2025): one length-normalized importance ratio per sequence, clipped."""

    name: Literal["gspo"] = Field("gspo", description="Selects this variant.")
    eps_low: float = Field(
        3e-4,
        gt=0,
        lt=1,
        description="Lower clip of the sequence ratio (the paper's range: sequence ratios sit "
        "much closer to 1 than token ratios).",
    )
    eps_high: float = Field(4e-4, gt=0, description="Upper clip of the sequence ratio.")
    aggregation: AggregationMode = Field(
        "seq_mean_token_mean", description="How token losses are averaged (see ppo_clip)."
    )


class TOPRLossConfig(_AggregatedLossConfig):
    """TOPR (Le Roux et al. 2025): REINFORCE for positive, truncated IS for negative samples."""

    name: Literal["topr"] = Field("topr", description="Selects this variant.")


class SFTLossConfig(_AggregatedLossConfig):
    """Negative log-likelihood of the masked tokens, for cold-start warm-up."""

    name: Literal["sft"] = Field("sft", description="Selects this variant.")


class CustomLossConfig(_Strict):
    """A user loss: `target` is "module:attribute" or a name given to `register_loss`.

    The target is a factory called with `params` as keyword arguments; it returns a PolicyLoss.
    """

    name: Literal["custom"] = Field("custom", description="Selects this variant.")
    target: str = Field(
        min_length=1, description='"module:attribute" or a name given to register_loss.'
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the target factory."
    )


LossConfig = Annotated[
    PPOClipLossConfig | GSPOLossConfig | TOPRLossConfig | SFTLossConfig | CustomLossConfig,
    Field(discriminator="name"),
]


class CriticConfig(_AggregatedLossConfig):
    """The critic GAE needs: a value head on its own engine, trained with a clipped value loss."""

    value_clip: float | None = Field(
        0.2, gt=0, description="Clip of the value change per update; none: unclipped."
    )
    lr: float | None = Field(
        None, gt=0, description="The critic's own learning rate; none uses learner.lr."
    )


# --- regularizers and filters ---------------------------------------------------------------


class KLConfig(_Strict):
    """KL to the reference model, estimated per token (Schulman 2020, "Approximating KL")."""

    coef: float = Field(gt=0, description="Weight of the KL term.")
    estimator: KLEstimator = Field("k3", description="Per-token KL estimator (k1, k2, k3).")
    placement: Literal["loss", "reward"] = Field(
        "loss",
        description="loss: coef * KL added to the objective; reward: per-token reward -coef * KL.",
    )


class EntropyConfig(_Strict):
    """Entropy bonus: coef * entropy is subtracted from the loss."""

    coef: float = Field(gt=0, description="Weight of the entropy bonus.")


class DynamicSamplingConfig(_Strict):
    """DAPO dynamic sampling (Yu et al. 2025): drop groups whose rewards are all equal."""

    reward_tolerance: float = Field(
        0.0, ge=0, description="Groups whose rewards span no more than this count as all equal."
    )


class OverlongConfig(_Strict):
    """DAPO soft overlong punishment (Yu et al. 2025): a linear penalty over the last buffer_len."""

    max_len: int = Field(ge=1, description="Response length at which the penalty is whole.")
    buffer_len: int = Field(
        ge=1, description="The penalty grows linearly over the last buffer_len tokens."
    )
    penalty_factor: float = Field(1.0, gt=0, description="The whole penalty, in reward.")

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

    level: Literal["token", "sequence"] = Field(
        "token", description="One weight per token, or one per sequence."
    )
    mode: Literal["truncate", "mask"] = Field(
        "truncate", description="truncate: min(w, cap); mask: w inside [lower, cap], else 0."
    )
    cap: float = Field(2.0, gt=1, description="Upper bound on the weight.")
    lower: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="mask only: weights below this are masked too; none masks only above the cap.",
    )

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

    decoupled: bool = Field(
        False, description="The clipped ratio starts from the proximal policy (decoupled PPO)."
    )
    importance_sampling: ImportanceSamplingConfig | None = Field(
        None, description="Importance weights between the policy and the behaviour policy."
    )

    @model_validator(mode="after")
    def _does_something(self) -> OffPolicyConfig:
        if not self.decoupled and self.importance_sampling is None:
            raise ValueError("off_policy needs decoupled: true or importance_sampling")
        return self


class AlgorithmConfig(_Strict):
    """Defaults: GRPO advantages, PPO-clip (eps 0.2, token_mean), no KL, no critic."""

    advantage: AdvantageConfig = Field(
        default_factory=GRPOAdvantageConfig,
        description="The advantage estimator, by name: grpo, dr_grpo, rloo, reinforce_pp, gae.",
    )
    loss: LossConfig = Field(
        default_factory=PPOClipLossConfig,
        description="The policy loss, by name: ppo_clip, gspo, topr, sft, custom.",
    )
    critic: CriticConfig | None = Field(None, description="The critic; gae needs one.")
    kl: KLConfig | None = Field(None, description="KL to the reference model; none: off.")
    entropy: EntropyConfig | None = Field(None, description="Entropy bonus; none: off.")
    dynamic_sampling: DynamicSamplingConfig | None = Field(
        None, description="Drop groups whose rewards are all equal; none: off."
    )
    overlong: OverlongConfig | None = Field(
        None, description="Soft overlong punishment; none: off."
    )
    off_policy: OffPolicyConfig | None = Field(
        None, description="Off-policy corrections; none: off."
    )

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

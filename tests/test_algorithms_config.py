"""Algorithm config: every variant parses, strangers are rejected by name, custom losses load."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from relayrl.algorithm_config import (
    AdvantageConfig,
    AlgorithmConfig,
    CriticConfig,
    LossConfig,
    PPOClipLossConfig,
)
from relayrl.learner.algorithms import (
    LossInputs,
    build_advantage_estimator,
    build_critic_loss,
    build_loss,
    build_objective,
    register_loss,
)
from relayrl.learner.algorithms.critic import ValueLoss
from relayrl.learner.algorithms.gspo import GSPOLoss
from relayrl.learner.algorithms.ppo import PPOClipLoss
from relayrl.learner.algorithms.registry import registered_losses
from relayrl.learner.algorithms.sft import SFTLoss
from relayrl.learner.algorithms.topr import TOPRLoss

ADVANTAGES = [
    {"name": "grpo", "normalize_std": False, "eps": 1e-4},
    {"name": "dr_grpo"},
    {"name": "rloo"},
    {"name": "reinforce_pp", "group_baseline": True},
    {"name": "reinforce_pp", "token_level_returns": True, "gamma": 0.99},
    {"name": "gae", "gamma": 0.99, "lam": 0.9, "normalize": False},
]
LOSSES = [
    ({"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28, "dual_clip": 3.0}, PPOClipLoss),
    ({"name": "gspo", "aggregation": "seq_mean_token_mean"}, GSPOLoss),
    ({"name": "topr", "aggregation": "seq_mean_token_sum", "constant_length": 512}, TOPRLoss),
    ({"name": "sft"}, SFTLoss),
]


@pytest.mark.parametrize("data", ADVANTAGES)
def test_each_advantage_variant_parses_and_builds(data: dict) -> None:
    config = TypeAdapter(AdvantageConfig).validate_python(data)
    assert config.name == data["name"]
    assert callable(build_advantage_estimator(config))


@pytest.mark.parametrize(("data", "loss_type"), LOSSES)
def test_each_loss_variant_parses_and_builds(data: dict, loss_type: type) -> None:
    loss = build_loss(TypeAdapter(LossConfig).validate_python(data))
    assert isinstance(loss, loss_type)
    assert loss.aggregation.mode == data.get("aggregation", loss.aggregation.mode)


def test_defaults_are_grpo_with_ppo_clip_and_no_kl() -> None:
    config = AlgorithmConfig()
    assert config.advantage.name == "grpo"
    assert config.loss == PPOClipLossConfig(eps_low=0.2, eps_high=0.2, aggregation="token_mean")
    assert config.kl is None and config.entropy is None and config.critic is None
    assert isinstance(build_objective(config), PPOClipLoss)


def test_critic_builds_a_value_loss() -> None:
    config = AlgorithmConfig.model_validate({"advantage": {"name": "gae"}, "critic": {}})
    assert config.critic is not None
    loss = build_critic_loss(config.critic)
    assert isinstance(loss, ValueLoss) and loss.value_clip == 0.2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"advantage": {"name": "rloo", "normalize_std": True}}, "normalize_std"),
        ({"loss": {"name": "sft", "eps_high": 0.3}}, "eps_high"),
        ({"loss": {"name": "gspo", "dual_clip": 3.0}}, "dual_clip"),
        ({"kl": {"coef": 0.1, "beta": 0.1}}, "beta"),
        ({"clip": 0.2}, "clip"),
    ],
)
def test_unknown_fields_are_rejected_by_name(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        AlgorithmConfig.model_validate(data)
    assert field in str(error.value) and "Extra inputs are not permitted" in str(error.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"loss": {"eps_low": 0.1}}, "discriminator"),
        ({"loss": {"name": "ppo"}}, "ppo"),
        ({"advantage": {"name": "gae"}}, "needs a critic"),
        ({"critic": {}}, "only used by advantage 'gae'"),
        ({"loss": {"name": "ppo_clip", "constant_length": 8}}, "seq_mean_token_sum"),
        ({"advantage": {"name": "reinforce_pp", "gamma": 0.9}}, "token_level_returns"),
        ({"loss": {"name": "ppo_clip", "dual_clip": 0.5}}, "dual_clip"),
        ({"overlong": {"max_len": 10, "buffer_len": 20}}, "buffer_len"),
    ],
)
def test_invalid_combinations_explain_themselves(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlgorithmConfig.model_validate(data)


CUSTOM_MODULE = """
from relayrl.learner.algorithms import Aggregation, LossOutput
from relayrl.learner.algorithms.registry import register_loss


class ScaledNLL:
    def __init__(self, *, scale: float) -> None:
        self.scale = scale
        self.aggregation = Aggregation("token_mean")

    def __call__(self, inputs, normalizer):
        nll = -self.scale * inputs.logprobs
        return LossOutput(loss=self.aggregation(nll, inputs.loss_mask, normalizer))


register_loss("relayrl_test_scaled_nll")(ScaledNLL)
"""


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "relayrl_test_losses.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "relayrl_test_losses"


def test_custom_loss_loads_from_its_target(custom_module: str) -> None:
    config = AlgorithmConfig.model_validate(
        {
            "loss": {
                "name": "custom",
                "target": f"{custom_module}:ScaledNLL",
                "params": {"scale": 2.0},
            }
        }
    )
    loss = build_objective(config)
    inputs = LossInputs(logprobs=torch.tensor([[-1.0, -3.0]]), loss_mask=torch.ones(1, 2))
    assert loss(inputs, loss.aggregation.normalizer(inputs.loss_mask)).loss.item() == 4.0
    # Importing the module registered its loss by name too.
    by_name = build_loss(
        TypeAdapter(LossConfig).validate_python(
            {"name": "custom", "target": "relayrl_test_scaled_nll", "params": {"scale": 1.0}}
        )
    )
    assert by_name.scale == 1.0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:loss", "cannot import module 'no_such_module_xyz'"),
        ("relayrl_test_losses:Missing", "has no 'Missing'"),
        ("unregistered_name", "neither a registered loss"),
    ],
)
def test_bad_target_is_named(custom_module: str, target: str, message: str) -> None:
    config = TypeAdapter(LossConfig).validate_python({"name": "custom", "target": target})
    with pytest.raises(ValueError, match=message) as error:
        build_loss(config)
    assert repr(target) in str(error.value)


def test_custom_params_are_checked_against_the_factory(custom_module: str) -> None:
    config = TypeAdapter(LossConfig).validate_python(
        {
            "name": "custom",
            "target": f"{custom_module}:ScaledNLL",
            "params": {"scale": 1.0, "scael": 2.0},
        }
    )
    with pytest.raises(ValueError, match=r"rejects its params.*scael"):
        build_loss(config)


def test_register_loss_refuses_to_shadow_a_name() -> None:
    assert {"ppo_clip", "gspo", "topr", "sft"} <= set(registered_losses())
    with pytest.raises(ValueError, match="already registered"):
        register_loss("ppo_clip")(PPOClipLoss)


def test_algorithm_config_round_trips_through_json() -> None:
    config = AlgorithmConfig.model_validate(
        {
            "advantage": {"name": "reinforce_pp", "token_level_returns": True},
            "loss": {"name": "ppo_clip", "eps_high": 0.28, "dual_clip": 3.0},
            "kl": {"coef": 0.01, "estimator": "k1", "placement": "reward"},
            "entropy": {"coef": 0.001},
            "dynamic_sampling": {"reward_tolerance": 0.0},
            "overlong": {"max_len": 1024, "buffer_len": 256},
        }
    )
    assert AlgorithmConfig.model_validate_json(config.model_dump_json()) == config
    assert CriticConfig().value_clip == 0.2

"""Importance weights against numpy, their effect on the losses, and the off-policy config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from relayrl.algorithm_config import AlgorithmConfig, ImportanceSamplingConfig
from relayrl.learner.algorithms import LossInputs, importance_weights
from relayrl.learner.algorithms.gspo import GSPOLoss
from relayrl.learner.algorithms.ppo import PPOClipLoss
from relayrl.learner.algorithms.topr import TOPRLoss

MASK = np.array([[0, 1, 1, 0, 1], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=np.float64)
# log(pi / mu) per token: 0.9 exceeds log 2, -1.2 is below log 0.5.
LOG_RATIO = np.array(
    [[5.0, 0.9, -0.1, 7.0, 0.3], [0.0, 0.0, -1.2, 0.2, 9.0], [3.0, 0.0, 0.0, 0.0, 0.0]]
)
BEHAVIOUR = -np.linspace(0.5, 2.0, MASK.size).reshape(MASK.shape)


def weights_for(config: ImportanceSamplingConfig | None):
    target = torch.tensor(BEHAVIOUR + LOG_RATIO)
    return importance_weights(target, torch.tensor(BEHAVIOUR), torch.tensor(MASK), config)


def numpy_weights(level: str, mode: str, cap: float, lower: float | None) -> np.ndarray:
    log_ratio = LOG_RATIO * MASK
    if level == "sequence":
        log_ratio = np.repeat(log_ratio.sum(axis=1, keepdims=True), MASK.shape[1], axis=1)
    raw = np.exp(log_ratio)
    if mode == "truncate":
        corrected = np.minimum(raw, cap)
    else:
        keep = (raw <= cap) & (raw >= (lower or 0.0))
        corrected = np.where(keep, raw, 0.0)
    return corrected * MASK


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("mode", "lower"), [("truncate", None), ("mask", None), ("mask", 0.5)])
def test_weights_match_numpy(level: str, mode: str, lower: float | None) -> None:
    config = ImportanceSamplingConfig(level=level, mode=mode, cap=2.0, lower=lower)
    result = weights_for(config)
    expected = numpy_weights(level, mode, 2.0, lower)
    np.testing.assert_allclose(result.weights.numpy(), expected, rtol=1e-12)
    # The corrected tokens are exactly those whose weight changed.
    raw = numpy_weights(level, "truncate", np.inf, None)
    np.testing.assert_array_equal(result.corrected.numpy(), (expected != raw) & (MASK > 0))
    np.testing.assert_allclose(result.raw.numpy(), raw, rtol=1e-12)


def test_token_level_truncation_and_masking_pick_the_right_tokens() -> None:
    truncated = weights_for(ImportanceSamplingConfig(mode="truncate", cap=2.0))
    assert truncated.corrected.nonzero().tolist() == [[0, 1]]
    assert truncated.weights[0, 1].item() == 2.0
    masked = weights_for(ImportanceSamplingConfig(mode="mask", cap=2.0, lower=0.5))
    assert masked.corrected.nonzero().tolist() == [[0, 1], [1, 2]]
    assert masked.weights[0, 1].item() == masked.weights[1, 2].item() == 0.0


def test_without_a_config_the_raw_weights_are_used_and_nothing_is_corrected() -> None:
    result = weights_for(None)
    np.testing.assert_allclose(result.weights.numpy(), np.exp(LOG_RATIO * MASK) * MASK)
    assert not result.corrected.any()
    assert not result.weights.requires_grad


def test_huge_sequence_weights_stay_finite() -> None:
    target = torch.full((1, 400), 0.0)
    behaviour = torch.full((1, 400), -1.0)
    result = importance_weights(target, behaviour, torch.ones(1, 400), None)
    assert torch.isfinite(result.weights).all()


def ppo_inputs(weights: torch.Tensor | None) -> LossInputs:
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor(MASK)
    old = torch.tensor(BEHAVIOUR)
    logprobs = old + 0.05 * torch.randn(MASK.shape, generator=generator, dtype=torch.float64)
    advantages = torch.tensor([[1.0] * 5, [-0.5] * 5, [2.0] * 5], dtype=torch.float64)
    return LossInputs(
        logprobs=logprobs.requires_grad_(True),
        loss_mask=mask,
        old_logprobs=old,
        advantages=advantages,
        importance_weights=weights,
    )


@pytest.mark.parametrize("loss", [PPOClipLoss(), GSPOLoss(), TOPRLoss()])
def test_policy_losses_weight_each_token_by_its_importance_weight(loss) -> None:
    weights = torch.tensor(numpy_weights("token", "mask", 2.0, 0.5))
    plain, weighted = ppo_inputs(None), ppo_inputs(weights)
    normalizer = loss.aggregation.normalizer(plain.loss_mask)
    loss(plain, normalizer).loss.backward()
    loss(weighted, normalizer).loss.backward()
    # Gradients scale token by token: a masked token gets none, the others w times as much.
    assert plain.logprobs.grad is not None and weighted.logprobs.grad is not None
    np.testing.assert_allclose(
        weighted.logprobs.grad.numpy(), (plain.logprobs.grad * weights).numpy(), atol=1e-12
    )
    assert weighted.logprobs.grad[0, 1] == 0 and plain.logprobs.grad[0, 1] != 0


def test_ppo_loss_value_is_the_weighted_token_mean() -> None:
    weights = torch.tensor(numpy_weights("token", "truncate", 2.0, None))
    inputs = ppo_inputs(weights)
    normalizer = PPOClipLoss().aggregation.normalizer(inputs.loss_mask)
    loss = PPOClipLoss()(inputs, normalizer).loss.item()
    ratio = np.exp(inputs.logprobs.detach().numpy() - BEHAVIOUR)
    advantages = inputs.advantages.numpy()
    surrogate = np.maximum(-advantages * ratio, -advantages * np.clip(ratio, 0.8, 1.2))
    expected = (surrogate * weights.numpy() * MASK).sum() / MASK.sum()
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"off_policy": {}}, "decoupled: true or importance_sampling"),
        ({"loss": {"name": "sft"}, "off_policy": {"decoupled": True}}, "sft"),
        ({"off_policy": {"importance_sampling": {"lower": 0.5}}}, "only to mode 'mask'"),
        ({"off_policy": {"importance_sampling": {"cap": 0.9}}}, "cap"),
        ({"off_policy": {"importance_sampling": {"level": "geometric"}}}, "level"),
    ],
)
def test_invalid_off_policy_configs_explain_themselves(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlgorithmConfig.model_validate(data)


def test_off_policy_config_parses() -> None:
    config = AlgorithmConfig.model_validate(
        {
            "off_policy": {
                "decoupled": True,
                "importance_sampling": {"level": "sequence", "mode": "mask", "cap": 3.0},
            }
        }
    )
    assert config.off_policy is not None and config.off_policy.decoupled
    sampling = config.off_policy.importance_sampling
    assert sampling is not None and (sampling.level, sampling.mode) == ("sequence", "mask")

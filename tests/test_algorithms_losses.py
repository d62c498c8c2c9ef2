"""Losses against python references, micro-batch additivity, and gradient behaviour."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from relayrl.algorithm_config import AlgorithmConfig, EntropyConfig, KLConfig
from relayrl.learner.algorithms import Aggregation, LossInputs, build_objective, token_logprobs
from relayrl.learner.algorithms.critic import ValueLoss
from relayrl.learner.algorithms.gspo import GSPOLoss
from relayrl.learner.algorithms.ppo import PPOClipLoss
from relayrl.learner.algorithms.sft import SFTLoss
from relayrl.learner.algorithms.topr import TOPRLoss

# Holes in the mask (observation tokens), unequal lengths, and a row with no policy token.
MASK = np.array(
    [
        [0, 1, 1, 0, 1, 1],
        [0, 0, 1, 1, 1, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ],
    dtype=np.float64,
)
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    shape = MASK.shape
    old = -generator.uniform(0.5, 2.0, size=shape)
    logprobs = old + generator.normal(scale=0.3, size=shape)
    # Masked-out positions hold garbage the losses must ignore.
    logprobs[MASK == 0] = np.nan
    logprobs[3, 0], logprobs[0, 0] = np.inf, -np.inf
    sequence_advantages = np.array([1.5, -0.7, 0.4, 2.0, -1.2])
    return {
        "logprobs": logprobs,
        "old_logprobs": old,
        "advantages": np.repeat(sequence_advantages[:, None], shape[1], axis=1),
        "ref_logprobs": old + generator.normal(scale=0.2, size=shape),
        "entropy": generator.uniform(0.1, 2.0, size=shape),
        "values": generator.normal(size=shape),
        "old_values": generator.normal(size=shape),
        "returns": generator.normal(size=shape),
    }


def to_inputs(batch: dict[str, np.ndarray]) -> LossInputs:
    tensors = {name: torch.tensor(array) for name, array in batch.items()}
    tensors["logprobs"].requires_grad_(True)
    tensors["values"].requires_grad_(True)
    return LossInputs(loss_mask=torch.tensor(MASK), **tensors)


def aggregate(per_token: Callable[[int, int], float], mode: str, length: int | None) -> float:
    """Python reference of the three aggregation modes over MASK."""
    rows = [[(b, t) for t in range(MASK.shape[1]) if MASK[b, t]] for b in range(len(MASK))]
    rows = [row for row in rows if row]
    if mode == "token_mean":
        return sum(per_token(b, t) for row in rows for b, t in row) / sum(map(len, rows))
    if mode == "seq_mean_token_mean":
        return sum(sum(per_token(b, t) for b, t in row) / len(row) for row in rows) / len(rows)
    total = sum(per_token(b, t) for row in rows for b, t in row)
    return total / (len(rows) * (length or 1))


def loss_of(loss, inputs: LossInputs) -> torch.Tensor:
    return loss(inputs, loss.aggregation.normalizer(inputs.loss_mask)).loss


def reference_ppo(batch, eps_low: float, eps_high: float, dual_clip: float | None):
    def per_token(b: int, t: int) -> float:
        ratio = math.exp(batch["logprobs"][b, t] - batch["old_logprobs"][b, t])
        advantage = batch["advantages"][b, t]
        clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
        value = max(-advantage * ratio, -advantage * clipped)
        if dual_clip is not None and advantage < 0:
            value = min(value, -dual_clip * advantage)
        return value

    return per_token


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("eps_low", "eps_high", "dual_clip"), [(0.2, 0.2, None), (0.1, 0.28, None), (0.2, 0.3, 1.5)]
)
def test_ppo_clip_matches_reference(mode, eps_low, eps_high, dual_clip) -> None:
    batch = make_batch()
    # Push some ratios far out so both clips and the dual clip engage.
    batch["logprobs"][1, 2] = batch["old_logprobs"][1, 2] + 1.5
    batch["logprobs"][0, 1] = batch["old_logprobs"][0, 1] - 1.0
    length = 8 if mode == "seq_mean_token_sum" else None
    loss = PPOClipLoss(
        eps_low=eps_low,
        eps_high=eps_high,
        dual_clip=dual_clip,
        aggregation=mode,
        constant_length=length,
    )
    output = loss(to_inputs(batch), loss.aggregation.normalizer(torch.tensor(MASK)))
    expected = aggregate(reference_ppo(batch, eps_low, eps_high, dual_clip), mode, length)
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)
    assert 0 < output.metrics["clip_fraction"] < 1
    assert output.metrics["ratio_max"] == pytest.approx(math.exp(1.5))
    assert ("dual_clip_fraction" in output.metrics) == (dual_clip is not None)


def test_gspo_matches_sequence_level_reference() -> None:
    batch = make_batch()
    eps_low, eps_high = 0.05, 0.08

    def per_token(b: int, t: int) -> float:
        tokens = [s for s in range(MASK.shape[1]) if MASK[b, s]]
        log_ratio = np.mean([batch["logprobs"][b, s] - batch["old_logprobs"][b, s] for s in tokens])
        ratio, advantage = math.exp(log_ratio), batch["advantages"][b, t]
        clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
        return max(-advantage * ratio, -advantage * clipped)

    loss = GSPOLoss(eps_low=eps_low, eps_high=eps_high)
    expected = aggregate(per_token, "seq_mean_token_mean", None)
    assert loss_of(loss, to_inputs(batch)).item() == pytest.approx(expected, rel=1e-12)


def test_gspo_gradient_is_the_sequence_objective_gradient() -> None:
    batch = make_batch()
    inputs = to_inputs(batch)
    loss = GSPOLoss(eps_low=0.5, eps_high=0.5)  # wide: no sequence is clipped
    loss_of(loss, inputs).backward()
    # Independent form: -mean_i s_i A_i with s_i = exp(mean_t log-ratio), autograd through s_i.
    logprobs = torch.tensor(np.nan_to_num(batch["logprobs"]), requires_grad=True)
    mask = torch.tensor(MASK)
    has_tokens = mask.sum(-1) > 0
    log_ratio = ((logprobs - torch.tensor(batch["old_logprobs"])) * mask).sum(-1)
    ratio = torch.exp(log_ratio[has_tokens] / mask.sum(-1)[has_tokens])
    (-(ratio * torch.tensor(batch["advantages"][:, 0])[has_tokens]).mean()).backward()
    torch.testing.assert_close(inputs.logprobs.grad, logprobs.grad * mask)


def test_topr_tapers_only_negative_sequences() -> None:
    batch = make_batch()
    # Sequence 1 (A < 0) is more likely now than under the behaviour policy: weight 1.
    batch["logprobs"][1, 2] = batch["old_logprobs"][1, 2] + 3.0

    def weight(b: int) -> float:
        if batch["advantages"][b, 0] >= 0:
            return 1.0
        tokens = [t for t in range(MASK.shape[1]) if MASK[b, t]]
        log_ratio = sum(batch["logprobs"][b, t] - batch["old_logprobs"][b, t] for t in tokens)
        return min(math.exp(log_ratio), 1.0)

    def per_token(b: int, t: int) -> float:
        return -weight(b) * batch["advantages"][b, t] * batch["logprobs"][b, t]

    inputs = to_inputs(batch)
    loss = TOPRLoss()
    normalizer = loss.aggregation.normalizer(inputs.loss_mask)
    output = loss(inputs, normalizer)
    assert output.loss.item() == pytest.approx(aggregate(per_token, "token_mean", None), rel=1e-12)
    output.loss.backward()
    expected_grad = np.array(
        [[-weight(b) * batch["advantages"][b, t] / normalizer for t in range(6)] for b in range(5)]
    )
    np.testing.assert_allclose(inputs.logprobs.grad.numpy(), expected_grad * MASK, atol=1e-15)
    assert weight(4) < 1.0 and weight(1) == 1.0  # both branches of the taper are exercised


def test_sft_is_masked_negative_log_likelihood() -> None:
    batch = make_batch()
    loss = SFTLoss(aggregation="seq_mean_token_mean")
    expected = aggregate(lambda b, t: -batch["logprobs"][b, t], "seq_mean_token_mean", None)
    inputs = LossInputs(
        logprobs=torch.tensor(batch["logprobs"]), loss_mask=torch.tensor(MASK)
    )  # SFT needs nothing else
    assert loss_of(loss, inputs).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("value_clip", [None, 0.3])
def test_value_loss_matches_reference(value_clip: float | None) -> None:
    batch = make_batch()

    def per_token(b: int, t: int) -> float:
        value, target = batch["values"][b, t], batch["returns"][b, t]
        error = (value - target) ** 2
        if value_clip is not None:
            old = batch["old_values"][b, t]
            clipped = old + min(max(value - old, -value_clip), value_clip)
            error = max(error, (clipped - target) ** 2)
        return 0.5 * error

    loss = ValueLoss(value_clip=value_clip)
    expected = aggregate(per_token, "token_mean", None)
    assert loss_of(loss, to_inputs(batch)).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_and_entropy_join_the_loss_aggregated_alike(estimator: str) -> None:
    batch = make_batch()
    config = AlgorithmConfig(
        kl=KLConfig(coef=0.1, estimator=estimator), entropy=EntropyConfig(coef=0.01)
    )
    objective = build_objective(config)
    inputs = to_inputs(batch)
    output = objective(inputs, objective.aggregation.normalizer(inputs.loss_mask))

    def kl(b: int, t: int) -> float:
        log_r = batch["ref_logprobs"][b, t] - batch["logprobs"][b, t]
        return {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": math.exp(log_r) - 1 - log_r}[estimator]

    expected = (
        aggregate(reference_ppo(batch, 0.2, 0.2, None), "token_mean", None)
        + 0.1 * aggregate(kl, "token_mean", None)
        - 0.01 * aggregate(lambda b, t: batch["entropy"][b, t], "token_mean", None)
    )
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)
    assert {"kl", "entropy", "clip_fraction"} <= output.metrics.keys()
    output.loss.backward()
    assert torch.isfinite(inputs.logprobs.grad).all()  # garbage off the mask stays out
    assert (inputs.logprobs.grad[torch.tensor(MASK) == 0] == 0).all()


def test_kl_in_reward_is_not_added_to_the_loss() -> None:
    config = AlgorithmConfig(kl=KLConfig(coef=0.1, placement="reward"))
    assert isinstance(build_objective(config), PPOClipLoss)


LOSSES = [
    lambda mode: PPOClipLoss(aggregation=mode, dual_clip=2.0, **length(mode)),
    lambda mode: GSPOLoss(eps_low=0.05, eps_high=0.05, aggregation=mode, **length(mode)),
    lambda mode: TOPRLoss(aggregation=mode, **length(mode)),
    lambda mode: SFTLoss(aggregation=mode, **length(mode)),
    lambda mode: ValueLoss(aggregation=mode, **length(mode)),
    lambda mode: build_objective(
        AlgorithmConfig.model_validate(
            {
                "loss": {"name": "ppo_clip", "aggregation": mode, **length(mode)},
                "kl": {"coef": 0.2},
                "entropy": {"coef": 0.05},
            }
        )
    ),
]


def length(mode: str) -> dict[str, int]:
    return {"constant_length": 16} if mode == "seq_mean_token_sum" else {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make_loss", LOSSES)
def test_micro_batches_sum_to_the_batch_loss_and_gradient(make_loss, mode: str) -> None:
    loss = make_loss(mode)
    full = to_inputs(make_batch(seed=1))
    normalizer = loss.aggregation.normalizer(full.loss_mask)
    full_loss = loss(full, normalizer).loss
    full_loss.backward()

    split = to_inputs(make_batch(seed=1))
    micro_losses = [loss(split.rows(rows), normalizer).loss for rows in (slice(0, 2), slice(2, 5))]
    for micro in micro_losses:
        micro.backward()
    assert sum(micro.item() for micro in micro_losses) == pytest.approx(full_loss.item(), rel=1e-12)
    for name in ("logprobs", "values"):
        torch.testing.assert_close(getattr(split, name).grad, getattr(full, name).grad)


def test_normalizer_counts_the_whole_batch() -> None:
    mask = torch.tensor(MASK)
    assert Aggregation("token_mean").normalizer(mask) == MASK.sum()
    assert Aggregation("seq_mean_token_mean").normalizer(mask) == 4  # row 3 has no token
    assert Aggregation("seq_mean_token_sum", constant_length=10).normalizer(mask) == 40
    assert Aggregation("token_mean").normalizer(torch.zeros(2, 3)) == 1.0


# --- gradient behaviour on a tiny policy ----------------------------------------------------

TOKENS = torch.tensor([[0, 2, 1, 3, 2]])
POLICY_MASK = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])


def tiny_policy() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(0)))


POLICY_LOSSES = {
    "ppo_clip": lambda: PPOClipLoss(eps_low=0.1, eps_high=0.3, dual_clip=3.0),
    "gspo": lambda: GSPOLoss(),
    "topr": lambda: TOPRLoss(),
}


@pytest.mark.parametrize("name", POLICY_LOSSES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_advantage_sign_moves_the_log_probability(name: str, sign: float) -> None:
    logits = tiny_policy()
    before = token_logprobs(logits, TOKENS).detach()
    inputs = LossInputs(
        logprobs=token_logprobs(logits, TOKENS),
        old_logprobs=before,
        advantages=torch.full(TOKENS.shape, sign),
        loss_mask=POLICY_MASK,
    )
    loss = POLICY_LOSSES[name]()
    loss(inputs, loss.aggregation.normalizer(POLICY_MASK)).loss.backward()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
    change = (token_logprobs(logits, TOKENS).detach() - before)[POLICY_MASK > 0]
    assert (sign * change > 0).all()


def test_clipped_tokens_get_no_gradient() -> None:
    logprobs = torch.zeros(1, 6, requires_grad=True)
    # ratio: 1.5 (A>0, above 1+eps: clipped), 0.5 (A<0, below 1-eps: clipped),
    # 1.05 (A>0, inside), 0.5 (A>0: below the range but unclipped for a positive advantage),
    # 20 (A<0: dual-clipped), off-mask.
    ratios = torch.tensor([[1.5, 0.5, 1.05, 0.5, 20.0, 1.0]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    inputs = LossInputs(
        logprobs=logprobs, old_logprobs=-ratios.log(), advantages=advantages, loss_mask=mask
    )
    loss = PPOClipLoss(eps_low=0.2, eps_high=0.2, dual_clip=3.0)
    output = loss(inputs, loss.aggregation.normalizer(mask))
    output.loss.backward()
    gradient = logprobs.grad[0]
    assert gradient[[0, 1, 4, 5]].tolist() == [0.0, 0.0, 0.0, 0.0]
    # Unclipped tokens: d(-A * ratio)/d logprob = -A * ratio, over 5 tokens.
    torch.testing.assert_close(gradient[[2, 3]], torch.tensor([-1.05, -0.5]) / 5)
    # The plain clip never bounds a negative advantage's large ratio; only the dual clip does.
    assert output.metrics["clip_fraction"] == pytest.approx(2 / 5)
    assert output.metrics["dual_clip_fraction"] == pytest.approx(1 / 5)


def test_gspo_clips_whole_sequences() -> None:
    logprobs = torch.zeros(2, 3, requires_grad=True)
    # Sequence 0 drifted (geometric mean ratio 1.1 > 1 + eps): clipped as a whole.
    old = torch.tensor([[-0.1, -0.1, -0.1], [0.0, 0.0, 0.0]])
    inputs = LossInputs(
        logprobs=logprobs, old_logprobs=old, advantages=torch.ones(2, 3), loss_mask=torch.ones(2, 3)
    )
    loss = GSPOLoss(eps_low=0.01, eps_high=0.01)
    loss(inputs, loss.aggregation.normalizer(inputs.loss_mask)).loss.backward()
    assert logprobs.grad[0].abs().max() == 0
    torch.testing.assert_close(logprobs.grad[1], torch.full((3,), -1 / 6))


def test_missing_input_is_named() -> None:
    inputs = LossInputs(logprobs=torch.zeros(1, 2), loss_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="advantages"):
        PPOClipLoss()(inputs, 1.0)

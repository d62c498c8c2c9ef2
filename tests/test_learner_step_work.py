"""The learner step does only the work its loss reads, and the result does not change: the head
scores only loss positions, the batch trains in length order, and one ZeRO-0 rank skips
DeepSpeed's all-reduce with itself. Each is checked against the plain computation in fp32."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl.learner.algorithms.logprobs import head_token_scores, token_logprobs
from relayrl.learner.algorithms.types import LossInputs
from relayrl.learner.batching import PaddedBatch, pad_rows, plan_micro_batches
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.learner.micro_batches import (
    MicroBatch,
    micro_batch_tensors,
    packing_order,
    rank_micro_batches,
    rank_rows,
)
from relayrl.learner.rewards import advantage_inputs
from relayrl.learner.shared_prefix import plan_packed_micro_batches
from relayrl.learner.token_scores import token_scores
from relayrl.models import cache_root
from relayrl.trajectory import Trajectory
from tests.free_ports import on_a_free_port
from tests.learner_data import TrajectoryMaker, learner_config
from tests.test_learner_memory import padded_batch

CLOSE = {"atol": 1e-5, "rtol": 1e-5}


def test_head_on_loss_positions_scores_and_grads_like_every_position(
    tiny_model_path: str,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    batch = padded_batch(model.config.vocab_size)
    weights = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(1))

    def run(only: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        logprobs, entropy = token_scores(
            model, batch, 0.7, with_entropy=True, loss_positions_only=only
        )
        assert entropy is not None
        ((logprobs + entropy) * weights * batch.loss_mask).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        return logprobs.detach(), entropy.detach(), grads

    logprobs, entropy, grads = run(only=True)
    every_logprobs, every_entropy, every_grads = run(only=False)
    on = batch.loss_mask > 0
    torch.testing.assert_close(logprobs[on], every_logprobs[on], **CLOSE)
    torch.testing.assert_close(entropy[on], every_entropy[on], **CLOSE)
    assert not logprobs[~on].any() and not entropy[~on].any()
    for name in grads:
        torch.testing.assert_close(grads[name], every_grads[name], **CLOSE, msg=name)


def cut(trajectory: Trajectory, length: int) -> Trajectory:
    """The trajectory's first `length` tokens."""
    arrays = ("tokens", "loss_mask", "logprobs", "versions")
    return replace(trajectory, **{name: getattr(trajectory, name)[:length] for name in arrays})


def mixed_groups(maker: TrajectoryMaker) -> list[Trajectory]:
    """Two prompts of four and three samples of unequal lengths, and one sample alone."""
    first = maker.group([1.0, 0.0, 1.0, 0.0], 5, 6)
    first[1], first[3] = cut(first[1], 8), cut(first[3], 5)
    return [*first, *maker.group([0.0, 1.0, 1.0], 3, 4), *maker.group([1.0], 4, 7)]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_packing_scores_and_grads_like_the_padded_batch(
    tiny_model_path: str, attention: str
) -> None:
    """Each prompt runs once for all its samples (one of them no longer than the prompt):
    log-probs, entropies and every gradient equal the padded batch's, float32 to 1e-5."""
    maker = TrajectoryMaker(tiny_model_path)
    trajectories = mixed_groups(maker)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_path, dtype=torch.float32, attn_implementation=attention
    )
    packed = micro_batch_tensors(trajectories, MicroBatch(slice(None)), pad_id=0)
    assert packed.packing is not None and packed.packing.input_ids.shape[0] == 3
    assert packed.packing.input_ids.numel() < packed.input_ids.numel()
    padded = replace(packed, packing=None)
    weights = torch.randn(padded.input_ids.shape, generator=torch.Generator().manual_seed(1))

    def run(batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        logprobs, entropy = token_scores(model, batch, 0.7, True, loss_positions_only=True)
        assert entropy is not None
        ((logprobs + entropy) * weights * batch.loss_mask).sum().backward()
        return (
            logprobs.detach(),
            entropy.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters()},
        )

    logprobs, entropy, grads = run(packed)
    plain_logprobs, plain_entropy, plain_grads = run(padded)
    torch.testing.assert_close(logprobs, plain_logprobs, **CLOSE)
    torch.testing.assert_close(entropy, plain_entropy, **CLOSE)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], **CLOSE, msg=name)


def test_packed_micro_batches_fit_the_budget_in_packed_rows(tiny_model_path: str) -> None:
    """A group of four 12-token samples with an 8-token prompt packs into one 24-token row:
    two groups fit 48 tokens where their padded rows would need 96."""
    maker = TrajectoryMaker(tiny_model_path)
    trajectories = maker.group([1.0] * 4, 8, 4) + maker.group([0.0] * 4, 8, 4)
    assert plan_packed_micro_batches(trajectories, 48) == [slice(0, 8)]
    assert plan_packed_micro_batches(trajectories, 47) == [slice(0, 4), slice(4, 8)]
    assert plan_micro_batches(lengths_of(trajectories), 48) == [slice(0, 4), slice(4, 8)]


def test_head_with_no_loss_position_still_reaches_every_parameter() -> None:
    """A ZeRO-3 stand-in micro-batch has an all-zero loss mask; its backward must still run."""
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    head = torch.nn.Linear(4, 11, bias=False)
    tokens = torch.randint(0, 11, (2, 5))
    logprobs, _ = head_token_scores(hidden, head, tokens, where=torch.zeros(2, 5, dtype=torch.bool))
    assert not logprobs.any()
    (logprobs.sum() * 0).backward()
    assert head.weight.grad is not None and hidden.grad is not None


def lengths_of(trajectories: list[Trajectory]) -> list[int]:
    return [len(t.tokens) for t in trajectories]


@pytest.mark.parametrize(("count", "world_size"), [(7, 1), (7, 3), (10, 4), (2, 4)])
def test_packing_order_keeps_every_sequence_and_each_prompt_together(
    tiny_model_path: str, count: int, world_size: int
) -> None:
    maker = TrajectoryMaker(tiny_model_path)
    trajectories = [t for n in range(count) for t in maker.group([1.0] * 3, 2 + n % 3, 1 + n % 5)]
    ordered = packing_order(trajectories, world_size)
    assert sorted(map(id, ordered)) == sorted(map(id, trajectories))
    total = len(ordered)
    for rank in range(world_size):
        share = ordered[rank_rows(total, rank, world_size)]
        groups = [t.group_id for t in share]
        # Each prompt's samples side by side in a share.
        for group in set(groups):
            at = [i for i, g in enumerate(groups) if g == group]
            assert at == list(range(at[0], at[-1] + 1))


def test_packing_order_needs_fewer_tokens_than_arrival_order(tiny_model_path: str) -> None:
    maker = TrajectoryMaker(tiny_model_path)
    trajectories = [t for n in (8, 1, 8, 1, 8, 1) for t in maker.group([1.0], 3, n)]
    trajectories += maker.group([0.0] * 3, 6, 2)

    def padded_tokens(batch: list[Trajectory]) -> int:
        lengths = lengths_of(batch)
        plans = plan_micro_batches(lengths, 24)
        return sum(max(lengths[p]) * (p.stop - p.start) for p in plans)

    def packed_tokens(batch: list[Trajectory]) -> int:
        plans = plan_packed_micro_batches(batch, 24)
        return sum(packed_rows(batch[p]) for p in plans)

    assert packed_tokens(packing_order(trajectories, 1)) < padded_tokens(trajectories)


def packed_rows(batch: list[Trajectory]) -> int:
    """Rows x longest row of the micro-batch's packed rows."""
    tensors = micro_batch_tensors(batch, MicroBatch(slice(None)), pad_id=0)
    ids = tensors.packing.input_ids if tensors.packing is not None else tensors.input_ids
    return ids.numel()


@pytest.mark.slow
def test_a_zero0_step_in_packing_order_has_the_plain_gradients(
    tiny_model_path: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole train_step (packing order, shared prompts run once, head on loss positions,
    no self all-reduce) reaches
    the optimizer with the gradients and loss of the full-logits computation in arrival
    order on a plain copy of the model, float32 to 1e-5."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    config = learner_config(
        str(tmp_path),
        {
            "learner.zero_stage": 0,
            "rollout.group_size": 3,
            "trainer.prompts_per_step": 2,
            "learner.micro_batch_tokens": 24,
        },
    )
    maker = TrajectoryMaker(tiny_model_path)
    trajectories = maker.group([1.0, 0.0, 0.0], 4, 2) + maker.group([0.0, 1.0, 1.0], 5, 7)
    trajectories[1], trajectories[4] = trajectories[4], trajectories[1]
    ordered = packing_order(trajectories, 1)
    assert list(map(id, ordered)) != list(map(id, trajectories))

    learner = DeepSpeedLearner(config, tiny_model_path, 0, consumer=None, publisher=None)
    on_a_free_port(lambda port: learner.setup("127.0.0.1", port))
    assert learner.update is not None
    learner._shared_batch = lambda: (trajectories, [])  # type: ignore[method-assign]
    seen: dict[str, Any] = {}
    engine_step = learner.engine.step

    def step_after_snapshot(*args: Any, **kwargs: Any) -> Any:
        seen.update({n: p.grad.clone() for n, p in learner.engine.module.named_parameters()})
        return engine_step(*args, **kwargs)

    learner.engine.step = step_after_snapshot
    plan = rank_micro_batches(ordered, 0, 1, 24)
    assert len(plan) > 1
    assert any(micro_batch_tensors(ordered, m, learner.pad_id).packing is not None for m in plan)
    metrics = learner.train_step()

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    algorithm = config.learner.algorithm
    full = pad_rows(trajectories, slice(None), learner.pad_id)
    estimate = learner.estimator(advantage_inputs(trajectories, full, {}, algorithm))
    logits = model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits
    out = learner.objective(
        LossInputs(
            logprobs=token_logprobs(logits, full.input_ids),
            loss_mask=full.loss_mask,
            old_logprobs=full.old_logprobs,
            advantages=estimate.advantages,
        ),
        learner.objective.aggregation.normalizer(full.loss_mask),
    )
    out.loss.backward()
    assert metrics["loss/total"] == pytest.approx(float(out.loss), rel=1e-5, abs=1e-7)
    expected = dict(model.named_parameters())
    assert seen.keys() == expected.keys()
    for name, grad in seen.items():
        torch.testing.assert_close(grad, expected[name].grad, **CLOSE, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_skipping_the_self_all_reduce_on_one_zero0_rank_changes_no_weight(
    tiny_model_path: str, tmp_path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """The same step with DeepSpeed's own gradient all-reduce (the path before) and without
    it leaves bit-identical weights, in fp32 and in DeepSpeed's bf16 mode."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    config = learner_config(
        str(tmp_path),
        {
            "learner.zero_stage": 0,
            "model.dtype": dtype,
            "rollout.group_size": 4,
            "learner.micro_batch_tokens": 20,
        },
    )
    trajectories = TrajectoryMaker(tiny_model_path).group([1.0, 0.0, 0.0, 1.0], 4, 6)

    def trained(reduce_with_itself: bool) -> dict[str, torch.Tensor]:
        learner = DeepSpeedLearner(config, tiny_model_path, 0, consumer=None, publisher=None)
        on_a_free_port(lambda port: learner.setup("127.0.0.1", port))
        assert learner.update is not None
        if reduce_with_itself:
            learner.update._reduction = nullcontext  # type: ignore[method-assign]
        learner._shared_batch = lambda: (trajectories, [])  # type: ignore[method-assign]
        learner.train_step()
        return {k: v.clone() for k, v in learner.engine.module.state_dict().items()}

    without, with_reduce = trained(False), trained(True)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert any(not torch.equal(without[k].float(), initial[k]) for k in initial)
    for name, value in with_reduce.items():
        assert torch.equal(without[name], value), name

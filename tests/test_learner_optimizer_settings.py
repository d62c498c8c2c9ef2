"""The learner's optimizer settings at the DeepSpeed level: under ZeRO-0 and ZeRO-2 one step
moves every weight exactly as torch's AdamW does on the same gradients, clipped to
`learner.grad_clip` when it is set; `model.dtype: bfloat16` trains in bf16."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl.algorithm_config import AlgorithmConfig
from relayrl.learner.algorithms.logprobs import token_logprobs
from relayrl.learner.algorithms.types import LossInputs
from relayrl.learner.batching import pad_rows
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.learner.engines import warmup_schedule
from relayrl.learner.micro_batches import micro_batch_tensors, rank_micro_batches
from relayrl.learner.off_policy import OffPolicyCorrection
from relayrl.learner.rewards import advantage_inputs
from relayrl.models import cache_root
from tests.free_ports import on_a_free_port
from tests.learner_data import TrajectoryMaker, learner_config

pytestmark = pytest.mark.slow


def one_step(tiny_model_path: str, output_dir: str, fields: dict) -> tuple:
    """A learner built from `fields`, the batch it trained one step on, and its plan."""
    config = learner_config(
        output_dir, {"rollout.group_size": 4, "learner.micro_batch_tokens": 20, **fields}
    )
    trajectories = TrajectoryMaker(tiny_model_path).group([1.0, 0.0, 0.0, 1.0], 4, 6)
    learner = DeepSpeedLearner(config, tiny_model_path, 0, consumer=None, publisher=None)
    on_a_free_port(lambda port: learner.setup("127.0.0.1", port))
    assert learner.update is not None
    plan = rank_micro_batches(trajectories, 0, 1, config.learner.micro_batch_tokens)
    full = pad_rows(trajectories, slice(None), learner.pad_id)
    algorithm = config.learner.algorithm
    estimate = learner.estimator(advantage_inputs(trajectories, full, {}, algorithm))
    metrics = learner.update.run(trajectories, plan, full, {}, estimate)
    return config, learner, trajectories, plan, full, estimate, metrics


def torch_adamw_step(tiny_model_path, config, learner, trajectories, plan, full, estimate):
    """The same step on a plain copy of the model: the loss, clipping, then torch's AdamW."""
    algorithm: AlgorithmConfig = config.learner.algorithm
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    normalizer = learner.objective.aggregation.normalizer(full.loss_mask)
    off_policy = OffPolicyCorrection(algorithm.off_policy)
    for micro in plan:
        tensors = micro_batch_tensors(trajectories, micro, learner.pad_id)
        logits = model(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask).logits
        logprobs = token_logprobs(logits, tensors.input_ids)
        old_logprobs, weights = off_policy.ratio_inputs(logprobs, tensors, None)
        width = tensors.input_ids.shape[1]
        inputs = LossInputs(
            logprobs=logprobs,
            loss_mask=tensors.loss_mask,
            old_logprobs=old_logprobs,
            advantages=estimate.advantages[micro.rows, :width],
            importance_weights=weights,
        )
        learner.objective(inputs, normalizer).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.learner.grad_clip)
    lc = config.learner
    lr = lc.lr * warmup_schedule(lc.warmup_steps)(0)
    torch.optim.AdamW(
        model.parameters(), lr=lr, betas=lc.betas, weight_decay=lc.weight_decay
    ).step()
    return model.state_dict()


@pytest.mark.parametrize(
    ("zero_stage", "grad_clip"),
    # A clip far below the gradient's norm: Adam's first step is lr * g / (|g| + eps), so
    # only gradients clipped down to eps's scale move the weights visibly less.
    [(0, 1e9), (0, 1e-6), (2, 1e-6)],
)
def test_one_step_matches_torch_adamw_on_the_same_clipped_gradients(
    tiny_model_path, tmp_path, monkeypatch: pytest.MonkeyPatch, zero_stage, grad_clip
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    fields = {"learner.zero_stage": zero_stage, "learner.grad_clip": grad_clip}
    config, learner, *batch, _ = one_step(tiny_model_path, str(tmp_path), fields)
    expected = torch_adamw_step(tiny_model_path, config, learner, *batch)
    trained = learner.engine.module.state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    # Adam moves a weight by about lr where |g| >> eps; where |g| is near eps the two
    # gradients' rounding shows, so a tenth of lr is the bound (a missed clip is off by ~lr).
    bound = config.learner.lr / 10
    for name, value in expected.items():
        moved = (trained[name].float() - initial[name]).abs().max().item()
        assert moved > 0, f"{name} did not move"
        torch.testing.assert_close(trained[name].float(), value, atol=bound, rtol=0)


def test_bfloat16_trains_the_policy_in_bf16(tiny_model_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    fields = {"learner.zero_stage": 2, "model.dtype": "bfloat16"}
    _, learner, *_, metrics = one_step(tiny_model_path, str(tmp_path), fields)
    # DeepSpeed itself runs the bf16 mode (its optimizer keeps fp32 master weights), not just
    # a model that happens to be loaded in bf16.
    assert learner.engine.bfloat16_enabled()
    dtypes = {p.dtype for p in learner.engine.module.parameters()}
    assert dtypes == {torch.bfloat16}
    assert torch.isfinite(torch.tensor(metrics["loss/total"]))
    assert metrics["grad_norm"] > 0
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    trained = learner.engine.module.state_dict()
    assert any(
        not torch.equal(trained[name], value.to(torch.bfloat16)) for name, value in initial.items()
    ), "no weight moved"

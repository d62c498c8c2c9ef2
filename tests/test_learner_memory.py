"""What keeps a job's memory down, on the real parts: the learner's log-probs from hidden
states through a chunked head (equal to the full-logits computation), ZeRO buckets sized by
the model, one copy of each published version in the object store, and the memory figures a
job reports."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from relayrl.algorithm_config import AlgorithmConfig, EntropyConfig
from relayrl.cluster.pipeline_meter import worker_memory
from relayrl.cluster.weights.codec import from_wire, to_wire
from relayrl.cluster.weights.object_store import (
    ObjectStorePublisher,
    ObjectStoreSubscriber,
    WeightStore,
)
from relayrl.learner.algorithms.logprobs import token_entropy, token_logprobs
from relayrl.learner.algorithms.types import LossInputs
from relayrl.learner.batching import PaddedBatch, pad_rows
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.learner.engines import DEEPSPEED_BUCKET, MIN_BUCKET, bucket_sizes
from relayrl.learner.memory_metrics import learner_memory_metrics
from relayrl.learner.micro_batches import micro_batch_tensors, rank_micro_batches
from relayrl.learner.off_policy import OffPolicyCorrection
from relayrl.learner.rewards import advantage_inputs
from relayrl.learner.token_scores import token_scores
from relayrl.models import cache_root
from relayrl.process_memory import process_memory
from tests.free_ports import on_a_free_port
from tests.learner_data import TrajectoryMaker, learner_config


def padded_batch(vocab: int) -> PaddedBatch:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # a shorter row, right-padded like the learner's batches
    loss_mask = attention_mask.float()
    loss_mask[:, :4] = 0
    return PaddedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        old_logprobs=torch.zeros(input_ids.shape),
        versions=torch.zeros_like(input_ids),
        rows=slice(0, 3),
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_scores_equal_the_full_logits_computation(
    tiny_model_path: str, temperature: float
) -> None:
    """Log-probs, entropies and every parameter's gradient (the tied embedding included)
    match the computation over the model's full logits, float32 to 1e-5."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    batch = padded_batch(model.config.vocab_size)
    weights = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(1))

    def gradients(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        (loss * batch.loss_mask).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    logprobs, entropy = token_scores(model, batch, temperature, with_entropy=True)
    assert entropy is not None
    ours = gradients(logprobs * weights + entropy * weights.flip(0))
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected_logprobs = token_logprobs(logits, batch.input_ids, temperature)
    expected_entropy = token_entropy(logits, temperature)
    theirs = gradients(expected_logprobs * weights + expected_entropy * weights.flip(0))
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(logprobs, expected_logprobs, **close)
    torch.testing.assert_close(entropy, expected_entropy, **close)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], **close, msg=name)


def test_bucket_sizes_follow_the_model_between_a_floor_and_deepspeeds_default() -> None:
    small, mid, huge = bucket_sizes(1000), bucket_sizes(135_000_000), bucket_sizes(70 * 10**9)
    assert set(small.values()) == {MIN_BUCKET}
    assert mid["reduce_bucket_size"] == mid["allgather_bucket_size"] == 135_000_000 // 8
    assert huge["reduce_bucket_size"] == DEEPSPEED_BUCKET
    assert huge["stage3_prefetch_bucket_size"] < huge["reduce_bucket_size"]


def test_wire_state_shares_tied_tensors_and_copies_nothing() -> None:
    embedding = torch.randn(5, 3)
    state = {"embed.weight": embedding, "head.weight": embedding, "norm": torch.ones(3)}
    wire = to_wire(state)
    assert wire["embed.weight"][1] is wire["head.weight"][1]
    assert np.shares_memory(wire["embed.weight"][1], embedding.numpy())
    back = from_wire(wire)
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        torch.testing.assert_close(back[name], tensor)
    bf16 = to_wire({"w": embedding.to(torch.bfloat16)})
    torch.testing.assert_close(from_wire(bf16)["w"], embedding.to(torch.bfloat16))


def test_process_memory_reads_this_process() -> None:
    figures = process_memory()
    # An anonymous map is fresh pages; malloc may reuse memory the suite already faulted in.
    ballast = mmap.mmap(-1, 64 << 20)
    np.frombuffer(ballast, dtype=np.uint8)[:] = 1
    after = process_memory()
    assert 0 < figures["pss_gb"] <= figures["rss_gb"] <= figures["peak_rss_gb"]
    assert after["rss_gb"] - figures["rss_gb"] > 0.05
    assert after["peak_rss_gb"] >= after["rss_gb"]
    ballast.close()


def test_learner_memory_metrics_name_the_learner_figures() -> None:
    metrics = learner_memory_metrics()
    assert set(metrics) == {
        "memory/learner_rss_gb",
        "memory/learner_peak_rss_gb",
        "memory/learner_pss_gb",
    }
    assert metrics["memory/learner_peak_rss_gb"] >= metrics["memory/learner_rss_gb"] > 0


def test_worker_memory_takes_the_largest_rss_and_adds_up_pss() -> None:
    reports = [
        {"worker_id": "a", "rss_gb": 1.0, "peak_rss_gb": 1.5, "pss_gb": 0.8},
        {"worker_id": "b", "rss_gb": 1.2, "peak_rss_gb": 1.3, "pss_gb": 0.9},
    ]
    assert worker_memory(reports) == {
        "memory/worker_rss_gb": 1.2,
        "memory/worker_peak_rss_gb": 1.5,
        "memory/workers_pss_gb": pytest.approx(1.7),
    }
    assert worker_memory([{"worker_id": "old"}]) == {}


# ---- the weight store on a real Ray ----------------------------------------------------------


@ray.remote(num_cpus=0)
class Publisher:
    """A stand-in for the learner's process."""

    def __init__(self, store: ray.actor.ActorHandle) -> None:
        self.weights = ObjectStorePublisher(store, timeout_s=60)

    def publish(self, version: int, value: float) -> int:
        return self.weights.publish(version, {"w": torch.full((256, 256), value)}).version


@pytest.mark.slow
def test_the_store_hands_out_one_version_and_a_reader_keeps_the_one_it_holds(
    ray_instance: None,
) -> None:
    store = WeightStore.remote()
    reader = ObjectStoreSubscriber(store, timeout_s=60)
    publisher = Publisher.remote(store)
    assert ray.get(publisher.publish.remote(1, 1.0)) == 1
    found = reader.fetch(0)
    assert found is not None and found[0].version == 1
    held = found[1]["w"]  # a reader mid-load keeps its version alive across the next publish
    assert ray.get(publisher.publish.remote(2, 2.0)) == 2
    assert reader.fetch(2) is None
    found = reader.fetch(1)
    assert found is not None and found[0].version == 2
    assert bool((found[1]["w"] == 2.0).all()) and bool((held == 1.0).all())
    ray.get(store.release_tensors.remote())
    assert reader.fetch(0) is None
    assert ray.get(store.latest.remote()).version == 2


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_deepspeed_step_from_hidden_states_matches_the_full_logits_step(
    tiny_model_path: str, tmp_path, monkeypatch: pytest.MonkeyPatch, zero_stage: int
) -> None:
    """One real DeepSpeed step (two micro-batches, entropy bonus on) reports the loss and
    gradient norm that the full-logits computation gives on a plain copy of the model."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    algorithm = AlgorithmConfig(entropy=EntropyConfig(coef=0.01))
    config = learner_config(
        str(tmp_path),
        {
            "learner.zero_stage": zero_stage,
            "rollout.group_size": 4,
            "learner.micro_batch_tokens": 20,
            "learner.algorithm": algorithm,
        },
    )
    trajectories = TrajectoryMaker(tiny_model_path).group([1.0, 0.0, 0.0, 1.0], 4, 6)
    learner = DeepSpeedLearner(config, tiny_model_path, 0, consumer=None, publisher=None)
    on_a_free_port(lambda port: learner.setup("127.0.0.1", port))
    assert learner.update is not None
    plan = rank_micro_batches(trajectories, 0, 1, config.learner.micro_batch_tokens)
    assert len(plan) == 2
    full = pad_rows(trajectories, slice(None), learner.pad_id)
    estimate = learner.estimator(advantage_inputs(trajectories, full, {}, algorithm))

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    normalizer = learner.objective.aggregation.normalizer(full.loss_mask)
    off_policy = OffPolicyCorrection(algorithm.off_policy)
    expected_loss = 0.0
    for micro in plan:
        tensors = micro_batch_tensors(trajectories, micro, learner.pad_id)
        logits = model(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask).logits
        logprobs = token_logprobs(logits, tensors.input_ids)
        old_logprobs, weights = off_policy.ratio_inputs(logprobs, tensors, None)
        width = tensors.input_ids.shape[1]
        out = learner.objective(
            LossInputs(
                logprobs=logprobs,
                loss_mask=tensors.loss_mask,
                old_logprobs=old_logprobs,
                advantages=estimate.advantages[micro.rows, :width],
                entropy=token_entropy(logits),
                importance_weights=weights,
            ),
            normalizer,
        )
        out.loss.backward()
        expected_loss += float(out.loss.detach())
    expected_norm = float(torch.stack([p.grad.norm() for p in model.parameters()]).norm())

    metrics = learner.update.run(trajectories, plan, full, {}, estimate)
    assert metrics["loss/total"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-7)
    assert metrics["grad_norm"] == pytest.approx(expected_norm, rel=1e-4)

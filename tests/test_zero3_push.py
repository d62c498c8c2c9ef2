"""ZeRO-3 weights pushed bucket by bucket (learner/gathered_buckets.py through the NCCL
publisher), on CPU with real DeepSpeed: every rank gathers each bucket in lockstep, rank 0
hands it to every engine's sender, and the engines receive exactly the trained model. A
recording sender stands in for the NCCL broadcast (the GPU run is in test_gpu_publish.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.learner_group import LearnerGroup
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.cluster.weights.nccl_publisher import NcclPublisher
from relayrl.cluster.weights.object_store import WeightStore
from relayrl.cluster.weights.roster import EngineMember, EngineRoster, RosterClient
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.learner.gathered_buckets import GatheredBuckets
from relayrl.models import cache_root
from relayrl.weights import TensorMeta
from tests.learner_data import TrajectoryMaker, learner_config

pytestmark = pytest.mark.slow

BUCKET_BYTES = 64 << 10  # the tiny model is a few MB: many buckets


@ray.remote(num_cpus=0)
class Received:
    """What each engine was sent, wherever the learner's senders run."""

    def __init__(self) -> None:
        self.state: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def record(self, worker_id: str, version: int, state: dict[str, torch.Tensor]) -> None:
        self.state[worker_id, version] = state

    def get(self) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
        return self.state


class RecordingSenders:
    """A picklable sender factory: each sender copies the stream it is handed."""

    def __init__(self, received: Any) -> None:
        self.received = received

    def __call__(self, member: EngineMember, metadata: list[TensorMeta]) -> Any:
        return RecordingSender(self.received, member.worker_id)


class RecordingSender:
    def __init__(self, received: Any, worker_id: str) -> None:
        self.received = received
        self.worker_id = worker_id

    def send(self, version: int, metadata: list[TensorMeta], tensors: Iterator[Any]) -> None:
        # A bucket's tensors are released when the next one is asked for: copy each.
        state = {name: tensor.clone() for name, tensor in tensors}
        for meta in metadata:
            assert tuple(state[meta.name].shape) == meta.shape, meta
        ray.get(self.received.record.remote(self.worker_id, version, state), timeout=60)

    def close(self) -> None:
        return None


RAY_CPUS = 3  # the conftest's ray_instance


@pytest.fixture(scope="module")
def redis_url(ray_instance: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ray up, and the URL of an embedded Redis for the learner's buffer."""
    redis = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield redis.url
    redis.stop()


def _publisher(received: Any) -> tuple[NcclPublisher, RosterClient]:
    roster = RosterClient(EngineRoster.remote(), timeout_s=120)
    publisher = NcclPublisher(
        WeightStore.remote(),
        roster,
        bucket_bytes=BUCKET_BYTES,
        timeout_s=120,
        sender_factory=RecordingSenders(received),
    )
    return publisher, roster


def test_two_zero3_ranks_gather_in_lockstep_and_every_engine_gets_the_whole_model(
    redis_url: str, tiny_model_path: str, tmp_path: Path
) -> None:
    received = Received.remote()
    publisher, roster = _publisher(received)
    for worker in ("a", "b"):
        roster.join(worker, f"receiver-{worker}", 1)
    config = learner_config(str(tmp_path), {"learner.num_ranks": 2, "learner.zero_stage": 3})
    group = LearnerGroup(config, tiny_model_path, None, publisher, None, 600)  # type: ignore[arg-type]
    try:
        info = group.publish()
    finally:
        group.kill()

    expected = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    expected_state = expected.state_dict()
    sent = ray.get(received.get.remote(), timeout=60)
    assert sorted(sent) == [("a", 0), ("b", 0)]
    for state in sent.values():
        assert list(state) == list(expected_state)
        assert all(torch.equal(state[name], expected_state[name]) for name in expected_state)
    assert info["checksum"] == "" and info["bytes"] == sum(
        t.numel() * t.element_size() for t in expected_state.values()
    )


def test_an_engine_that_joins_while_zero3_ranks_wait_for_data_gets_the_current_version(
    redis_url: str, tiny_model_path: str, tmp_path: Path
) -> None:
    received = Received.remote()
    publisher, roster = _publisher(received)
    roster.join("a", "receiver-a", 1)
    buffer = RedisStreamBuffer(redis_url, "zero3-push:joins", trim_acknowledged=False)
    buffer.ensure_group()
    config = learner_config(str(tmp_path), {"learner.num_ranks": 2, "learner.zero_stage": 3})
    consumer = buffer.with_consumer("learner-0")
    group = LearnerGroup(config, tiny_model_path, consumer, publisher, None, 600)  # type: ignore[arg-type]
    try:
        group.publish()
        roster.join("late", "receiver-late", 1)
        buffer.push(TrajectoryMaker(tiny_model_path).group([1.0, 0.0], 8, 8))
        # Rank 0 finds no batch yet, serves the joiner (rank 1 gathering with it), then trains.
        assert group.train_step()["version"] == 1
    finally:
        group.kill()

    sent = ray.get(received.get.remote(), timeout=60)
    assert sorted(sent) == [("a", 0), ("a", 1), ("late", 0), ("late", 1)]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    for name, tensor in initial.state_dict().items():
        assert torch.equal(sent["late", 0][name], tensor), name
    assert all(torch.equal(sent["a", 1][n], t) for n, t in sent["late", 1].items())
    assert any(not torch.equal(sent["late", 1][n], t) for n, t in sent["late", 0].items())


def test_a_zero3_module_streams_bounded_buckets_and_is_partitioned_again(
    tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    config = learner_config(str(tmp_path), {"learner.zero_stage": 3})
    learner = DeepSpeedLearner(config, tiny_model_path, 0, consumer=None, publisher=None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    learner.setup("127.0.0.1", port)
    module = learner.engine.module
    buckets = GatheredBuckets(module, BUCKET_BYTES)
    sizes = {meta.name: meta.num_bytes for meta in buckets.metadata()}

    streamed: dict[str, torch.Tensor] = {}
    for bucket in buckets:
        names = [name for name, _ in bucket]
        assert len(names) == 1 or sum(sizes[name] for name in names) <= BUCKET_BYTES
        streamed.update((name, tensor.clone()) for name, tensor in bucket)

    assert len(buckets.plan) > 1
    expected = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    assert all(torch.equal(streamed[n], t) for n, t in expected.state_dict().items())
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    assert {p.ds_status for p in module.parameters()} == {ZeroParamStatus.NOT_AVAILABLE}

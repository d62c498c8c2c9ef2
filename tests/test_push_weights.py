"""The NCCL transport's publisher (cluster/weights/nccl_publisher.py) on a real Ray weight
store and engine roster: who gets which version, joins served between steps, leavers and
failures dropped, and a worker that waits for the announced version before it generates.

NCCL itself needs GPUs; here a recording sender stands in for the broadcast and takes the
bucket stream the way the real one does (the real one is exercised by the gpu-marked tests in
test_vllm_engine.py and test_gpu_publish.py)."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch

from relayrl.actors.rollout_worker import RolloutWorker, WeightWaitTimeout
from relayrl.cluster.weights.nccl_publisher import NcclPublisher, kill_engine_worker
from relayrl.cluster.weights.nccl_subscriber import PushedVersions
from relayrl.cluster.weights.object_store import (
    ObjectStorePublisher,
    ObjectStoreSubscriber,
    WeightStore,
)
from relayrl.cluster.weights.roster import EngineMember, EngineRoster, RosterClient
from relayrl.cluster.weights.transport import build_weight_transport
from relayrl.weights import EnginePusher, TensorMeta, WeightPuller
from tests.worker_settings import tiny_worker_config

STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}


class RecordingSenders:
    """Sender factory: each sender takes the whole stream, logs (worker, version) and fails
    when told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.opened: list[tuple[str, int]] = []
        self.closed: list[str] = []
        self.failing: set[str] = set()
        self.on_send: Any = None
        self.dropped: list[str] = []

    def drop(self, member: EngineMember) -> None:
        self.dropped.append(member.worker_id)

    def __call__(self, member: EngineMember, metadata: list[TensorMeta]) -> Any:
        self.opened.append((member.worker_id, member.joined))
        senders = self

        class Sender:
            def send(
                self, version: int, metadata: list[TensorMeta], tensors: Iterator[Any]
            ) -> None:
                if member.worker_id in senders.failing:
                    raise TimeoutError("NCCL weight sync took over 1 s")
                # A bucket's tensors are valid until the next is asked for: copy them.
                state = {name: tensor.clone() for name, tensor in tensors}
                assert list(state) == [meta.name for meta in metadata]
                senders.sent.append((member.worker_id, version))
                if senders.on_send is not None:
                    senders.on_send(state, version)

            def close(self) -> None:
                senders.closed.append(member.worker_id)

        return Sender()

    def take(self) -> list[tuple[str, int]]:
        sent, self.sent = self.sent, []
        return sorted(sent)


def push_weights(
    senders: RecordingSenders, roster_poll_s: float = 0.0
) -> tuple[NcclPublisher, PushedVersions, RosterClient]:
    store = WeightStore.remote()
    roster = RosterClient(EngineRoster.remote(), timeout_s=60)
    publisher = NcclPublisher(
        store,
        roster,
        bucket_bytes=1 << 20,
        timeout_s=5,
        sender_factory=senders,
        roster_poll_s=roster_poll_s,
        on_dropped=senders.drop,
    )
    return publisher, PushedVersions(store, timeout_s=60), roster


def test_versions_reach_current_members_and_joins_between_steps(ray_instance: None) -> None:
    senders = RecordingSenders()
    publisher, subscriber, roster = push_weights(senders)

    info = publisher.publish(0, STATE)
    assert subscriber.latest() == info
    assert info.checksum == "" and info.num_bytes == 36, "no host copy to checksum"
    assert senders.take() == []

    roster.join("a", "receiver-a", 1)
    publisher.serve_joins()
    assert senders.take() == [("a", 0)]
    publisher.serve_joins()
    assert senders.take() == [], "a member already holding the version gets nothing"

    publisher.publish(1, STATE)
    roster.join("b", "receiver-b", 2)
    publisher.serve_joins()
    assert senders.take() == [("a", 1), ("b", 1)]
    assert publisher.members() == ["a", "b"]

    roster.leave("a")
    publisher.publish(2, STATE)
    assert senders.take() == [("b", 2)]
    assert senders.closed == ["a"]


def test_each_side_is_only_what_it_can_do(ray_instance: None) -> None:
    publisher, subscriber, _ = push_weights(RecordingSenders())
    store = WeightStore.remote()
    assert isinstance(publisher, EnginePusher) and not isinstance(subscriber, WeightPuller)
    assert isinstance(ObjectStoreSubscriber(store), WeightPuller)
    assert not isinstance(ObjectStorePublisher(store), EnginePusher)


def test_the_config_picks_both_sides_and_the_roster(ray_instance: None) -> None:
    pulled = build_weight_transport(tiny_worker_config(), call_timeout_s=60)
    assert isinstance(pulled.subscriber, WeightPuller) and pulled.roster is None
    nccl = tiny_worker_config(
        fields={
            "rollout.engine": "vllm",
            "rollout.gpus_per_worker": 1,
            "rollout.weight_transport": "nccl",
            "rollout.weight_update": "interrupt",
            "learner.gpus_per_rank": 1,
            "rollout.vllm.weight_bucket_mib": 8,
        }
    )
    pushed = build_weight_transport(nccl, call_timeout_s=60)
    assert isinstance(pushed.publisher, EnginePusher)
    assert pushed.publisher.bucket_bytes == 8 << 20
    assert not isinstance(pushed.subscriber, WeightPuller) and pushed.roster is not None
    pushed.roster.join("w", "receiver-w", 1)
    assert [m.worker_id for m in pushed.roster.members()] == ["w"]


def test_a_restarted_engine_gets_a_new_group(ray_instance: None) -> None:
    senders = RecordingSenders()
    publisher, _, roster = push_weights(senders)
    roster.join("a", "receiver-a", 1)
    publisher.publish(1, STATE)
    roster.join("a", "receiver-a-restarted", 1)
    publisher.serve_joins()
    assert senders.take() == [("a", 1), ("a", 1)]
    assert [worker for worker, _ in senders.opened] == ["a", "a"]
    assert senders.opened[0][1] < senders.opened[1][1]
    assert senders.closed == ["a"]


def test_a_failed_push_drops_that_engine_only(ray_instance: None) -> None:
    senders = RecordingSenders()
    publisher, subscriber, roster = push_weights(senders)
    for worker in ("a", "b", "c"):
        roster.join(worker, f"receiver-{worker}", 1)
    senders.failing.add("b")

    info = publisher.publish(5, STATE)

    assert senders.take() == [("a", 5), ("c", 5)]
    assert senders.closed == ["b"] and senders.dropped == ["b"]
    assert sorted(m.worker_id for m in roster.members()) == ["a", "c"]
    assert subscriber.latest() == info, "the version is announced even when one engine fails"
    publisher.publish(6, STATE)
    assert senders.take() == [("a", 6), ("c", 6)]


def test_engines_are_pushed_at_once_and_each_push_is_reported(ray_instance: None) -> None:
    senders = RecordingSenders()
    publisher, _, roster = push_weights(senders)
    for worker in ("a", "b", "c"):
        roster.join(worker, f"receiver-{worker}", 1)
    all_in_flight = threading.Barrier(3, timeout=30)  # breaks if pushes run one by one
    senders.on_send = lambda state, version: all_in_flight.wait()

    publisher.publish(4, STATE)

    assert senders.take() == [("a", 4), ("b", 4), ("c", 4)] and senders.dropped == []
    reports = publisher.take_push_reports()
    assert sorted(r.worker_id for r in reports) == ["a", "b", "c"]
    assert all(r.version == 4 and r.num_bytes == 36 and r.seconds >= 0 for r in reports)
    assert publisher.take_push_reports() == [], "each push is reported once"


class OneShotStream:
    """A stream that can be iterated once (as a ZeRO-3 gather is), counting its passes."""

    def __init__(self) -> None:
        self.passes = 0

    def metadata(self) -> list[TensorMeta]:
        return [TensorMeta(name, t.dtype, tuple(t.shape)) for name, t in STATE.items()]

    def __iter__(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        self.passes += 1
        for name, tensor in STATE.items():
            yield [(name, tensor)]


def test_a_gathered_stream_is_sent_once_to_all_and_streamed_again_for_joiners(
    ray_instance: None,
) -> None:
    senders = RecordingSenders()
    publisher, _, roster = push_weights(senders)
    for worker in ("a", "b"):
        roster.join(worker, f"receiver-{worker}", 1)
    stream = OneShotStream()

    publisher.publish_buckets(7, stream)

    assert stream.passes == 1 and senders.take() == [("a", 7), ("b", 7)]
    roster.join("late", "receiver-late", 1)
    assert publisher.joined()
    with pytest.raises(ValueError, match="v7 was published as a stream: stream it again"):
        publisher.serve_joins()
    again = OneShotStream()
    publisher.serve_joins(again)
    assert again.passes == 1 and senders.take() == [("late", 7)], "only the joiner"
    assert not publisher.joined()
    publisher.serve_joins(OneShotStream())  # nobody waits: streamed for the other ranks anyway
    assert senders.take() == []
    publisher.publish_buckets(8, OneShotStream())
    assert senders.take() == [("a", 8), ("b", 8), ("late", 8)]


@ray.remote(num_cpus=0)
class PausedEngineWorker:
    """Stands for a worker whose engine a failed transfer left paused, lock held."""

    def ping(self) -> str:
        return "alive"


def test_a_dropped_engine_s_worker_is_killed(ray_instance: None) -> None:
    worker = PausedEngineWorker.remote()
    assert ray.get(worker.ping.remote(), timeout=60) == "alive"
    kill_engine_worker(EngineMember("w", 1, worker, 1))
    # ray.kill only sends the kill: a call made just after it can still be served once.
    deadline = time.monotonic() + 60
    with pytest.raises(ray.exceptions.RayActorError):
        while time.monotonic() < deadline:
            ray.get(worker.ping.remote(), timeout=60)
            time.sleep(0.1)


def test_what_travels_to_actors_carries_no_groups_or_weights(ray_instance: None) -> None:
    senders = RecordingSenders()
    publisher, _, roster = push_weights(senders)
    roster.join("a", "receiver-a", 1)
    publisher.publish(1, STATE)
    copy = pickle.loads(pickle.dumps(publisher))
    assert copy.members() == [] and copy.bucket_bytes == publisher.bucket_bytes
    copy.serve_joins()
    assert senders.take() == [("a", 1)], "the copy never published, so it sends nothing"


def _worker(model_path: str, weights: PushedVersions, wait_s: float) -> RolloutWorker:
    # A worker waits one learner batch plus one weight sync for a pushed version.
    config = tiny_worker_config(
        fields={
            "learner.batch_timeout_s": wait_s / 2,
            "rollout.vllm.weight_sync_timeout_s": wait_s / 2,
        }
    )
    return RolloutWorker(config, "w0", model_path, 0, producer=None, weights=weights, gate=None)  # type: ignore[arg-type]


def test_a_joining_worker_waits_for_the_pushed_version(
    ray_instance: None, tiny_model_path: str
) -> None:
    senders = RecordingSenders()
    publisher, subscriber, roster = push_weights(senders)
    worker = _worker(tiny_model_path, subscriber, wait_s=120)
    trained = {name: tensor + 0.5 for name, tensor in worker.engine._model.state_dict().items()}
    publisher.publish(3, trained)  # before the worker joined: nobody received it
    loop = asyncio.new_event_loop()
    senders.on_send = lambda state, version: asyncio.run_coroutine_threadsafe(
        worker.engine.update_weights(state, version), loop
    ).result(60)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        waiting = asyncio.run_coroutine_threadsafe(worker.sync_weights(), loop)
        with pytest.raises(TimeoutError):
            waiting.result(timeout=1.0)  # still waiting: the version was only announced
        roster.join("w0", "receiver-w0", 1)
        publisher.serve_joins()
        assert waiting.result(timeout=60) == 3
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    loaded = worker.engine._model.state_dict()
    assert all(torch.equal(loaded[name], trained[name]) for name in trained)


def test_a_version_that_never_arrives_fails_the_worker_with_its_cause(
    ray_instance: None, tiny_model_path: str
) -> None:
    publisher, subscriber, _ = push_weights(RecordingSenders())
    worker = _worker(tiny_model_path, subscriber, wait_s=1.0)
    publisher.publish(2, STATE)
    with pytest.raises(WeightWaitTimeout, match=r"w0: weights v2 were announced but not"):
        asyncio.run(worker.sync_weights())


def test_an_engine_without_push_support_says_so(ray_instance: None, tiny_model_path: str) -> None:
    _, subscriber, _ = push_weights(RecordingSenders())
    worker = _worker(tiny_model_path, subscriber, wait_s=1.0)
    with pytest.raises(TypeError, match=r"w0: the transformers engine takes no pushes"):
        asyncio.run(worker.begin_weight_transfer())


@ray.remote(num_cpus=0)
class StuckEngine:
    async def begin_weight_transfer(self) -> None:
        await asyncio.sleep(30)


def test_an_engine_call_that_hangs_times_out_naming_the_worker_and_call(
    ray_instance: None,
) -> None:
    pytest.importorskip("vllm")
    from relayrl.cluster.weights.nccl_sender import RayEngineReceiver, WeightSyncTimeout

    receiver = RayEngineReceiver(StuckEngine.remote(), timeout_s=0.5, name="worker-3")
    with pytest.raises(WeightSyncTimeout, match=r"worker-3\.begin_weight_transfer took over"):
        receiver.begin_weight_transfer()


def test_the_roster_is_read_at_most_once_per_poll_interval(ray_instance: None) -> None:
    senders = RecordingSenders()
    publisher, _, roster = push_weights(senders, roster_poll_s=60.0)
    publisher.publish(0, STATE)
    publisher.serve_joins()
    roster.join("late", "receiver-late", 1)
    publisher.serve_joins()
    assert senders.take() == [], "within the interval the roster is not read again"
    publisher.publish(1, STATE)
    assert senders.take() == [("late", 1)], "a publish always reads the roster"

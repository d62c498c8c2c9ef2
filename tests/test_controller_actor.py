"""The rollout controller as the Ray actor it runs as, over a real Redis stream: a poll that
times out holds nothing and a lease comes back exactly once, a group the worker or the learner
discards frees its slots, and a controller restored after a resume admits exactly what the
stream's unbooked backlog leaves room for."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray

from relayrl.cluster.controller import (
    AdmissionReply,
    Answer,
    ControllerGate,
    ControllerRefill,
    RolloutController,
)
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.learner.discard import DiscardReason
from relayrl.learner.intake import BatchIntake
from tests.trajectories import trajectory

pytestmark = pytest.mark.slow

CALL_S = 60


def group(name: str, version: int) -> list:
    return [
        trajectory(name, version=version, reward=float(i), traj_id=f"{name}{i}") for i in (0, 1)
    ]


def running(controller) -> int:
    return ray.get(controller.snapshot.remote(), timeout=CALL_S)["running"]


def wait_until_waiting(controller, count: int) -> None:
    """Until `count` acquire calls wait for room: what happens next happens while they wait."""
    deadline = time.monotonic() + CALL_S
    while ray.get(controller.snapshot.remote(), timeout=CALL_S)["waiting"] != count:
        assert time.monotonic() < deadline, f"never {count} waiting"
        time.sleep(0.02)


def fresh_buffer(redis_server, name: str) -> RedisStreamBuffer:
    buffer = RedisStreamBuffer(redis_server.url, name)
    buffer.ensure_group()
    return buffer


def test_a_timed_out_poll_holds_nothing_and_a_lease_returns_once(ray_instance, redis_server):
    controller = RolloutController.remote(2, 0, fresh_buffer(redis_server, "actor:leases"))
    admitted = AdmissionReply(Answer.ADMITTED, version=0)
    assert ray.get(controller.acquire.remote("w0", 2, 5.0), timeout=CALL_S) == admitted
    timed_out = ray.get(controller.acquire.remote("w1", 2, 0.2), timeout=CALL_S)
    assert timed_out == AdmissionReply(Answer.TIMED_OUT)
    ray.get(controller.release.remote("w1", 2, False), timeout=CALL_S)  # it held nothing
    assert running(controller) == 2

    # Two waiters for one group's room: the one release admits exactly one of them.
    waiters = [controller.acquire.remote(w, 2, 3.0) for w in ("w2", "w3")]
    wait_until_waiting(controller, 2)
    ray.get(controller.release.remote("w0", 2, False), timeout=CALL_S)
    replies = ray.get(waiters, timeout=CALL_S)
    answers = {w: reply.answer for w, reply in zip(("w2", "w3"), replies, strict=True)}
    assert sorted(answers.values()) == [Answer.ADMITTED, Answer.TIMED_OUT]
    ray.get(controller.release.remote("w0", 2, False), timeout=CALL_S)  # a repeated release
    assert running(controller) == 2
    holder = next(w for w, answer in answers.items() if answer == Answer.ADMITTED)

    async def gate_waits_through_timed_out_polls() -> int | None:
        gate = ControllerGate(controller, poll_timeout_s=0.05)
        waiting = asyncio.ensure_future(gate.acquire("w4", 2))
        # While this probe waits out its own poll, the gate's polls time out again and again.
        probe = await controller.acquire.remote("probe", 2, 0.5)
        assert probe.answer == Answer.TIMED_OUT and not waiting.done()
        await controller.release.remote(holder, 2, True)
        return await waiting

    assert asyncio.run(gate_waits_through_timed_out_polls()) == 0
    assert running(controller) == 2  # one lease of 2, however many polls timed out
    ray.get(controller.release.remote("w4", 2, True), timeout=CALL_S)
    assert running(controller) == 0
    ray.kill(controller)


def test_workers_started_before_the_first_publish_wait_for_its_version(ray_instance, redis_server):
    """A job starts its workers while the learner sets up: they poll a controller that knows
    no version yet, and are admitted under the version the job then sets."""
    buffer = fresh_buffer(redis_server, "actor:closed")
    controller = RolloutController.remote(2, 0, buffer, version=None)
    early = ray.get(controller.acquire.remote("w0", 2, 0.2), timeout=CALL_S)
    assert early == AdmissionReply(Answer.TIMED_OUT) and running(controller) == 0
    waiting = controller.acquire.remote("w0", 2, 30.0)
    wait_until_waiting(controller, 1)
    ray.get(controller.set_version.remote(4), timeout=CALL_S)
    assert ray.get(waiting, timeout=CALL_S) == AdmissionReply(Answer.ADMITTED, version=4)
    assert running(controller) == 2
    ray.kill(controller)


def test_a_group_the_worker_drops_frees_its_slots(ray_instance, redis_server):
    controller = RolloutController.remote(2, 0, fresh_buffer(redis_server, "actor:dropped"))
    assert ray.get(controller.acquire.remote("w0", 2, 5.0), timeout=CALL_S).answer == "admitted"
    waiting = controller.acquire.remote("w1", 2, 30.0)
    wait_until_waiting(controller, 1)
    ray.get(controller.release.remote("w0", 2, False), timeout=CALL_S)  # nothing was pushed
    assert ray.get(waiting, timeout=CALL_S) == AdmissionReply(Answer.ADMITTED, version=0)


def test_a_group_the_learner_discards_frees_its_slots_at_once(ray_instance, redis_server):
    buffer = fresh_buffer(redis_server, "actor:discarded")
    controller = RolloutController.remote(2, 0, buffer)
    assert ray.get(controller.acquire.remote("w0", 2, 5.0), timeout=CALL_S).answer == "admitted"
    buffer.push(group("old", version=0))
    ray.get(controller.release.remote("w0", 2, True), timeout=CALL_S)
    ray.get(controller.set_version.remote(1), timeout=CALL_S)  # "old" is now one version stale
    waiting = controller.acquire.remote("w1", 2, 30.0)
    wait_until_waiting(controller, 1)
    learner = buffer.with_consumer("learner-0")
    intake = BatchIntake(
        learner, 2, 1, 0, 60.0, read_block_ms=50, refill=ControllerRefill(controller)
    )
    batch: list = []
    reading = threading.Thread(target=lambda: batch.extend(intake.next_batch(1)), daemon=True)
    reading.start()
    # The learner's discard is the only thing that can make room for w1.
    assert ray.get(waiting, timeout=CALL_S) == AdmissionReply(Answer.ADMITTED, version=1)
    buffer.push(group("new", version=1))
    ray.get(controller.release.remote("w1", 2, True), timeout=CALL_S)
    reading.join(CALL_S)
    assert [entry.trajectory.group_id for entry in batch] == ["new", "new"]
    assert intake.record_step(1, batch) == {DiscardReason.STALE: 2}
    ray.kill(controller)


def test_a_restored_controller_admits_what_the_unbooked_backlog_allows(ray_instance, redis_server):
    buffer = fresh_buffer(redis_server, "actor:restored")
    for name in ("trained", "held", "unread"):
        buffer.push(group(name, version=0))
    # The run before the crash: it trained and acknowledged one group, read and booked the
    # next, and died before its checkpoint; the third was never delivered.
    dead_learner = buffer.with_consumer("learner-0")
    read = dead_learner.read(4, block_ms=100)
    assert [e.trajectory.group_id for e in read] == ["trained"] * 2 + ["held"] * 2
    dead_learner.book(4)
    dead_learner.ack([e.entry_id for e in read[:2]], booked=2)
    # The resume, in the driver's order: the lost learner's bookings are void, then a new
    # controller learns the restored version.
    buffer.reset_booked()
    controller = RolloutController.remote(2, 2, buffer)
    ray.get(controller.set_version.remote(3), timeout=CALL_S)
    snapshot = ray.get(controller.snapshot.remote(), timeout=CALL_S)
    assert (snapshot["backlog"], snapshot["capacity"]) == (4, 2)  # (2 + 1) x 2 - 4
    admitted = AdmissionReply(Answer.ADMITTED, version=3)
    assert ray.get(controller.acquire.remote("w0", 1, 5.0), timeout=CALL_S) == admitted
    assert ray.get(controller.acquire.remote("w1", 1, 5.0), timeout=CALL_S) == admitted
    assert ray.get(controller.acquire.remote("w2", 1, 0.3), timeout=CALL_S).answer == "timed_out"
    ray.kill(controller)

"""The controller actor against the real stream: admission follows what the learner books, and a
worker killed between its push and its release leaves no phantom slot."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from relayrl.cluster.controller import (
    AdmissionReply,
    Answer,
    ControllerRefill,
    RolloutController,
)
from relayrl.cluster.ray_runtime import ray_session
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD, RedisStreamBuffer
from relayrl.learner.intake import BatchIntake
from relayrl.trajectory import Trajectory

pytestmark = pytest.mark.slow


def group(name: str) -> list[Trajectory]:
    return [
        Trajectory(
            group_id=name,
            tokens=np.arange(3),
            prompt_len=1,
            loss_mask=[0, 1, 1],
            logprobs=[0, -1, -1],
            versions=[-1, 0, 0],
            reward=float(i),
            id=f"{name}{i}",
        )
        for i in range(2)
    ]


def test_admission_follows_the_stream_and_the_learner(redis_server, tmp_path):
    buffer = RedisStreamBuffer(redis_server.url, "ctl:stream")
    buffer.ensure_group()
    with ray_session(1):
        controller = RolloutController.remote(2, 0, buffer)

        def snapshot() -> dict:
            return ray.get(controller.snapshot.remote())

        admitted = AdmissionReply(Answer.ADMITTED, version=0)
        assert ray.get(controller.acquire.remote("w0", 2, 1.0)) == admitted
        buffer.push(group("a"))  # w0 is SIGKILLed here, between XADD and release
        assert ray.get(controller.forget_worker.remote("w0")) == 2
        assert snapshot()["capacity"] == 0  # a's samples are in the stream: no second batch
        assert ray.get(controller.acquire.remote("w1", 2, 0.3)).answer == Answer.TIMED_OUT
        assert ray.get(controller.release.remote("w0", 2, True)) is None  # a late release
        assert snapshot()["running"] == 0

        intake = BatchIntake(
            buffer, 2, 1, 0, 5.0, read_block_ms=50, refill=ControllerRefill(controller)
        )
        # A corrupt entry behind the group: dead-lettered, it must give its slot back too.
        buffer.client.xadd(buffer.stream, {PAYLOAD_FIELD: b"\x93junk"})
        ray.get(controller.booked.remote(0))
        assert snapshot()["backlog"] == 3 and snapshot()["capacity"] == -1
        intake.record_step(1, intake.next_batch(0))
        assert snapshot()["backlog"] == 1  # the learner's booking reached the controller
        assert buffer.read(10, block_ms=10) == []  # the junk is dead-lettered on delivery
        ray.get(controller.set_version.remote(1))
        assert snapshot()["backlog"] == 0 and snapshot()["capacity"] == 2
        admitted = AdmissionReply(Answer.ADMITTED, version=1)
        assert ray.get(controller.acquire.remote("w1", 2, 1.0)) == admitted
        ray.get(controller.stop.remote())

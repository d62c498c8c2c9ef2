"""A rollout worker plays several groups at once on one batching engine; every admission
lease it takes is given back exactly once, whether its group succeeds, fails or is
cancelled; and the worker's event loop never blocks, even on a slow weight fetch."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl.actors.rollout_worker import RolloutWorker
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.weights import WeightVersion
from tests.worker_settings import tiny_worker_config

GROUP_SIZE = 4


class LeaseLedger:
    """An AdmissionGate that grants `groups` leases in all, at most `capacity` at a time,
    then says the job is stopping; it books every acquire and release."""

    def __init__(self, groups: int, capacity: int) -> None:
        self.remaining = groups
        self.capacity = capacity
        self.running = 0
        self.acquired = 0
        self.released = 0
        self.produced = 0
        self.over_released = 0
        self.changed = asyncio.Condition()
        # Set when a worker waits because every lease is taken.
        self.saturated = asyncio.Event()

    async def acquire(self, worker_id: str, count: int) -> int | None:
        assert count == GROUP_SIZE
        async with self.changed:
            if self.remaining and self.running >= self.capacity:
                self.saturated.set()
            await self.changed.wait_for(lambda: not self.remaining or self.running < self.capacity)
            if not self.remaining:
                return None
            self.remaining -= 1
            self.running += 1
            self.acquired += 1
            return 0

    async def release(self, worker_id: str, count: int, produced: bool) -> None:
        async with self.changed:
            self.over_released += self.running == 0
            self.running -= 1
            self.released += 1
            self.produced += produced
            self.changed.notify_all()

    async def drained(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.running == 0)

    async def settled(self, leases: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.released >= leases)


class HeldWeights:
    """A pull transport holding one published version in memory; `fetch_delay_s` stands for
    a slow store."""

    def __init__(self, fetch_delay_s: float = 0.0) -> None:
        self.published: tuple[WeightVersion, dict[str, torch.Tensor]] | None = None
        self.fetch_delay_s = fetch_delay_s
        self.fetches = 0

    def publish(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.published = (WeightVersion(version, time.time(), "", 0), state)

    def latest(self) -> WeightVersion | None:
        return self.published[0] if self.published else None

    def fetch(self, newer_than: int):
        if self.published is None or self.published[0].version <= newer_than:
            return None
        return self.published

    async def latest_async(self) -> WeightVersion | None:
        return self.latest()

    async def fetch_async(self, newer_than: int):
        found = self.fetch(newer_than)
        if found is not None:
            self.fetches += 1
            await asyncio.sleep(self.fetch_delay_s)
        return found


@pytest.fixture
def buffer(redis_server):
    stream = RedisStreamBuffer(redis_server.url, "test:worker-concurrency")
    stream.ensure_group()
    return stream


def make_worker(
    model_path: str,
    buffer,
    gate,
    concurrency: int,
    max_new_tokens: int,
    weights=None,
    env_name: str = "arithmetic",
) -> RolloutWorker:
    config = tiny_worker_config(
        GROUP_SIZE,
        max_new_tokens,
        {"env.name": env_name, "rollout.max_concurrent_groups": concurrency},
    )
    return RolloutWorker(config, "worker-0", model_path, 0, buffer, weights or HeldWeights(), gate)


def test_groups_play_at_once_in_one_batch_and_every_lease_returns(tiny_model_path, buffer):
    gate = LeaseLedger(groups=6, capacity=6)
    worker = make_worker(tiny_model_path, buffer, gate, concurrency=3, max_new_tokens=32)
    report = asyncio.run(worker.run())
    assert report["groups"] == 6 and report["peak_groups_in_flight"] == 3
    # Sequences of several groups shared a forward pass.
    assert worker.engine.peak_rows > GROUP_SIZE and worker.engine.peak_requests > 1
    assert (gate.acquired, gate.released, gate.produced, gate.over_released) == (6, 6, 6, 0)
    assert buffer.stats().length == 6 * GROUP_SIZE


def test_an_engine_failure_returns_every_lease_and_surfaces(tiny_model_path, buffer):
    gate = LeaseLedger(groups=20, capacity=20)
    worker = make_worker(tiny_model_path, buffer, gate, concurrency=3, max_new_tokens=32)
    asyncio.run(worker.engine.close())  # every generate call now fails

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="engine is closed"):
            await worker.run()
        # A lease granted while the failure cancelled the worker is given back after it.
        await asyncio.wait_for(gate.drained(), timeout=60)

    asyncio.run(scenario())
    assert gate.acquired >= 1
    assert (gate.released, gate.produced, gate.over_released) == (gate.acquired, 0, 0)
    assert buffer.stats().length == 0


def test_cancelling_the_worker_returns_every_lease(tiny_model_path, buffer):
    # Three leases for four slots: the worker ends up waiting for admission, then is stopped.
    gate = LeaseLedger(groups=100, capacity=3)
    worker = make_worker(tiny_model_path, buffer, gate, concurrency=4, max_new_tokens=800)

    async def scenario() -> None:
        run = asyncio.create_task(worker.run())
        await gate.saturated.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        # The admission the worker was waiting for lands once the cancelled groups free
        # their slots; the worker gives that lease back too.
        await asyncio.wait_for(gate.settled(4), timeout=120)

    asyncio.run(scenario())
    assert (gate.acquired, gate.released, gate.produced, gate.over_released) == (4, 4, 0, 0)
    assert worker.engine.rows_in_flight == 0


def test_the_event_loop_keeps_running_through_a_slow_weight_fetch(tiny_model_path, buffer, caplog):
    weights = HeldWeights(fetch_delay_s=0.5)
    state = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    weights.publish(1, {name: tensor + 0.01 for name, tensor in state.items()})
    gate = LeaseLedger(groups=4, capacity=4)
    worker = make_worker(tiny_model_path, buffer, gate, 2, max_new_tokens=32, weights=weights)
    ticks = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    async def scenario() -> dict:
        # Debug mode logs every callback that holds the loop longer than this.
        asyncio.get_running_loop().slow_callback_duration = 0.2
        beating = asyncio.create_task(heartbeat())
        try:
            return await worker.run()
        finally:
            beating.cancel()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        report = asyncio.run(scenario(), debug=True)
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.message]
    assert slow == []
    assert weights.fetches == 1 and worker.engine.version == 1 and report["groups"] == 4
    # It kept beating while the fetch was awaited (0.5 s at a 5 ms period).
    assert len(ticks) > 50


def test_an_env_that_fails_to_build_or_close_costs_its_group_not_the_worker(
    tiny_model_path, buffer, caplog
):
    gate = LeaseLedger(groups=6, capacity=6)
    worker = make_worker(
        tiny_model_path,
        buffer,
        gate,
        1,
        max_new_tokens=8,
        env_name="tests.failing_envs:FLAKY_SETUP",
    )
    with caplog.at_level(logging.WARNING, logger="relayrl.actors.rollout_worker"):
        report = asyncio.run(worker.run())
    # Builds 1, 6 and 11 fail: groups 1, 3 and 5 of six are skipped, the rest are pushed.
    assert report["env_failures"] == 3 and report["groups"] == 3
    assert (gate.acquired, gate.released, gate.produced, gate.over_released) == (6, 6, 3, 0)
    assert buffer.stats().length == 3 * GROUP_SIZE
    logged = [r.getMessage() for r in caplog.records]
    assert any("worker-0" in m and "a buggy environment constructor" in m for m in logged)
    assert any("a buggy close" in m for m in logged)


def test_an_env_that_never_builds_ends_the_worker_naming_the_cause(tiny_model_path, buffer):
    gate = LeaseLedger(groups=100, capacity=100)
    worker = make_worker(
        tiny_model_path,
        buffer,
        gate,
        2,
        max_new_tokens=8,
        env_name="tests.failing_envs:NEVER_BUILDS",
    )

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="this environment cannot be built"):
            await worker.run()
        await asyncio.wait_for(gate.drained(), timeout=60)

    asyncio.run(scenario())
    assert gate.acquired > 1 and gate.released == gate.acquired and gate.produced == 0
    assert buffer.stats().length == 0

"""The rollout fleet on real Ray with real workers (tiny model, transformers engine): an
engine is registered in the engine roster only once its worker has started, and a
worker whose run loop failed is killed (its process gone) before its replacement starts."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import pytest
import ray
from ray.exceptions import RayActorError

from relayrl.cluster.controller import RolloutController
from relayrl.cluster.rollout_fleet import RolloutFleet
from relayrl.cluster.weights.nccl_subscriber import PushedVersions
from relayrl.cluster.weights.object_store import WeightStore
from relayrl.cluster.weights.roster import EngineRoster, RosterClient
from tests.worker_settings import tiny_worker_config

pytestmark = pytest.mark.slow


class EmptyBacklog:
    def backlog(self) -> int:
        return 0


class RefusingGate:
    """Admission that fails: the run loop raises while its actor stays alive."""

    async def acquire(self, worker_id: str, count: int) -> int | None:
        raise RuntimeError(f"{worker_id}: admission refused by the test")

    async def release(self, worker_id: str, count: int, produced: bool) -> None:
        return None


def fleet(model_path: str, roster: RosterClient, budget: int) -> RolloutFleet:
    config = tiny_worker_config(
        fields={"rollout.cpus_per_worker": 0.5, "rollout.max_worker_restarts": budget}
    )
    controller = RolloutController.remote(4, 0, EmptyBacklog())
    weights = PushedVersions(WeightStore.remote())
    return RolloutFleet(
        config, model_path, 0, None, weights, RefusingGate(), controller,  # type: ignore[arg-type]
        engine_roster=roster,
    )  # fmt: skip


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pid(handle: Any) -> int:
    return ray.get(handle.__ray_call__.remote(lambda _: os.getpid()), timeout=120)


def test_an_engine_is_registered_only_after_its_worker_started(
    ray_instance: None, tiny_model_path: str
) -> None:
    roster = RosterClient(EngineRoster.remote(), timeout_s=60)
    workers = fleet(tiny_model_path, roster, budget=0)
    worker_id = workers.add()
    assert roster.members() == [], "registered while its engine was still being built"
    # The fleet's own readiness ref: another ref to the same actor may resolve first.
    ray.get(workers._members[worker_id].ready_ref, timeout=120)
    workers._attach_ready()
    assert [(m.worker_id, m.joined) for m in roster.members()] == [(worker_id, 1)]
    workers._attach_ready()
    assert [m.joined for m in roster.members()] == [1], "registered once"
    workers.remove(worker_id)
    assert roster.members() == []


def test_a_failed_worker_is_killed_before_its_replacement_starts(
    ray_instance: None, tiny_model_path: str
) -> None:
    roster = RosterClient(EngineRoster.remote(), timeout_s=60)
    workers = fleet(tiny_model_path, roster, budget=1)
    first = workers.add()
    handle = workers.handle(first)
    pid = _pid(handle)
    ray.wait([workers._members[first].run_ref], timeout=120)  # its run loop has failed

    events = workers.supervise()

    assert len(events) == 1 and "admission refused by the test" in events[0], events
    with pytest.raises(RayActorError):
        ray.get(handle.__ray_ready__.remote(), timeout=30)
    # Ray reports the actor dead once the kill is sent; its process then takes a moment to go.
    deadline = time.monotonic() + 30
    while _running(pid):
        assert time.monotonic() < deadline, "the killed worker's process outlived it by 30 s"
        time.sleep(0.1)
    assert first not in {m.worker_id for m in roster.members()}, "it left the roster"
    assert workers.worker_ids() == ["worker-1"]
    workers.stop(timeout_s=30)

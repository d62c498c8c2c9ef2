"""Sandboxes pooled on Ray actors (cluster/sandbox_actors.py): typed results, back-pressure,
and a dead actor replaced."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import ray

from relayrl.cluster.sandbox_actors import RaySandboxRunners
from relayrl.envs.sandbox import SandboxLimits
from relayrl.envs.sandbox.pool import SandboxPool
from tests.sandbox_processes import host_processes_with, spawn_marked_sleeper

pytestmark = pytest.mark.slow

POOL_SIZE = 2
LIMITS = SandboxLimits(wall_s=5.0, cpu_s=5)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # a stray ~/.ray/auth_token would turn auth on
        ray.init(num_cpus=POOL_SIZE, include_dashboard=False)
        yield
        ray.shutdown()


def test_pool_runs_programs_and_types_failures() -> None:
    async def scenario() -> list[str]:
        async with SandboxPool(POOL_SIZE, LIMITS, runners=RaySandboxRunners()) as pool:
            ok = await pool.run("print(6 * 7)")
            assert ok.stdout == "42\n"
            slow = await pool.run("import time; time.sleep(30)", SandboxLimits(wall_s=1.0))
            crashed = await pool.run("raise ValueError('boom')")
            return [ok.status, slow.status, crashed.status]

    assert asyncio.run(scenario()) == ["ok", "timeout", "error"]


def test_a_burst_waits_for_free_sandboxes() -> None:
    # Each program reports when it ran; at most POOL_SIZE may overlap at any moment.
    code = "import time\nstart = time.monotonic()\ntime.sleep(0.5)\nprint(start, time.monotonic())"

    async def burst() -> list[tuple[float, float]]:
        async with SandboxPool(POOL_SIZE, LIMITS, runners=RaySandboxRunners()) as pool:
            results = await asyncio.gather(*(pool.run(code) for _ in range(3 * POOL_SIZE)))
        assert {result.status for result in results} == {"ok"}
        spans = [result.stdout.split() for result in results]
        return [(float(start), float(end)) for start, end in spans]

    spans = asyncio.run(burst())
    for start, _end in spans:
        running = sum(1 for other_start, other_end in spans if other_start <= start < other_end)
        assert running <= POOL_SIZE
    assert max(end for _, end in spans) - min(start for start, _ in spans) >= 1.4


def test_a_dead_actor_is_a_typed_result_and_replaced() -> None:
    marker = f"relayrl-pool-{uuid.uuid4().hex}"
    sleeper = f"import os\n{spawn_marked_sleeper(marker)}\n"

    async def scenario() -> list[str]:
        async with SandboxPool(1, LIMITS, runners=RaySandboxRunners()) as pool:
            running = asyncio.ensure_future(pool.run(sleeper))
            while not host_processes_with(marker):
                await asyncio.sleep(0.05)
            ray.kill(pool._runners[0].actor)
            died = await running
            after = await pool.run("print('fresh')")
            return [died.status, after.status, after.stdout]

    assert asyncio.run(scenario()) == ["killed", "ok", "fresh\n"]
    deadline = time.monotonic() + 3
    while host_processes_with(marker):
        assert time.monotonic() < deadline, "the sandbox outlived its actor"
        time.sleep(0.05)

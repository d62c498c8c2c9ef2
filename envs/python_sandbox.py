"""Where the Python tool's programs run: the sandbox actor pool when Ray is up, so a burst of
tool calls queues instead of overloading the machine; else the sandbox directly."""

from __future__ import annotations

import asyncio
import math
import weakref

import ray
from pydantic import BaseModel, ConfigDict, Field

from relayrl.envs.sandbox import SandboxLimits, SandboxResult, check_host, run_python_async
from relayrl.envs.sandbox.pool import SandboxPool


class SandboxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(512, ge=64)
    # Sandbox actors per rollout worker under Ray; more concurrent calls wait for a free one.
    pool_size: int = Field(2, ge=1)
    # Ray CPUs each sandbox actor reserves; 0 lets them share the rollout worker's CPUs.
    cpus_per_sandbox: float = Field(0.0, ge=0)

    @property
    def limits(self) -> SandboxLimits:
        return SandboxLimits(
            wall_s=self.wall_s, cpu_s=max(1, math.ceil(self.wall_s)), memory_mb=self.memory_mb
        )


# One pool per event loop and settings: environments are built per episode, pools are not.
_POOLS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[SandboxParams, asyncio.Task[SandboxPool]]
] = weakref.WeakKeyDictionary()


class SandboxedPython:
    def __init__(self, params: SandboxParams) -> None:
        check_host()  # a host that cannot sandbox fails when the environment is built
        self.params = params

    async def run(self, code: str) -> SandboxResult:
        if not ray.is_initialized():
            return await run_python_async(code, self.params.limits)
        pool = await _shared_pool(self.params)
        return await pool.run(code, self.params.limits)


async def _shared_pool(params: SandboxParams) -> SandboxPool:
    async def start() -> SandboxPool:
        pool = SandboxPool(
            params.pool_size, params.limits, cpus_per_sandbox=params.cpus_per_sandbox
        )
        await pool.start()
        return pool

    loop = asyncio.get_running_loop()
    pools = _POOLS.setdefault(loop, {})
    if params not in pools:
        # Concurrent first calls await the same start instead of each starting a pool.
        pools[params] = loop.create_task(start())
    return await pools[params]

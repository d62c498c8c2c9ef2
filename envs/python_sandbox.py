"""Where the Python tool's programs run: the sandbox actor pool when Ray is up, so a burst of
tool calls queues instead of overloading the machine; else the sandbox directly."""

from __future__ import annotations

import asyncio
import weakref

import ray

from relayrl.envs.sandbox import SandboxResult, run_python_async
from relayrl.envs.sandbox.confinement import require_confinements
from relayrl.envs.sandbox.params import SandboxParams
from relayrl.envs.sandbox.pool import SandboxPool

__all__ = ["SandboxParams", "SandboxedPython"]


# One pool per event loop and settings: environments are built per episode, pools are not.
_POOLS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[SandboxParams, asyncio.Task[SandboxPool]]
] = weakref.WeakKeyDictionary()


class SandboxedPython:
    def __init__(self, params: SandboxParams) -> None:
        # A host that cannot sandbox, or only weaker than asked, fails when the env is built.
        require_confinements(params.allow_weaker, "sandbox.allow_weaker")
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

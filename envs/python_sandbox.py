"""Where the Python tool's programs run: on a pool of runners when the process that hosts the
env installed one (a rollout worker in a job: Ray sandbox actors, so a burst of tool calls
queues instead of overloading the machine); else in the sandbox directly."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from relayrl.envs.sandbox import SandboxResult, run_python_async
from relayrl.envs.sandbox.confinement import require_confinements
from relayrl.envs.sandbox.params import SandboxParams
from relayrl.envs.sandbox.pool import SandboxPool

__all__ = ["SandboxParams", "SandboxedPython", "use_sandbox_pools"]

PoolFactory = Callable[[SandboxParams], SandboxPool]

# One pool per event loop and settings: environments are built per episode, pools are not.
_POOLS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[SandboxParams, asyncio.Task[SandboxPool]]
] = weakref.WeakKeyDictionary()
_pool_factory: PoolFactory | None = None


def use_sandbox_pools(factory: PoolFactory | None) -> None:
    """Run this process's sandboxed programs on pools `factory` builds (None: directly)."""
    global _pool_factory
    _pool_factory = factory


class SandboxedPython:
    def __init__(self, params: SandboxParams) -> None:
        # A host that cannot sandbox, or only weaker than asked, fails when the env is built.
        require_confinements(params.allow_weaker, "sandbox.allow_weaker")
        self.params = params

    async def run(self, code: str) -> SandboxResult:
        if _pool_factory is None:
            return await run_python_async(code, self.params.limits)
        pool = await _shared_pool(self.params, _pool_factory)
        return await pool.run(code, self.params.limits)


async def _shared_pool(params: SandboxParams, factory: PoolFactory) -> SandboxPool:
    async def start() -> SandboxPool:
        pool = factory(params)
        await pool.start()
        return pool

    loop = asyncio.get_running_loop()
    pools = _POOLS.setdefault(loop, {})
    if params not in pools:
        # Concurrent first calls await the same start instead of each starting a pool.
        pools[params] = loop.create_task(start())
    return await pools[params]

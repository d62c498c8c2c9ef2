"""A pool of sandbox Ray actors with back-pressure: a burst of calls waits for a free actor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from relayrl.envs.sandbox.host import check_host
from relayrl.envs.sandbox.limits import SandboxLimits
from relayrl.envs.sandbox.result import SandboxResult
from relayrl.envs.sandbox.runner import DEFAULT_LIMITS, run_python
from relayrl.envs.sandbox.tools import SandboxUnavailable


class SandboxWorker:
    """One Ray actor; Ray runs its calls one at a time, so it confines one program at a time."""

    def __init__(self) -> None:
        check_host()  # a host that cannot sandbox fails the pool's start, not a tool call

    def run(
        self, code: str, limits: SandboxLimits, files: Mapping[str, str] | None
    ) -> SandboxResult:
        return run_python(code, limits, files)


_RemoteSandboxWorker: Any = ray.remote(SandboxWorker)


class SandboxPool:
    """`size` sandbox actors; `run` waits for an idle one, so at most `size` programs run at once.

    Use inside a running event loop: `async with SandboxPool(4) as pool: await pool.run(code)`.
    """

    def __init__(
        self, size: int, limits: SandboxLimits = DEFAULT_LIMITS, *, cpus_per_sandbox: float = 1.0
    ) -> None:
        if size < 1:
            raise ValueError("a sandbox pool needs at least one actor")
        self.size = size
        self.limits = limits
        self._cpus_per_sandbox = cpus_per_sandbox
        self._actors: list[ActorHandle] = []
        self._idle: asyncio.Queue[ActorHandle] = asyncio.Queue()

    async def start(self) -> None:
        """Create the actors and wait until each has checked its host."""
        self._actors = [self._new_actor() for _ in range(self.size)]
        try:
            await asyncio.gather(*(actor.__ray_ready__.remote() for actor in self._actors))
        except RayActorError as error:
            self.shutdown()
            raise SandboxUnavailable(f"a sandbox actor failed to start: {error}") from error
        for actor in self._actors:
            self._idle.put_nowait(actor)

    async def run(
        self,
        code: str,
        limits: SandboxLimits | None = None,
        files: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        if not self._actors:
            raise RuntimeError("start the SandboxPool before running programs in it")
        actor = await self._idle.get()
        started = time.monotonic()
        try:
            return await actor.run.remote(code, limits or self.limits, files)
        except RayActorError as error:
            actor = self._replace(actor)
            return SandboxResult(
                status="killed",
                exit_code=None,
                stdout="",
                stderr=f"sandbox actor died: {error}",
                duration_s=round(time.monotonic() - started, 4),
            )
        finally:
            self._idle.put_nowait(actor)

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def _new_actor(self) -> ActorHandle:
        return _RemoteSandboxWorker.options(num_cpus=self._cpus_per_sandbox).remote()

    def _replace(self, dead: ActorHandle) -> ActorHandle:
        ray.kill(dead)
        fresh = self._new_actor()
        self._actors = [fresh if actor is dead else actor for actor in self._actors]
        return fresh

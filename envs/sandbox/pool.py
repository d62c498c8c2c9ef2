"""A pool of program runners with back-pressure: a burst of calls waits for a free runner.
The runners come from whoever owns the processes (in a job, cluster/ gives Ray sandbox
actors); this module knows them only by the `ProgramRunner` / `RunnerFactory` protocols."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

from relayrl.envs.sandbox.limits import SandboxLimits
from relayrl.envs.sandbox.result import SandboxResult
from relayrl.envs.sandbox.runner import DEFAULT_LIMITS


class RunnerLost(Exception):
    """The process a program ran in died under it (not the program's own failure)."""


class ProgramRunner(Protocol):
    """Runs one confined program at a time."""

    async def ready(self) -> None:
        """Resolves once the runner has checked its host; raises SandboxUnavailable if not."""
        ...

    async def run(
        self, code: str, limits: SandboxLimits, files: Mapping[str, str] | None
    ) -> SandboxResult:
        """The program's result; raises RunnerLost when the runner itself died."""
        ...

    def close(self) -> None: ...


class RunnerFactory(Protocol):
    def new(self) -> ProgramRunner:
        """A runner that is starting (calls on it wait until it is ready)."""
        ...


class SandboxPool:
    """`size` runners; `run` waits for an idle one, so at most `size` programs run at once.

    Use inside a running event loop:
    `async with SandboxPool(4, limits, runners) as pool: await pool.run(code)`.
    """

    def __init__(
        self, size: int, limits: SandboxLimits = DEFAULT_LIMITS, *, runners: RunnerFactory
    ) -> None:
        if size < 1:
            raise ValueError("a sandbox pool needs at least one runner")
        self.size = size
        self.limits = limits
        self._factory = runners
        self._runners: list[ProgramRunner] = []
        self._idle: asyncio.Queue[ProgramRunner] = asyncio.Queue()

    async def start(self) -> None:
        """Start the runners and wait until each has checked its host."""
        self._runners = [self._factory.new() for _ in range(self.size)]
        try:
            await asyncio.gather(*(runner.ready() for runner in self._runners))
        except BaseException:
            self.shutdown()
            raise
        for runner in self._runners:
            self._idle.put_nowait(runner)

    async def run(
        self,
        code: str,
        limits: SandboxLimits | None = None,
        files: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        if not self._runners:
            raise RuntimeError("start the SandboxPool before running programs in it")
        runner = await self._idle.get()
        started = time.monotonic()
        try:
            return await runner.run(code, limits or self.limits, files)
        except RunnerLost as error:
            runner = self._replace(runner)
            return SandboxResult(
                status="killed",
                exit_code=None,
                stdout="",
                stderr=f"sandbox runner died: {error}",
                duration_s=round(time.monotonic() - started, 4),
            )
        finally:
            self._idle.put_nowait(runner)

    def shutdown(self) -> None:
        for runner in self._runners:
            runner.close()
        self._runners = []

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

    def _replace(self, dead: ProgramRunner) -> ProgramRunner:
        dead.close()
        fresh = self._factory.new()
        self._runners = [fresh if runner is dead else runner for runner in self._runners]
        return fresh

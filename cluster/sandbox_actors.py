"""The Python tool's sandbox runners in a job: Ray actors, each confining one program at a
time, handed to the env side through `relayrl.envs.sandbox.pool`'s protocols."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError

from relayrl.envs.sandbox.host import check_host
from relayrl.envs.sandbox.limits import SandboxLimits
from relayrl.envs.sandbox.params import SandboxParams
from relayrl.envs.sandbox.pool import RunnerLost, SandboxPool
from relayrl.envs.sandbox.result import SandboxResult
from relayrl.envs.sandbox.runner import run_python
from relayrl.envs.sandbox.tools import SandboxUnavailable


class SandboxActor:
    """Ray runs its calls one at a time, so it confines one program at a time."""

    def __init__(self) -> None:
        check_host()  # a host that cannot sandbox fails the pool's start, not a tool call

    def run(
        self, code: str, limits: SandboxLimits, files: Mapping[str, str] | None
    ) -> SandboxResult:
        return run_python(code, limits, files)


_RemoteSandboxActor: Any = ray.remote(SandboxActor)


class RaySandboxRunner:
    """A ProgramRunner on one sandbox actor."""

    def __init__(self, cpus: float) -> None:
        self.actor = _RemoteSandboxActor.options(num_cpus=cpus).remote()

    async def ready(self) -> None:
        try:
            await self.actor.__ray_ready__.remote()
        except RayActorError as error:
            raise SandboxUnavailable(f"a sandbox actor failed to start: {error}") from error

    async def run(
        self, code: str, limits: SandboxLimits, files: Mapping[str, str] | None
    ) -> SandboxResult:
        try:
            return await self.actor.run.remote(code, limits, files)
        except RayActorError as error:
            raise RunnerLost(str(error)) from error

    def close(self) -> None:
        ray.kill(self.actor)


class RaySandboxRunners:
    """The RunnerFactory of sandbox actors reserving `cpus_per_sandbox` Ray CPUs each."""

    def __init__(self, cpus_per_sandbox: float = 1.0) -> None:
        self._cpus = cpus_per_sandbox

    def new(self) -> RaySandboxRunner:
        return RaySandboxRunner(self._cpus)


def ray_sandbox_pool(params: SandboxParams) -> SandboxPool:
    return SandboxPool(
        params.pool_size, params.limits, runners=RaySandboxRunners(params.cpus_per_sandbox)
    )

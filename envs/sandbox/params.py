"""The sandbox settings an environment's params carry (e.g. `env.params.sandbox`)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from relayrl.envs.sandbox.limits import SandboxLimits


class SandboxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(512, ge=64)
    # Sandbox actors per rollout worker under Ray; more concurrent calls wait for a free one.
    pool_size: int = Field(2, ge=1)
    # Ray CPUs each sandbox actor reserves; 0 lets them share the rollout worker's CPUs.
    cpus_per_sandbox: float = Field(0.0, ge=0)
    allow_weaker: bool = Field(
        False,
        description=(
            "Run even where the host lacks a confinement `relayrl sandbox check` lists "
            "(namespaces, seccomp, cgroup memory or pids, rlimits, unprivileged uid, no "
            "network); what is missing is logged once. Off: such a job refuses to start."
        ),
    )

    @property
    def limits(self) -> SandboxLimits:
        return SandboxLimits(
            wall_s=self.wall_s, cpu_s=max(1, math.ceil(self.wall_s)), memory_mb=self.memory_mb
        )

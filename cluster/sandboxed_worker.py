"""The rollout worker actor of the separate placement (and the colocated actor's in-process
worker): sandboxed tool programs run on the job's sandbox actors."""

from __future__ import annotations

from typing import Any

import ray

from relayrl.actors import rollout_worker
from relayrl.cluster.sandbox_actors import ray_sandbox_pool
from relayrl.envs.python_sandbox import use_sandbox_pools


# The same class name, so the actor's process title stays ray::RolloutWorker.
class RolloutWorker(rollout_worker.RolloutWorker):
    """A rollout worker whose sandboxed tool programs run on the job's sandbox actors."""

    def __init__(self, *args: Any) -> None:
        use_sandbox_pools(ray_sandbox_pool)
        super().__init__(*args)


RemoteRolloutWorker = ray.remote(max_restarts=0)(RolloutWorker)

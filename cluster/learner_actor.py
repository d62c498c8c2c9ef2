"""A learner rank as a Ray actor (the separate placement's; LearnerGroup starts them)."""

from __future__ import annotations

import ray

from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.ports import ALL_INTERFACES, free_port


@ray.remote(max_restarts=0)
class LearnerActor(DeepSpeedLearner):
    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port for the process group."""
        return ray.util.get_node_ip_address(), free_port(ALL_INTERFACES)

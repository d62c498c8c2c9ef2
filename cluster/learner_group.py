"""The learner ranks as Ray actors in one packed placement group: rank 0 is asked for its
address first, so the others can join its process group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray
from ray.util.placement_group import remove_placement_group

from relayrl.admission import SampleRefill
from relayrl.buffer import TrajectoryConsumer
from relayrl.cluster.placement import in_bundle, learner_placement
from relayrl.config import JobConfig

if TYPE_CHECKING:
    from relayrl.weights import WeightPublisher


class LearnerGroup:
    """Calls a method on every rank at once and returns rank 0's answer."""

    def __init__(
        self,
        config: JobConfig,
        model_path: str,
        consumer: TrajectoryConsumer,
        publisher: WeightPublisher,
        refill: SampleRefill,
        call_timeout_s: float,
        while_setting_up: Callable[[], None] | None = None,
    ) -> None:
        """`while_setting_up` runs once the ranks hold their resources, before waiting for
        their start-up (imports, model load, DeepSpeed), so other actors start alongside."""
        # Imported here: it needs torch and DeepSpeed, which only the ranks' processes load.
        from relayrl.cluster.learner_actor import LearnerActor

        self.call_timeout_s = call_timeout_s
        learner = config.learner
        # All ranks are placed together or not at all: a partial group would hang in setup.
        self.placement = learner_placement(
            learner.num_ranks, learner.cpus_per_rank, learner.gpus_per_rank, call_timeout_s
        )
        self.ranks = [
            LearnerActor.options(
                num_cpus=learner.cpus_per_rank,
                num_gpus=learner.gpus_per_rank,
                **in_bundle(self.placement, rank),
            ).remote(
                config,
                model_path,
                rank,
                consumer if rank == 0 else None,
                publisher,  # every rank gathers alike for it; only rank 0 publishes
                refill if rank == 0 else None,
            )
            for rank in range(learner.num_ranks)
        ]
        if while_setting_up is not None:
            while_setting_up()
        addr, port = ray.get(self.ranks[0].rendezvous_address.remote(), timeout=call_timeout_s)
        self._all("setup", addr, port)

    def _all(self, method: str, *args: Any) -> list[Any]:
        refs = [getattr(rank, method).remote(*args) for rank in self.ranks]
        return ray.get(refs, timeout=self.call_timeout_s)

    def publish(self) -> dict[str, Any]:
        return self._all("publish")[0]

    def train_step(self) -> dict[str, Any]:
        return self._all("train_step")[0]

    def save_checkpoint(self) -> str:
        return self._all("save_checkpoint")[0]

    def restore(self, folder: str) -> dict[str, Any]:
        return self._all("restore", folder)[0]

    def call(self, method: str, *args: Any) -> Any:
        """Rank 0's answer to `method` called on every rank (the SFT stage's calls)."""
        return self._all(method, *args)[0]

    def kill(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        remove_placement_group(self.placement)

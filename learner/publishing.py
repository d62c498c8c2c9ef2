"""Each policy version handed to the weight publisher in the form it takes: a pusher gets the
live device parameters (ZeRO 0-2) or a stream gathered bucket by bucket on every rank
(ZeRO-3); any other publisher gets a full state dict on the host (gathered on every rank
under ZeRO-3). Only rank 0 publishes; every rank takes part in gathering. An engine that
joins while rank 0 waits for data gets the current version then: under ZeRO-3 rank 0 first
asks the other ranks, waiting for the batch, to gather it with it again (`SERVE_JOINS`)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn

from relayrl import metric_keys as keys
from relayrl.faults import fault_point
from relayrl.learner.full_state import full_state_dict
from relayrl.learner.gathered_buckets import GatheredBuckets
from relayrl.weights import EnginePusher, WeightPublisher, WeightVersion

# What rank 0 sends the other ranks instead of a batch when they must gather for joiners.
SERVE_JOINS = "serve_joins"


class PolicyPublishing:
    """`publisher` is the same transport on every rank (ranks >= 1 only read what kind it
    is, so that all of them gather alike); None publishes nothing."""

    def __init__(
        self, publisher: WeightPublisher | None, rank: int, num_ranks: int, zero_stage: int
    ) -> None:
        self.publisher = publisher
        self.rank = rank
        self.num_ranks = num_ranks
        self.zero_stage = zero_stage

    def publish(self, module: nn.Module, version: int) -> dict[str, Any]:
        info = self._publish(module, version)
        if info is None:
            return {}
        return {"version": info.version, "checksum": info.checksum, "bytes": info.num_bytes}

    def _publish(self, module: nn.Module, version: int) -> WeightVersion | None:
        publisher = self.publisher
        if isinstance(publisher, EnginePusher) and self.zero_stage == 3:
            if self.rank != 0:
                self.gather_for_rank_0(module)
                return None
            fault_point("mid_publish")
            return publisher.publish_buckets(
                version, GatheredBuckets(module, publisher.bucket_bytes)
            )
        if isinstance(publisher, EnginePusher):
            if self.rank != 0:
                return None
            # Straight from the live GPU parameters: no host copy.
            live = module.state_dict(keep_vars=True)
            fault_point("mid_publish")
            return publisher.publish(version, {name: t.detach() for name, t in live.items()})
        state = full_state_dict(module, self.zero_stage, self.rank)
        if self.rank != 0 or publisher is None:
            return None
        fault_point("mid_publish")
        return publisher.publish(version, state)

    def serve_joins(self, module: nn.Module) -> None:
        """Rank 0, while it waits for data: engines that joined get the current version."""
        pusher = self.publisher
        if not isinstance(pusher, EnginePusher):
            return
        if self.zero_stage < 3:
            pusher.serve_joins()
            return
        if not pusher.joined():
            return
        if self.num_ranks > 1:
            dist.broadcast_object_list([SERVE_JOINS], src=0)
        pusher.serve_joins(GatheredBuckets(module, pusher.bucket_bytes))

    def gather_for_rank_0(self, module: nn.Module) -> None:
        """Ranks >= 1 under ZeRO-3: the gathers of rank 0's push, in lockstep."""
        if not isinstance(self.publisher, EnginePusher):
            raise TypeError("only a pusher's rank 0 streams gathers")
        for _ in GatheredBuckets(module, self.publisher.bucket_bytes):
            pass

    def push_metrics(self) -> dict[str, float]:
        """Bytes and seconds of the pushes into engines since the last step (pushers only)."""
        if self.rank != 0 or not isinstance(self.publisher, EnginePusher):
            return {}
        reports = self.publisher.take_push_reports()
        if not reports:
            return {}
        seconds = [report.seconds for report in reports]
        return {
            keys.WEIGHTS_PUSHED_ENGINES: len(reports),
            keys.WEIGHTS_PUSH_BYTES: sum(report.num_bytes for report in reports),
            keys.WEIGHTS_PUSH_S_MAX: max(seconds),
            keys.WEIGHTS_PUSH_S_MEAN: sum(seconds) / len(seconds),
        }

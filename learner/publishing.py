"""Each policy version handed to the weight publisher in the form it takes: a pusher gets the
live device parameters (ZeRO 0-2) or a stream gathered bucket by bucket on every rank
(ZeRO-3); any other publisher gets a full state dict on the host (gathered on every rank
under ZeRO-3). Only rank 0 publishes; every rank takes part in gathering."""

from __future__ import annotations

from typing import Any

from torch import nn

from relayrl import metric_keys as keys
from relayrl.faults import fault_point
from relayrl.learner.full_state import full_state_dict
from relayrl.learner.gathered_buckets import GatheredBuckets
from relayrl.weights import EnginePusher, WeightPublisher, WeightVersion


class PolicyPublishing:
    """`publisher` is the same transport on every rank (ranks >= 1 only read what kind it
    is, so that all of them gather alike); None publishes nothing."""

    def __init__(self, publisher: WeightPublisher | None, rank: int, zero_stage: int) -> None:
        self.publisher = publisher
        self.rank = rank
        self.zero_stage = zero_stage

    def publish(self, module: nn.Module, version: int) -> dict[str, Any]:
        info = self._publish(module, version)
        if info is None:
            return {}
        return {"version": info.version, "checksum": info.checksum, "bytes": info.num_bytes}

    def _publish(self, module: nn.Module, version: int) -> WeightVersion | None:
        publisher = self.publisher
        if isinstance(publisher, EnginePusher) and self.zero_stage == 3:
            buckets = GatheredBuckets(module, publisher.bucket_bytes)
            if self.rank != 0:
                for _ in buckets:
                    pass  # gathering in lockstep with rank 0's push
                return None
            fault_point("mid_publish")
            return publisher.publish_buckets(version, buckets)
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

    def serve_joins(self) -> None:
        """Rank 0, while it waits for data: engines that joined get the current version."""
        if isinstance(self.publisher, EnginePusher):
            self.publisher.serve_joins()

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

"""The transport `rollout.weight_transport` names, both sides built over the actors it needs."""

from __future__ import annotations

from dataclasses import dataclass

from relayrl.cluster.placement import on_driver_node
from relayrl.cluster.weights.nccl_publisher import NcclPublisher
from relayrl.cluster.weights.nccl_subscriber import PushedVersions
from relayrl.cluster.weights.object_store import (
    ObjectStorePublisher,
    ObjectStoreSubscriber,
    WeightStore,
)
from relayrl.cluster.weights.roster import EngineRoster, RosterClient
from relayrl.config import JobConfig
from relayrl.weights import WeightPublisher, WeightSubscriber


@dataclass(frozen=True)
class WeightTransport:
    publisher: WeightPublisher  # for the learner
    subscriber: WeightSubscriber  # for every rollout worker
    roster: RosterClient | None  # for the fleet: engines to push into (push transports only)


def build_weight_transport(config: JobConfig, call_timeout_s: float) -> WeightTransport:
    store = WeightStore.options(**on_driver_node()).remote()
    if config.rollout.weight_transport == "nccl":
        vllm = config.rollout.vllm
        roster = RosterClient(EngineRoster.options(**on_driver_node()).remote(), call_timeout_s)
        publisher = NcclPublisher(
            store,
            roster,
            bucket_bytes=vllm.weight_bucket_mib << 20,
            timeout_s=vllm.weight_sync_timeout_s,
            call_timeout_s=call_timeout_s,
        )
        return WeightTransport(publisher, PushedVersions(store, call_timeout_s), roster)
    return WeightTransport(
        ObjectStorePublisher(store, call_timeout_s),
        ObjectStoreSubscriber(store, call_timeout_s),
        None,
    )

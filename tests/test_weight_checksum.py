"""A worker refuses weights whose bytes differ from what the learner published: the object
store transport checks every version's checksum before the engine sees it."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray
import torch

from relayrl.cluster.weights.codec import to_wire
from relayrl.cluster.weights.object_store import (
    ObjectStorePublisher,
    ObjectStoreSubscriber,
    WeightStore,
)
from relayrl.weights import WeightChecksumError, WeightVersion, checksum

pytestmark = pytest.mark.slow

STATE = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(4)}


def test_a_version_whose_bytes_changed_after_publishing_is_refused(ray_instance) -> None:
    store = WeightStore.remote()
    ObjectStorePublisher(store, timeout_s=60).publish(1, STATE)
    worker = ObjectStoreSubscriber(store, timeout_s=60)
    found = worker.fetch(0)
    assert found is not None and found[0].version == 1
    assert torch.equal(found[1]["w"], STATE["w"])

    # Version 2 announces the checksum of the learner's state, but one value changed on the way.
    digest, num_bytes = checksum(STATE)
    changed = {"w": STATE["w"].clone(), "b": STATE["b"]}
    changed["w"][1, 2] += 1e-3
    info = WeightVersion(2, time.time(), digest, num_bytes)
    ray.get(store.release_tensors.remote())
    ray.get(store.put.remote(info, [ray.put(to_wire(changed))]))
    with pytest.raises(WeightChecksumError, match="v2"):
        worker.fetch(1)
    # The path a rollout worker takes between groups checks the same way.
    with pytest.raises(WeightChecksumError, match="v2"):
        asyncio.run(worker.fetch_async(1))

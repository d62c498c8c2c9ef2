"""On a GPU, the NCCL publisher is handed the learner's device tensors: the live parameters
under ZeRO 0-2, and under ZeRO-3 buckets gathered on the GPU one at a time; no copy to the
host and back, no checksum pass over the bytes. A recording sender stands in for the NCCL
broadcast into an engine (that one is in test_vllm_engine.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from relayrl.cluster.weights.nccl_publisher import NcclPublisher
from relayrl.cluster.weights.object_store import WeightStore
from relayrl.cluster.weights.roster import EngineMember, EngineRoster, RosterClient
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.ports import free_port
from relayrl.weights import TensorMeta
from tests.learner_data import learner_config

pytestmark = pytest.mark.gpu

BUCKET_BYTES = 256 << 10


class Recorded:
    """A sender factory whose senders note where each tensor lives, and keep a copy."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.pointers: set[int] = set()
        self.state: dict[str, torch.Tensor] = {}

    def __call__(self, member: EngineMember, metadata: list[TensorMeta]) -> Any:
        recorded = self

        class Sender:
            def send(self, version: int, meta: list[TensorMeta], tensors: Iterator[Any]) -> None:
                for name, tensor in tensors:
                    recorded.devices.add(tensor.device.type)
                    recorded.pointers.add(tensor.data_ptr())
                    recorded.state[name] = tensor.detach().cpu().clone()

            def close(self) -> None:
                return None

        return Sender()


def _pushing_learner(model_path: str, out: Path, zero_stage: int) -> tuple[Any, Recorded]:
    recorded = Recorded()
    roster = RosterClient(EngineRoster.remote(), timeout_s=120)
    roster.join("engine", "receiver", 1)
    publisher = NcclPublisher(
        WeightStore.remote(), roster, bucket_bytes=BUCKET_BYTES, timeout_s=120,
        sender_factory=recorded,
    )  # fmt: skip
    fields = {"learner.gpus_per_rank": 1, "learner.zero_stage": zero_stage}
    config = learner_config(str(out), fields)
    learner = DeepSpeedLearner(config, model_path, 0, consumer=None, publisher=publisher)
    learner.setup("127.0.0.1", free_port())
    return learner, recorded


def test_zero1_pushes_the_live_gpu_parameters(
    ray_instance: None, tiny_model_path: str, tmp_path: Path
) -> None:
    learner, recorded = _pushing_learner(tiny_model_path, tmp_path, zero_stage=1)
    learner.publish()
    module = learner.engine.module
    assert recorded.state and recorded.devices == {"cuda"}
    live = {p.data_ptr() for p in module.parameters()} | {b.data_ptr() for b in module.buffers()}
    assert recorded.pointers <= live, "views of the parameters, not copies"
    assert learner.publishing.push_metrics()["weights/pushed_engines"] == 1


def test_zero3_pushes_gpu_buckets_gathered_one_at_a_time(
    ray_instance: None, tiny_model_path: str, tmp_path: Path
) -> None:
    learner, recorded = _pushing_learner(tiny_model_path, tmp_path, zero_stage=3)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    learner.publish()
    peak = torch.cuda.max_memory_allocated() - before
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    full = expected.state_dict()
    assert recorded.devices == {"cuda"} and list(recorded.state) == list(full)
    assert all(torch.equal(recorded.state[name], full[name]) for name in full)
    total = sum(t.numel() * t.element_size() for t in full.values())
    assert peak < total, "the gathered model was never on the GPU whole: bucket by bucket"
    metrics = learner.publishing.push_metrics()
    assert metrics["weights/push_bytes"] == total and metrics["weights/push_s_mean"] >= 0

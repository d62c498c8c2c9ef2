"""On a GPU, a push transport is handed the learner's live GPU parameters (ZeRO 0-2): no
copy to the host and back, no checksum pass over the bytes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.ports import free_port
from relayrl.weights import WeightVersion
from tests.learner_data import learner_config

pytestmark = pytest.mark.gpu


class RecordingPush:
    """A push publisher that keeps what it was handed."""

    pushes = True

    def __init__(self) -> None:
        self.state: Mapping[str, torch.Tensor] = {}

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion:
        self.state = state
        return WeightVersion(version, 0.0, "", 0)

    def serve_joins(self) -> None:
        return None


def test_a_push_publisher_gets_the_live_gpu_parameters(
    tiny_model_path: str, tmp_path: Path
) -> None:
    port = free_port()
    config = learner_config(str(tmp_path), {"learner.gpus_per_rank": 1})
    publisher = RecordingPush()
    learner = DeepSpeedLearner(config, tiny_model_path, 0, consumer=None, publisher=publisher)
    learner.setup("127.0.0.1", port)
    learner.publish()
    assert publisher.state and {t.device.type for t in publisher.state.values()} == {"cuda"}
    live = {p.data_ptr() for p in learner.engine.module.parameters()}
    assert {t.data_ptr() for t in publisher.state.values()} <= live | {
        b.data_ptr() for b in learner.engine.module.buffers()
    }, "views of the parameters, not copies"

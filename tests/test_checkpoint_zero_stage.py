"""A checkpoint resumed at another ZeRO stage, with real one-rank learners: ZeRO-2 and ZeRO-1
load each other's engine state (DeepSpeed's one partitioned optimizer), while ZeRO-0 (auto on
one rank) is refused with the way back, before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relayrl.learner import checkpoint
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.models import cache_root
from tests.free_ports import on_a_free_port
from tests.learner_data import TrajectoryMaker, learner_config

pytestmark = pytest.mark.slow


def built(model_path: str, output_dir: Path, zero_stage: int | str) -> DeepSpeedLearner:
    fields = {
        "learner.zero_stage": zero_stage,
        "rollout.group_size": 4,
        "learner.micro_batch_tokens": 20,
    }
    learner = DeepSpeedLearner(
        learner_config(str(output_dir), fields), model_path, 0, consumer=None, publisher=None
    )
    on_a_free_port(lambda port: learner.setup("127.0.0.1", port))
    return learner


def adam_moments(learner: DeepSpeedLearner) -> list[torch.Tensor]:
    inner = learner.engine.optimizer.optimizer  # the AdamW under DeepSpeed's ZeRO optimizer
    return [state["exp_avg"].clone() for state in inner.state.values()]


def test_a_zero2_checkpoint_resumes_at_zero1_and_is_refused_at_auto_zero0(
    tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    saver = built(tiny_model_path, tmp_path, 2)
    trajectories = TrajectoryMaker(tiny_model_path).group([1.0, 0.0, 0.0, 1.0], 4, 6)
    saver._shared_batch = lambda: (trajectories, [])  # type: ignore[method-assign]
    saver.train_step()
    folder = Path(saver.save_checkpoint())
    assert checkpoint.read_state(folder)[checkpoint.ZERO_STAGE_KEY] == 2

    refused = built(tiny_model_path, tmp_path, "auto")
    assert refused.config.learner.resolved_zero_stage == 0
    with pytest.raises(checkpoint.ZeroStageMismatchError) as error:
        refused.restore(str(folder))
    message = str(error.value)
    assert "learner.zero_stage" in message and "stage 2" in message and "stage 0" in message
    assert "learner.zero_stage=2" in message
    assert refused.step == 0  # refused before anything was loaded
    # The driver's check, before it starts anything, on the folder `latest` names.
    with pytest.raises(checkpoint.ZeroStageMismatchError, match=r"learner\.zero_stage=2"):
        checkpoint.check_resumable(folder.parent, 0)
    # A checkpoint from before stages were recorded: DeepSpeed's file names tell.
    legacy = checkpoint.read_state(folder)
    del legacy[checkpoint.ZERO_STAGE_KEY]
    with pytest.raises(checkpoint.ZeroStageMismatchError, match=r"stage 1 or 2 .*stage 0"):
        checkpoint.check_zero_stage(folder, legacy, 0)

    resumed = built(tiny_model_path, tmp_path, 1)
    assert resumed.restore(str(folder)) == {"step": 1, "version": 1}
    for theirs, ours in zip(adam_moments(saver), adam_moments(resumed), strict=True):
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    for name, value in saver.engine.module.state_dict().items():
        assert torch.equal(resumed.engine.module.state_dict()[name], value), name

"""The learner rank's device comes from learner.gpus_per_rank, not from the machine, and a
rank's process group outlasts rank 0's wait for a batch."""

from __future__ import annotations

import pytest
import torch
from deepspeed.constants import default_pg_timeout

from relayrl.config import JobConfig
from relayrl.learner.deepspeed_learner import (
    DeepSpeedLearner,
    LearnerDeviceError,
    collective_timeout,
    learner_device,
)
from tests.learner_data import learner_config


def test_a_cpu_rank_stays_on_cpu_on_a_gpu_machine() -> None:
    assert learner_device(0, cuda_available=True, cuda_build="13.0") == "cpu"
    assert learner_device(0, cuda_available=False, cuda_build=None) == "cpu"


def test_a_gpu_rank_takes_its_gpu() -> None:
    assert learner_device(1, cuda_available=True, cuda_build="13.0") == "cuda"


def test_a_gpu_rank_without_a_usable_driver_refuses_to_train() -> None:
    with pytest.raises(LearnerDeviceError, match=r"no usable CUDA device.*CUDA 13\.0"):
        learner_device(1, cuda_available=False, cuda_build="13.0")


def test_a_gpu_rank_on_a_cpu_build_of_torch_names_the_gpu_install() -> None:
    with pytest.raises(LearnerDeviceError, match=r"CPU build.*install\.sh --gpu"):
        learner_device(1, cuda_available=False, cuda_build=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_setup_of_a_gpu_rank_without_cuda_fails_before_joining_a_group(tmp_path) -> None:
    config = learner_config(str(tmp_path), {"learner.gpus_per_rank": 1})
    learner = DeepSpeedLearner(config, "unused-model", 0, consumer=None, publisher=None)
    with pytest.raises(LearnerDeviceError):
        learner.setup("127.0.0.1", 1)  # port 1: reaching the rendezvous would fail otherwise
    assert learner.engine is None


def test_the_process_group_outlasts_a_batch_wait() -> None:
    default_wait = JobConfig().learner.batch_timeout_s
    assert default_pg_timeout.total_seconds() <= default_wait  # why the default is not enough
    for batch_timeout_s in (default_wait, 3600.0):
        assert collective_timeout(batch_timeout_s).total_seconds() > batch_timeout_s

"""The SFT stage of a job (`trainer.sft`): supervised steps on the learner's own ranks, before
RL and before any rollout worker starts, so the workers start from the fine-tuned weights.
Resumable: `--resume` continues from the newest SFT checkpoint, or only loads it when the
stage had finished; once RL has a checkpoint of its own, the stage is behind the run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from relayrl.config import JobConfig
from relayrl.errors import JobConfigError
from relayrl.learner.checkpoint import latest_checkpoint
from relayrl.metrics import MetricsWriter
from relayrl.sft_config import sft_dir

log = logging.getLogger(__name__)


class SftRunExistsError(JobConfigError):
    """A fresh run would train over a previous run's SFT checkpoints."""


class LearnerCalls(Protocol):
    def call(self, method: str, *args: Any) -> Any:
        """Rank 0's answer to `method` called on every learner rank."""
        ...


class InProcessLearner:
    """One learner rank in this process (`relayrl sft`), called as the group would be."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.learner, method)(*args)


def check_sft_data(config: JobConfig) -> None:
    sft = config.trainer.sft
    if sft is not None and not os.path.isfile(sft.data):
        raise JobConfigError(
            f"trainer.sft.data: {sft.data} is not a file (write one with relayrl demos)"
        )


def run_sft_stage(
    config: JobConfig, learner: LearnerCalls, resume: bool, rl_restored: Path | None
) -> Path | None:
    """The Hugging Face folder of the fine-tuned policy for the workers to start from; None
    when there is no stage to run (none configured, or RL resumed from its own checkpoint,
    whose weights the workers are sent)."""
    sft = config.trainer.sft
    if sft is None:
        return None
    root = sft_dir(config.output_dir)
    latest = latest_checkpoint(root)
    if latest is not None and not resume:
        raise SftRunExistsError(
            f"output.dir {config.output_dir} holds SFT checkpoints of a previous run ({latest}): "
            "add --resume to continue it, or set output.dir and name for a new one"
        )
    if rl_restored is not None:
        log.info("SFT: skipped, RL resumed from %s", rl_restored)
        return None
    check_sft_data(config)
    position = learner.call("start_sft")
    if latest is not None:
        position = learner.call("restore_sft", str(latest))
        log.info("SFT: resumed from %s (step %d)", latest, position["step"])
    step, total = position["step"], position["total_steps"]
    log.info("SFT: %d conversations, steps %d..%d", position["rows"], step + 1, total)
    folder = latest
    every = sft.checkpoint_every
    writer = MetricsWriter(root, tensorboard=config.output.tensorboard, after_step=step)
    try:
        while step < total:
            metrics = learner.call("sft_step")
            step = int(metrics["sft/step"])
            if (every and step % every == 0) or step == total:
                folder = Path(learner.call("save_sft_checkpoint"))
            writer.write(step, metrics)
            log.info("SFT step %d/%d loss=%.4f", step, total, metrics["sft/loss"])
    finally:
        writer.close()
    learner.call("end_sft")
    assert folder is not None, "the last SFT step always writes a checkpoint"
    return folder / "hf"

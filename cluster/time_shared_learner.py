"""The colocated actor's learner rank: it holds the in-process engine paused from the moment
its step's batch is read until the step's version is published."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from relayrl import metric_keys as keys
from relayrl.actors.hf_engine import TransformersEngine
from relayrl.buffer import BufferEntry
from relayrl.learner.deepspeed_learner import DeepSpeedLearner
from relayrl.trajectory import Trajectory


class TimeSharedLearner(DeepSpeedLearner):
    """A learner rank that holds `rollout_engine` paused from the moment its step's batch is
    read until the step's version is published, and leaves the shared module in eval mode."""

    rollout_engine: TransformersEngine | None = None
    _step_hold: ExitStack | None = None
    _drain_s = 0.0

    def train_step(self) -> dict[str, Any]:
        with ExitStack() as hold:
            self._step_hold = hold
            self._drain_s = 0.0
            metrics = super().train_step()
        self._step_hold = None
        return {**metrics, keys.TIME_ENGINE_DRAIN_S: self._drain_s}

    def _shared_batch(self) -> tuple[list[Trajectory], list[BufferEntry]]:
        batch = super()._shared_batch()
        engine = self.rollout_engine
        if engine is not None and self._step_hold is not None:
            started = time.perf_counter()
            module = self._step_hold.enter_context(engine.paused())
            # Runs first on exit, while the engine is still paused.
            self._step_hold.callback(module.eval)
            self._drain_s = time.perf_counter() - started
        return batch

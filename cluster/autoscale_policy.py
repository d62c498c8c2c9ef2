"""When to grow or shrink the rollout fleet, from the figures of each learner step. Free of
Ray and of the clock (the caller passes the time), so every decision is testable on its own."""

from __future__ import annotations

from dataclasses import dataclass

from relayrl.autoscale_config import AutoscaleConfig


@dataclass(frozen=True)
class FleetObservation:
    """What one learner step showed about supply and demand of trajectories."""

    workers: int  # the fleet's current target size
    learner_idle_fraction: float  # share of the step the learner waited on data
    worker_idle_fraction: float  # share of the step the workers waited on admission
    backlog: int  # stream entries the learner has not booked yet
    batch_size: int  # trajectories one learner step trains on


class AutoscalePolicy:
    """Grow while the learner starves; shrink while a full batch waits and the workers sit
    on admission. A condition must hold `patience_steps` steps in a row, and changes are
    `cooldown_s` apart; the gap between the two learner-idle thresholds keeps the fleet from
    flapping around one size."""

    def __init__(self, config: AutoscaleConfig, now: float) -> None:
        self.config = config
        self._last_change = now
        self._grow_streak = 0
        self._shrink_streak = 0

    def _starving(self, seen: FleetObservation) -> bool:
        return seen.learner_idle_fraction >= self.config.grow_learner_idle

    def _oversupplied(self, seen: FleetObservation) -> bool:
        config = self.config
        return (
            seen.learner_idle_fraction <= config.shrink_learner_idle
            and seen.worker_idle_fraction >= config.shrink_worker_idle
            and seen.backlog >= seen.batch_size
        )

    def decide(self, seen: FleetObservation, now: float) -> int | None:
        """The new fleet size, or None to keep it."""
        config = self.config
        bounded = min(max(seen.workers, config.min_workers), config.max_workers)
        if bounded != seen.workers:
            return self._changed(bounded, now)  # a target set out of bounds is corrected at once
        self._grow_streak = self._grow_streak + 1 if self._starving(seen) else 0
        self._shrink_streak = self._shrink_streak + 1 if self._oversupplied(seen) else 0
        if now - self._last_change < config.cooldown_s:
            return None
        if self._grow_streak >= config.patience_steps and seen.workers < config.max_workers:
            return self._changed(min(seen.workers + config.step_workers, config.max_workers), now)
        if self._shrink_streak >= config.patience_steps and seen.workers > config.min_workers:
            return self._changed(max(seen.workers - config.step_workers, config.min_workers), now)
        return None

    def _changed(self, target: int, now: float) -> int:
        self._last_change = now
        self._grow_streak = self._shrink_streak = 0
        return target

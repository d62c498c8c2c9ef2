"""What the driver shows each learner step: on a terminal, a panel redrawn in place
(progress, reward, eval, throughput, staleness, workers); otherwise one status line per step
in the log, so a file or `ray job logs` gets a line it can grep."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from relayrl import metric_keys as keys
from relayrl.cluster.training_loop import StepReport
from relayrl.cluster.worker_metrics import per_worker

log = logging.getLogger(__name__)

# Panel lines listing single workers; a larger fleet is summed up in one line.
MAX_WORKER_LINES = 8
BAR_WIDTH = 24


def _named_channels(metrics: dict[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> str:
    return " ".join(
        f"{key.removeprefix(prefix)}={value:.3f}"
        for key, value in sorted(metrics.items())
        if key.startswith(prefix) and key not in skip and isinstance(value, int | float)
    )


def _reward_channels(metrics: dict[str, Any]) -> str:
    return _named_channels(metrics, "reward/", (keys.REWARD_MEAN, keys.REWARD_STD))


def status_line(metrics: dict[str, Any], total: int) -> str:
    """One line per step: progress, reward and its channels, eval, throughput, staleness,
    workers and where the step's time went."""
    parts = [
        f"step {metrics['step']}/{total}",
        f"reward={metrics['reward/mean']:.3f}",
        _reward_channels(metrics),
        _named_channels(metrics, "eval/"),
        f"len={metrics['response/length_mean']:.0f}",
        f"loss={metrics['loss/total']:+.4f}",
        f"stale<={metrics['staleness/max']}",
        f"workers={metrics.get('rollout/workers', 0)}",
        f"gen={metrics.get('pipeline/rollout_tokens_per_s', 0.0):.0f}tok/s",
        f"traj={metrics.get('pipeline/rollout_trajectories_per_s', 0.0):.1f}/s",
        f"wait={metrics['time/wait_batch_s']:.1f}s",
        f"train={metrics['time/train_s']:.1f}s",
        f"step={metrics['time/step_s']:.1f}s",
    ]
    return " ".join(part for part in parts if part)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def panel(
    metrics: dict[str, Any], total: int, start: int, elapsed_s: float, name: str
) -> list[str]:
    """The terminal panel's lines for the latest step."""
    step = metrics["step"]
    done = step / max(total, 1)
    filled = round(done * BAR_WIDTH)
    rate = (step - start) / max(elapsed_s, 1e-9)
    eta = (total - step) / rate if rate > 0 else 0.0
    lines = [
        f"{name}  step {step}/{total} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
        f"{100 * done:.0f}%  elapsed {_duration(elapsed_s)}  eta {_duration(eta)}",
        f"  reward     {metrics['reward/mean']:.3f} ±{metrics.get('reward/std', 0.0):.3f}  "
        f"{_reward_channels(metrics)}",
    ]
    evaluation = _named_channels(metrics, "eval/")
    if evaluation:
        lines.append(f"  eval       {evaluation}")
    lines += [
        f"  throughput rollout {metrics.get('pipeline/rollout_tokens_per_s', 0.0):.0f} tok/s "
        f"{metrics.get('pipeline/rollout_trajectories_per_s', 0.0):.1f} traj/s   learner "
        f"{metrics.get('pipeline/learner_tokens_per_s', 0.0):.0f} tok/s   step "
        f"{metrics['time/step_s']:.1f}s (wait {metrics['time/wait_batch_s']:.1f}s, train "
        f"{metrics['time/train_s']:.1f}s)",
        f"  staleness  max {metrics['staleness/max']} mean "
        f"{metrics.get('staleness/mean', 0.0):.2f}   queue "
        f"{metrics.get('buffer/queue_depth', 0)} pending {metrics.get('buffer/pending', 0)} "
        f"dead {metrics.get('buffer/dead_letters', 0)}",
        f"  workers    {metrics.get('rollout/workers', 0)} (restarts "
        f"{metrics.get('rollout/restarts', 0)})  idle "
        f"{100 * metrics.get('pipeline/worker_idle_fraction', 0.0):.0f}%   learner idle "
        f"{100 * metrics.get('pipeline/learner_idle_fraction', 0.0):.0f}%",
    ]
    workers = per_worker(metrics)
    for worker, figures in sorted(workers.items())[:MAX_WORKER_LINES]:
        lines.append(
            f"    {worker:<12} {figures.get('tokens_per_s', 0.0):7.0f} tok/s "
            f"{figures.get('trajectories_per_s', 0.0):5.1f} traj/s  idle "
            f"{100 * figures.get('idle_fraction', 0.0):3.0f}%"
        )
    if len(workers) > MAX_WORKER_LINES:
        lines.append(f"    ... and {len(workers) - MAX_WORKER_LINES} more workers")
    return lines


class LiveDisplay:
    """A `LoopHooks.on_step` presenter: each step's metrics as a panel redrawn in place on a
    TTY, else as one log line."""

    def __init__(
        self,
        name: str,
        total: int,
        start: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._name = name
        self._total = total
        self._start = start
        self._clock = clock
        self._started = clock()
        self._drawn = 0

    def __call__(self, report: StepReport) -> None:
        self.update(dict(report.metrics))

    def update(self, metrics: dict[str, Any]) -> None:
        if not self._tty:
            log.info(status_line(metrics, self._total))
            return
        lines = panel(metrics, self._total, self._start, self._clock() - self._started, self._name)
        # Back to the panel's first line and clear below it: the panel is redrawn in place.
        erase = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self._stream.write(erase + "\n".join(lines) + "\n")
        self._stream.flush()
        self._drawn = len(lines)

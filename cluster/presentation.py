"""What a run shows its operator: one log line per step, a progress bar on a terminal, and the
reward curve at the end. Presenters are `LoopHooks.on_step` callbacks; the loop knows none."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm import tqdm

from relayrl.cluster.training_loop import StepReport
from relayrl.config import JobConfig
from relayrl.plot import plot_rewards

log = logging.getLogger(__name__)


def status_line(metrics: Any, total: int) -> str:
    channels = " ".join(
        f"{k.removeprefix('reward/')}={v:.2f}"
        for k, v in sorted(metrics.items())
        if k.startswith("reward/") and k not in ("reward/mean", "reward/std")
    )
    return (
        f"step {metrics['step']}/{total} reward={metrics['reward/mean']:.3f} {channels} "
        f"len={metrics['response/length_mean']:.0f} loss={metrics['loss/total']:+.4f} "
        f"stale<={metrics['staleness/max']} wait={metrics['time/wait_batch_s']:.1f}s "
        f"train={metrics['time/train_s']:.1f}s step={metrics['time/step_s']:.1f}s"
    )


def log_step(report: StepReport) -> None:
    log.info(status_line(report.metrics, report.total))


class ProgressBar:
    """A tqdm bar on stderr when it is a terminal; use as a context manager."""

    def __init__(self, total: int, initial: int) -> None:
        self._bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                         disable=not sys.stderr.isatty(), dynamic_ncols=True)  # fmt: skip

    def __call__(self, report: StepReport) -> None:
        self._bar.update(1)
        self._bar.set_postfix(reward=f"{report.metrics['reward/mean']:.3f}")

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.close()


def reward_plot(config: JobConfig, metrics: Path, output_dir: Path) -> Path | None:
    if not config.output.plot:
        return None
    return plot_rewards(metrics, output_dir / "reward_curve.png", config.name)

"""What a run shows its operator at the end: the reward curve and the run report. The live
display of each step (cluster/live_display.py) and the Prometheus series
(cluster/prometheus.py) are `LoopHooks.on_step` callbacks; the loop knows none."""

from __future__ import annotations

from pathlib import Path

from relayrl.config import JobConfig
from relayrl.plot import plot_rewards
from relayrl.report import write_report


def reward_plot(config: JobConfig, metrics: Path, output_dir: Path) -> Path | None:
    if not config.output.plot:
        return None
    return plot_rewards(metrics, output_dir / "reward_curve.png", config.name)


def run_report(config: JobConfig, metrics: Path, output_dir: Path) -> Path | None:
    """OUTPUT/report.html: reward, eval, throughput, staleness, idle fractions and workers
    over wall time, on one self-contained page."""
    if not config.output.plot:
        return None
    return write_report(metrics, output_dir / "report.html", config.name)

"""The driver: preflight, then the started parts of the job (cluster/job_runtime.py), the one
training loop over them (cluster/training_loop.py) and what it shows (cluster/presentation.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from relayrl.cluster.autoscaler import autoscaling
from relayrl.cluster.evaluation import periodic_evaluation
from relayrl.cluster.job_runtime import started_job
from relayrl.cluster.live_display import LiveDisplay
from relayrl.cluster.placement_rule import with_placement_resolved
from relayrl.cluster.preflight import preflight
from relayrl.cluster.presentation import reward_plot, run_report
from relayrl.cluster.prometheus import PrometheusExporter
from relayrl.cluster.training_loop import LoopHooks, TrainingLoop
from relayrl.config import JobConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    output_dir: Path
    checkpoint: Path | None
    metrics: Path
    plot: Path | None
    # The last step trained: trainer.steps, or where `relayrl stop` ended the run.
    steps: int
    stopped: bool
    redis_url: str
    stream: str
    worker_reports: list[dict[str, Any]] = field(default_factory=list)
    # OUTPUT/report.html (output.plot): the run's figures over wall time.
    report: Path | None = None


def run_job(config: JobConfig, resume: bool = False, hooks: LoopHooks | None = None) -> JobResult:
    """Run the job in config to trainer.steps (or a stop request); `hooks` plug features into
    the loop beside the default presenters."""
    preflight(config)  # the CLI ran it already; library callers get it here, in milliseconds
    config = with_placement_resolved(config)
    output_dir = Path(config.output_dir)
    if config.buffer.url and urlsplit(config.buffer.url).password:
        log.warning(
            "buffer.url carries a password: config.yaml and logs show it redacted, but it "
            "stays wherever the URL was typed; use buffer.password_env or buffer.password_file"
        )
    # The dump redacts any password in buffer.url; password_env/file name only where it is.
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    hooks = hooks or LoopHooks()
    evaluation = periodic_evaluation(config, output_dir)
    hooks = replace(hooks, step_metrics=[*hooks.step_metrics, *evaluation])
    with (
        started_job(config, output_dir, resume) as runtime,
        autoscaling(config, runtime.job_control) as autoscale,
    ):
        display = LiveDisplay(config.name, config.trainer.steps, runtime.start_step)
        exporter = PrometheusExporter(config.name)
        on_step = [display, exporter.on_step, *autoscale, *hooks.on_step]
        presented = replace(hooks, on_step=on_step)
        outcome = TrainingLoop(runtime, presented).run()
    metrics = runtime.writer.jsonl_path
    return JobResult(
        output_dir=output_dir,
        checkpoint=outcome.checkpoint / "hf" if outcome.checkpoint else None,
        metrics=metrics,
        plot=reward_plot(config, metrics, output_dir),
        report=run_report(config, metrics, output_dir),
        steps=outcome.last_step,
        stopped=outcome.stopped,
        redis_url=runtime.redis_url,
        stream=config.stream_name,
        worker_reports=runtime.fleet.reports,
    )

"""Experiment trackers behind one small protocol: Weights & Biases and MLflow, imported only
when `output.loggers` names them, so neither is a dependency of relayrl.

A resumed job continues the same tracker run: W&B by a run id fixed by the output folder,
MLflow by the run id kept in OUTPUT/mlflow_run_id."""

from __future__ import annotations

import importlib
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from relayrl.errors import JobConfigError
from relayrl.tracker_config import MlflowLogger, TrackerConfig, WandbLogger

# The module each tracker needs, and the package that installs it.
REQUIRED = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}
MLFLOW_RUN_FILE = "mlflow_run_id"
# MLflow metric names allow these characters only; "pass@k" becomes "pass_at_k".
_MLFLOW_UNSAFE = re.compile(r"[^/\w.\- :]")


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def missing_trackers(loggers: Sequence[TrackerConfig]) -> list[str]:
    """One line per configured tracker whose module does not import, naming what to install."""
    problems = []
    for position, logger in enumerate(loggers):
        module, package = REQUIRED[logger.name]
        try:
            importlib.import_module(module)
        except ImportError as error:
            problems.append(
                f"output.loggers[{position}]: {logger.name} is configured but cannot be "
                f"imported ({error}); pip install {package}, or remove it from output.loggers"
            )
    return problems


def require_trackers(loggers: Sequence[TrackerConfig]) -> None:
    problems = missing_trackers(loggers)
    if problems:
        raise JobConfigError("; ".join(problems))


class WandbTracker:
    def __init__(
        self, settings: WandbLogger, job: str, output_dir: Path, config: Mapping[str, Any]
    ) -> None:
        import wandb

        folder = output_dir.resolve()
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=job,
            # The same folder is the same run: --resume continues it.
            id=f"{job}-{zlib.crc32(str(folder).encode()):08x}",
            resume="allow",
            mode=settings.mode,
            dir=str(folder),
            tags=settings.tags,
            config=dict(config),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def mlflow_name(key: str) -> str:
    return _MLFLOW_UNSAFE.sub("_", key.replace("@", "_at_"))


class MlflowTracker:
    def __init__(
        self, settings: MlflowLogger, job: str, output_dir: Path, config: Mapping[str, Any]
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        run_file = output_dir / MLFLOW_RUN_FILE
        if run_file.is_file():
            self.run_id = run_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(settings.experiment)
        experiment = (
            found.experiment_id if found else self.client.create_experiment(settings.experiment)
        )
        run = self.client.create_run(experiment, run_name=job, tags={"relayrl.job": job})
        self.run_id = run.info.run_id
        run_file.write_text(self.run_id + "\n")
        self.client.log_dict(self.run_id, dict(config), "config.json")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(
    loggers: Sequence[TrackerConfig], job: str, output_dir: Path, config: Mapping[str, Any]
) -> list[Tracker]:
    """A started tracker per entry of `output.loggers`; `config` is logged with each run."""
    require_trackers(loggers)
    trackers: list[Tracker] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            trackers.append(WandbTracker(logger, job, output_dir, config))
        else:
            trackers.append(MlflowTracker(logger, job, output_dir, config))
    return trackers

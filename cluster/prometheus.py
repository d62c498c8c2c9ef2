"""Each step's metrics as Prometheus series through Ray's metrics API, recorded from the
driver: Ray's metrics agent on each node serves them to a Prometheus scrape (and to Ray's
Grafana dashboards). A metric `group/name` becomes `ray_relayrl_group_name{job=...}`;
`worker/<id>/name` becomes `ray_relayrl_worker_name{job=..., worker=<id>}`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ray.util.metrics import Counter, Gauge

from relayrl.cluster.training_loop import StepReport

PREFIX = "relayrl_"


def series_name(key: str) -> str:
    """A metric key as a Prometheus name: letters, digits and underscores only."""
    return PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", key)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class PrometheusExporter:
    def __init__(self, job_name: str) -> None:
        self._job = job_name
        self._gauges: dict[str, Gauge] = {}
        self._steps = Counter(
            PREFIX + "steps", description="Learner steps completed.", tag_keys=("job",)
        )
        self._trained = Counter(
            PREFIX + "trained_trajectories",
            description="Trajectories the learner trained on.",
            tag_keys=("job",),
        )

    def _gauge(self, name: str, tag_keys: tuple[str, ...]) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, description=f"relayrl {name}", tag_keys=tag_keys)
        return self._gauges[name]

    def on_step(self, report: StepReport) -> None:
        """As a `LoopHooks.on_step` presenter."""
        self.record(report.metrics)

    def record(self, metrics: Mapping[str, Any]) -> None:
        """Set one gauge per numeric metric of the step and count the step."""
        job = {"job": self._job}
        for key, value in metrics.items():
            if not _is_number(value):
                continue
            if key.startswith("worker/"):
                _, worker, name = key.split("/", 2)
                gauge = self._gauge(series_name(f"worker/{name}"), ("job", "worker"))
                gauge.set(float(value), tags={**job, "worker": worker})
            else:
                self._gauge(series_name(key), ("job",)).set(float(value), tags=job)
        self._steps.inc(1.0, tags=job)
        trained = metrics.get("batch/trajectories")
        if _is_number(trained) and trained > 0:
            self._trained.inc(float(trained), tags=job)

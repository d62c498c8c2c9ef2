"""Per-worker figures of one learner step, from the running counters each rollout worker
reports: `worker/<id>/...` keys in metrics.jsonl, and the fleet's trajectories/s."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from relayrl import metric_keys as keys

# (metric suffix, report counter): each becomes a rate over the step's wall time.
RATES = (("tokens_per_s", "sampled_tokens"), ("trajectories_per_s", "trajectories"))


class WorkerMeter:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last_time = clock()
        self._last: dict[str, dict[str, Any]] = {}

    def step(self, reports: list[dict[str, Any]]) -> dict[str, float]:
        now = self._clock()
        wall = max(now - self._last_time, 1e-9)
        self._last_time = now
        figures: dict[str, float] = {}
        trajectories = 0.0
        for report in reports:
            worker = report["worker_id"]
            previous = self._last.get(worker, {})
            for suffix, counter in RATES:
                done = report[counter] - previous.get(counter, 0)
                figures[f"worker/{worker}/{suffix}"] = done / wall
            trajectories += report["trajectories"] - previous.get("trajectories", 0)
            idle = report["idle_s"] - previous.get("idle_s", 0.0)
            figures[f"worker/{worker}/idle_fraction"] = min(1.0, max(0.0, idle / wall))
            figures[f"worker/{worker}/weight_syncs"] = report["weight_syncs"]
            if "rss_gb" in report:
                figures[f"worker/{worker}/rss_gb"] = report["rss_gb"]
            self._last[worker] = report
        # Workers gone since the last step leave no stale baseline for a later id reuse.
        self._last = {r["worker_id"]: r for r in reports}
        figures[keys.PIPELINE_ROLLOUT_TRAJECTORIES_PER_S] = trajectories / wall
        return figures


def per_worker(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """`worker/<id>/<name>` keys grouped by worker id."""
    workers: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("worker/"):
            _, worker, name = key.split("/", 2)
            workers.setdefault(worker, {})[name] = value
    return workers

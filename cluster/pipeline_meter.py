"""Per-step pipeline metrics: how fast each side works, how much each side waits, and how
much memory the rollout workers hold."""

from __future__ import annotations

import time
from typing import Any


class PipelineMeter:
    def __init__(self) -> None:
        self._last_time = time.perf_counter()
        self._last: dict[str, dict[str, float]] = {}

    def step(self, reports: list[dict[str, Any]], learner: dict[str, Any]) -> dict[str, float]:
        now = time.perf_counter()
        wall = max(now - self._last_time, 1e-9)
        self._last_time = now
        tokens = idle = 0.0
        for report in reports:
            previous = self._last.get(report["worker_id"], {})
            tokens += report["sampled_tokens"] - previous.get("sampled_tokens", 0.0)
            idle += report["idle_s"] - previous.get("idle_s", 0.0)
            self._last[report["worker_id"]] = report
        workers = max(len(reports), 1)
        step_s = learner.get("time/wait_batch_s", 0.0) + learner.get("time/train_s", 0.0)
        trained_tokens = learner.get("batch/total_tokens", 0)
        return worker_memory(reports) | {
            "pipeline/rollout_tokens_per_s": tokens / wall,
            "pipeline/learner_tokens_per_s": trained_tokens
            / max(learner.get("time/train_s", 0.0), 1e-9),
            "pipeline/worker_idle_fraction": min(1.0, idle / (wall * workers)),
            "pipeline/learner_idle_fraction": learner.get("time/wait_batch_s", 0.0)
            / max(step_s, 1e-9),
        }


def worker_memory(reports: list[dict[str, Any]]) -> dict[str, float]:
    """The largest worker's RSS and peak RSS, and the workers' PSS added up (PSS splits
    shared pages among the processes that map them, so it adds up); from the figures each
    worker reports about its own process (relayrl.process_memory)."""
    figures: dict[str, float] = {}
    for key, name in (("rss_gb", "worker_rss_gb"), ("peak_rss_gb", "worker_peak_rss_gb")):
        values = [r[key] for r in reports if key in r]
        if values:
            figures[f"memory/{name}"] = max(values)
    pss = [r["pss_gb"] for r in reports if "pss_gb" in r]
    if pss:
        figures["memory/workers_pss_gb"] = sum(pss)
    return figures

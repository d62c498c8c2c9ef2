"""Per-step pipeline metrics: how fast each side works, how much each side waits, and how
much memory the rollout workers hold."""

from __future__ import annotations

import time
from typing import Any

from relayrl import metric_keys as keys


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
        step_s = learner.get(keys.TIME_WAIT_BATCH_S, 0.0) + learner.get(keys.TIME_TRAIN_S, 0.0)
        trained_tokens = learner.get(keys.BATCH_TOTAL_TOKENS, 0)
        return worker_memory(reports) | {
            keys.PIPELINE_ROLLOUT_TOKENS_PER_S: tokens / wall,
            keys.PIPELINE_LEARNER_TOKENS_PER_S: trained_tokens
            / max(learner.get(keys.TIME_TRAIN_S, 0.0), 1e-9),
            keys.PIPELINE_WORKER_IDLE_FRACTION: min(1.0, idle / (wall * workers)),
            keys.PIPELINE_LEARNER_IDLE_FRACTION: learner.get(keys.TIME_WAIT_BATCH_S, 0.0)
            / max(step_s, 1e-9),
        }


def worker_memory(reports: list[dict[str, Any]]) -> dict[str, float]:
    """The largest worker's RSS and peak RSS, and the workers' PSS added up (PSS splits
    shared pages among the processes that map them, so it adds up); from the figures each
    worker reports about its own process (relayrl.process_memory)."""
    figures: dict[str, float] = {}
    largest = (
        ("rss_gb", keys.MEMORY_WORKER_RSS_GB),
        ("peak_rss_gb", keys.MEMORY_WORKER_PEAK_RSS_GB),
    )
    for figure, key in largest:
        values = [r[figure] for r in reports if figure in r]
        if values:
            figures[key] = max(values)
    pss = [r["pss_gb"] for r in reports if "pss_gb" in r]
    if pss:
        figures[keys.MEMORY_WORKERS_PSS_GB] = sum(pss)
    return figures

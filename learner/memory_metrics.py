"""The learner ranks' memory for the step metrics: each figure is the largest over the ranks,
so a rank that runs out of room first is the one reported."""

from __future__ import annotations

import torch

from relayrl import metric_keys as keys
from relayrl.learner.rank_sync import max_over_ranks
from relayrl.process_memory import process_memory

# process_memory's figure -> the step metric that reports its largest value over the ranks.
FIGURES = {
    "rss_gb": keys.MEMORY_LEARNER_RSS_GB,
    "peak_rss_gb": keys.MEMORY_LEARNER_PEAK_RSS_GB,
    "pss_gb": keys.MEMORY_LEARNER_PSS_GB,
}
# A figure this host cannot read: below every real one, so the maximum keeps a real figure.
UNREADABLE = -1.0


def learner_memory_metrics() -> dict[str, float]:
    """memory/learner_{rss,peak_rss,pss}_gb; every rank calls this together."""
    own = process_memory()
    values = torch.tensor([own.get(name, UNREADABLE) for name in FIGURES], dtype=torch.float64)
    largest = max_over_ranks(values).tolist()
    return {
        key: value
        for key, value in zip(FIGURES.values(), largest, strict=True)
        if value != UNREADABLE
    }

"""The learner ranks' memory for the step metrics: each figure is the largest over the ranks,
so a rank that runs out of room first is the one reported."""

from __future__ import annotations

import torch

from relayrl import metric_keys as keys
from relayrl.learner.rank_sync import max_over_ranks
from relayrl.process_memory import process_memory

FIGURES = ("rss_gb", "peak_rss_gb", "pss_gb")


def learner_memory_metrics() -> dict[str, float]:
    """memory/learner_{rss,peak_rss,pss}_gb; every rank calls this together."""
    own = process_memory()
    values = torch.tensor([own.get(name, -1.0) for name in FIGURES], dtype=torch.float64)
    largest = max_over_ranks(values).tolist()
    return {
        keys.learner_memory(name): value
        for name, value in zip(FIGURES, largest, strict=True)
        if value >= 0
    }

"""What one training batch looked like: rewards, lengths, how episodes ended, staleness."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from relayrl.learner.staleness import staleness_histogram
from relayrl.trajectory import Trajectory


def batch_metrics(trajectories: list[Trajectory], version: int) -> dict[str, Any]:
    """Per-step metrics of a batch trained as policy `version`."""
    count = len(trajectories)
    rewards = np.array([t.reward for t in trajectories])
    lengths = np.array([t.num_sampled_tokens for t in trajectories])
    sampled_versions = np.concatenate([t.sampled_versions() for t in trajectories])
    if sampled_versions.size == 0:  # every token masked (void episodes): nothing is stale
        sampled_versions = np.array([version])
    staleness = version - sampled_versions
    ends = Counter(t.finish_reason for t in trajectories)
    metrics: dict[str, Any] = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()),
        "response/length_mean": float(lengths.mean()),
        "response/truncated_fraction": ends["length"] / count,
        # Episodes in the batch (kept for their group's baseline) that train no token.
        "episode/masked_fraction": float(np.mean(lengths == 0)),
        "episode/turns_mean": float(np.mean([max(1, len(t.turns)) for t in trajectories])),
        "staleness/max": int(staleness.max()),
        "staleness/mean": float(staleness.mean()),
        "batch/trajectories": count,
        "batch/sampled_tokens": int(lengths.sum()),
        "batch/total_tokens": int(sum(len(t.tokens) for t in trajectories)),
        "batch/min_token_version": int(sampled_versions.min()),
    }
    metrics.update({f"episode/end_{reason}": n / count for reason, n in sorted(ends.items())})
    # Episodes an environment failure ended (masked from the loss), in all and by cause.
    causes = Counter(t.error or "unknown" for t in trajectories if t.finish_reason == "error")
    metrics["episode/errors"] = sum(causes.values())
    metrics.update({f"episode/errors/{cause}": n for cause, n in sorted(causes.items())})
    channels = sorted({name for t in trajectories for name in t.reward_channels})
    for name in channels:
        values = [t.reward_channels.get(name, 0.0) for t in trajectories]
        metrics[f"reward/{name}"] = float(np.mean(values))
    metrics.update(staleness_histogram(trajectories, version))
    return metrics

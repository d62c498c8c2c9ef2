"""What one training batch looked like: rewards, lengths, how episodes ended, staleness."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from relayrl import metric_keys as keys
from relayrl.learner.staleness import batch_staleness, staleness_histogram
from relayrl.trajectory import EpisodeEnd, Trajectory


def batch_metrics(trajectories: list[Trajectory], version: int) -> dict[str, Any]:
    """Per-step metrics of a batch trained as policy `version`."""
    count = len(trajectories)
    rewards = np.array([t.reward for t in trajectories])
    lengths = np.array([t.num_sampled_tokens for t in trajectories])
    staleness = batch_staleness(trajectories, version)
    if staleness.size == 0:  # every token masked (void episodes): nothing is stale
        staleness = np.zeros(1, dtype=np.int64)
    ends = Counter(t.finish_reason for t in trajectories)
    metrics: dict[str, Any] = {
        keys.REWARD_MEAN: float(rewards.mean()),
        keys.REWARD_STD: float(rewards.std()),
        keys.RESPONSE_LENGTH_MEAN: float(lengths.mean()),
        keys.RESPONSE_TRUNCATED_FRACTION: ends[EpisodeEnd.LENGTH] / count,
        # Episodes in the batch (kept for their group's baseline) that train no token.
        keys.EPISODE_MASKED_FRACTION: float(np.mean(lengths == 0)),
        keys.EPISODE_TURNS_MEAN: float(np.mean([max(1, len(t.turns)) for t in trajectories])),
        keys.STALENESS_MAX: int(staleness.max()),
        keys.STALENESS_MEAN: float(staleness.mean()),
        keys.BATCH_TRAJECTORIES: count,
        keys.BATCH_SAMPLED_TOKENS: int(lengths.sum()),
        keys.BATCH_TOTAL_TOKENS: int(sum(len(t.tokens) for t in trajectories)),
        keys.BATCH_MIN_TOKEN_VERSION: version - int(staleness.max()),
    }
    metrics.update({keys.episode_end(end): n / count for end, n in sorted(ends.items())})
    # Episodes an environment failure ended (masked from the loss), in all and by cause.
    failed = [t for t in trajectories if t.finish_reason == EpisodeEnd.ERROR]
    causes = Counter(t.error or "unknown" for t in failed)
    metrics[keys.EPISODE_ERRORS] = sum(causes.values())
    metrics.update({keys.episode_error(cause): n for cause, n in sorted(causes.items())})
    channels = sorted({name for t in trajectories for name in t.reward_channels})
    for name in channels:
        values = [t.reward_channels.get(name, 0.0) for t in trajectories]
        metrics[keys.reward_channel(name)] = float(np.mean(values))
    metrics.update(staleness_histogram(trajectories, version))
    return metrics

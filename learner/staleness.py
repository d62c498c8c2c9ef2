"""How many policy versions behind the trained policy each sampled token of a batch is; the
per-token lag itself is `Trajectory.staleness`, the one place it is computed."""

from __future__ import annotations

import numpy as np

from relayrl import metric_keys as keys
from relayrl.trajectory import Trajectory


def batch_staleness(trajectories: list[Trajectory], version: int) -> np.ndarray:
    """Every sampled token's lag behind policy `version`, the version being trained."""
    return np.concatenate([t.staleness(version) for t in trajectories])


def staleness_histogram(trajectories: list[Trajectory], version: int) -> dict[str, int]:
    """`staleness/hist_<k>`: the number of sampled tokens generated k versions before `version`;
    only values that occur get a key."""
    values, counts = np.unique(batch_staleness(trajectories, version), return_counts=True)
    return {keys.staleness_hist(int(k)): int(n) for k, n in zip(values, counts, strict=True)}

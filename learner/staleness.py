"""How many policy versions behind the trained policy each sampled token of a batch is."""

from __future__ import annotations

import numpy as np

from relayrl.trajectory import Trajectory


def staleness_histogram(trajectories: list[Trajectory], version: int) -> dict[str, int]:
    """`staleness/hist_<k>`: the number of sampled tokens generated k versions before `version`,
    the version being trained; only values that occur get a key."""
    sampled = np.concatenate([t.sampled_versions() for t in trajectories])
    values, counts = np.unique(version - sampled, return_counts=True)
    return {f"staleness/hist_{k}": int(n) for k, n in zip(values, counts, strict=True)}

"""Hand-made trajectories for the tests that need only their shape: a prompt, then sampled
tokens all of one policy version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from relayrl.trajectory import NO_VERSION, Trajectory


def trajectory(
    group: str = "g",
    *,
    prompt_len: int = 1,
    sampled: int = 3,
    version: int = 0,
    reward: float = 0.0,
    traj_id: str | None = None,
    tokens: Sequence[int] | None = None,
    **fields: Any,
) -> Trajectory:
    """`tokens` (default 0, 1, ...) fixes the length: all past `prompt_len` are sampled."""
    ids = np.asarray(tokens if tokens is not None else np.arange(prompt_len + sampled))
    sampled = len(ids) - prompt_len
    if traj_id is not None:
        fields["id"] = traj_id
    return Trajectory(
        group_id=group,
        tokens=ids,
        prompt_len=prompt_len,
        loss_mask=[0] * prompt_len + [1] * sampled,
        logprobs=[0.0] * prompt_len + [-1.0] * sampled,
        versions=[NO_VERSION] * prompt_len + [version] * sampled,
        reward=reward,
        **fields,
    )

"""Turn a prompt and the engine's completions into token-faithful Trajectory records."""

from __future__ import annotations

import numpy as np

from relayrl.actors.engine import Completion
from relayrl.trajectory import NO_VERSION, Trajectory, Turn


def single_turn_trajectory(
    prompt_ids: list[int],
    completion: Completion,
    group_id: str,
    reward: float,
    reward_channels: dict[str, float],
    task_record: dict,
    timings: dict[str, float],
) -> Trajectory:
    prompt_len = len(prompt_ids)
    sampled = len(completion.token_ids)
    return Trajectory(
        group_id=group_id,
        tokens=np.asarray(prompt_ids + completion.token_ids, dtype=np.int32),
        prompt_len=prompt_len,
        loss_mask=np.concatenate([np.zeros(prompt_len), np.ones(sampled)]).astype(np.uint8),
        logprobs=np.concatenate([np.zeros(prompt_len), completion.logprobs]).astype(np.float32),
        versions=np.asarray([NO_VERSION] * prompt_len + completion.versions, dtype=np.int32),
        reward=reward,
        reward_channels=reward_channels,
        task=task_record,
        turns=[Turn(start=prompt_len, end=prompt_len + sampled, reward=reward)],
        finish_reason=completion.finish_reason,
        timings=timings,
    )

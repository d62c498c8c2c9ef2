"""DAPO dynamic sampling at read time: a group whose (shaped) rewards do not vary has zero
group-relative advantage, so it is discarded (`DiscardReason.ZERO_VARIANCE`) and the intake
reads another in its place."""

from __future__ import annotations

import torch

from relayrl.algorithm_config import DynamicSamplingConfig, OverlongConfig
from relayrl.buffer import BufferEntry
from relayrl.learner.algorithms.filters import dynamic_sampling_keep_mask
from relayrl.learner.rewards import shaped_rewards


class ZeroVarianceFilter:
    def __init__(
        self, config: DynamicSamplingConfig, overlong: OverlongConfig | None, group_size: int
    ) -> None:
        if group_size < 2:
            raise ValueError(
                "dynamic sampling needs rollout.group_size >= 2: it discards every group"
            )
        self.config = config
        self.overlong = overlong

    def keeps(self, group: list[BufferEntry]) -> bool:
        """Judged on the rewards the advantages will see, the overlong penalty included."""
        rewards = shaped_rewards([entry.trajectory for entry in group], self.overlong)
        same_group = torch.zeros(len(group), dtype=torch.long)
        keep = dynamic_sampling_keep_mask(
            rewards, same_group, reward_tolerance=self.config.reward_tolerance
        )
        return bool(keep.all())

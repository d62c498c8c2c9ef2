"""One episode's token record as it grows turn by turn, how it ended, and the Trajectory it
becomes. A rollout workflow (the built-in agent loop or a user's own) builds its episodes with
these, so every one is token-faithful: sampled ids go in exactly as the engine returned them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relayrl.actors.engine import Completion
from relayrl.envs.base import StepResult
from relayrl.trajectory import NO_VERSION, EpisodeEnd, Trajectory, Turn


class EpisodeBuilder:
    """Prompt ids, then each turn's sampled ids (loss mask 1, with their log-probs and
    versions) and each observation's ids (loss mask 0, log-prob 0, version NO_VERSION)."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.prompt_len = len(prompt_ids)
        self.tokens = list(prompt_ids)
        self.loss_mask = [0] * self.prompt_len
        self.logprobs = [0.0] * self.prompt_len
        self.versions = [NO_VERSION] * self.prompt_len
        self.turns: list[Turn] = []
        self.reward = 0.0
        self.reward_channels: dict[str, float] = {}
        self.void_turns = 0
        # Why the episode ended in error (an exception's class name or a short cause).
        self.error: str | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def add_sampled(self, completion: Completion) -> tuple[int, int]:
        start = len(self.tokens)
        self.tokens += completion.token_ids
        self.loss_mask += [1] * len(completion.token_ids)
        self.logprobs += completion.logprobs
        self.versions += completion.versions
        return start, len(self.tokens)

    def add_observation(self, token_ids: list[int]) -> None:
        self.tokens += token_ids
        self.loss_mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)
        self.versions += [NO_VERSION] * len(token_ids)

    def record_turn(self, span: tuple[int, int], result: StepResult, duration_s: float) -> None:
        self.turns.append(
            Turn(
                start=span[0],
                end=span[1],
                tool=result.tool,
                tool_status=result.tool_status,
                duration_s=duration_s,
                reward=result.reward,
            )
        )
        # The episode's reward and channels are the sums over its steps.
        self.reward += result.reward
        for name, value in result.reward_channels.items():
            self.reward_channels[name] = self.reward_channels.get(name, 0.0) + value
        self.void_turns += int(result.void)

    def end_in_error(self, cause: str, span: tuple[int, int] | None, duration_s: float) -> None:
        """The environment failed: the turn it failed on is kept, the reward is void."""
        if span is not None:
            self.turns.append(Turn(start=span[0], end=span[1], duration_s=duration_s))
        self.reward = 0.0
        self.reward_channels = {}
        self.error = cause

    def to_trajectory(
        self,
        group_id: str,
        task_record: dict[str, Any],
        finish_reason: EpisodeEnd,
        timings: dict[str, float],
    ) -> Trajectory:
        """A masked end (void turn, error) keeps the episode in its group, for the baseline,
        with every token masked from the loss."""
        loss_mask = np.asarray(self.loss_mask, dtype=np.uint8)
        return Trajectory(
            group_id=group_id,
            tokens=np.asarray(self.tokens, dtype=np.int32),
            prompt_len=self.prompt_len,
            loss_mask=np.zeros_like(loss_mask) if finish_reason.masked else loss_mask,
            logprobs=np.asarray(self.logprobs, dtype=np.float32),
            versions=np.asarray(self.versions, dtype=np.int32),
            reward=self.reward,
            reward_channels=dict(self.reward_channels),
            task=task_record,
            turns=list(self.turns),
            finish_reason=finish_reason,
            timings=timings,
            error=self.error,
        )


@dataclass
class EpisodeOutcome:
    """A finished episode, as a rollout workflow hands it to the worker."""

    episode: EpisodeBuilder
    finish_reason: EpisodeEnd
    generate_s: float
    env_s: float

    @property
    def masked(self) -> bool:
        """Kept in its group but trains no token (a void turn or an environment error)."""
        return self.finish_reason.masked

    def to_trajectory(self, group_id: str, task_record: dict[str, Any]) -> Trajectory:
        return self.episode.to_trajectory(
            group_id,
            task_record,
            self.finish_reason,
            {"generate_s": self.generate_s, "env_s": self.env_s},
        )

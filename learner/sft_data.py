"""Demonstrations as training rows, framed exactly as the agent loop frames an episode at
rollout time: the prompt through the chat template with the generation prompt, each assistant
turn as the ids the model would sample (its text, then the end-of-turn token when it is the
last turn; a turn that calls a tool ends at its stop string, as generation does), and each
environment message through the same observation frame the agent loop appends. The loss mask
is 1 exactly on the assistant turns' ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relayrl.chat_format import ObservationFormatter, prompt_token_ids
from relayrl.demos import Demonstration
from relayrl.trajectory import NO_VERSION, Trajectory


@dataclass(frozen=True)
class Framing:
    """The rollout-time framing settings that shape the token stream (rollout.agent.*)."""

    observation_role: str = "user"
    max_observation_chars: int = 8192
    max_observation_tokens: int = 1024


def sampled_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids a model writes for `text` as an assistant turn."""
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the engine stops on when the model ends its turn (the rollout worker's
    stop id: the tokenizer's eos)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: the model cannot end a turn")
    return int(tokenizer.eos_token_id)


class ConversationTokenizer:
    def __init__(self, tokenizer: Any, framing: Framing) -> None:
        self.tokenizer = tokenizer
        self.formatter = ObservationFormatter(
            tokenizer,
            framing.observation_role,
            framing.max_observation_chars,
            framing.max_observation_tokens,
        )
        self.end_of_turn = end_of_turn_id(tokenizer)

    def __call__(self, demo: Demonstration) -> tuple[list[int], list[int]]:
        """(token ids, loss mask) of one conversation."""
        prompt = demo.prompt
        ids = prompt_token_ids(self.tokenizer, prompt)
        mask = [0] * len(ids)
        turns = demo.messages[len(prompt) :]
        for index, message in enumerate(turns):
            if message["role"] == "assistant":
                turn = sampled_ids(self.tokenizer, message["content"])
                if index == len(turns) - 1:
                    turn.append(self.end_of_turn)
                ids += turn
                mask += [1] * len(turn)
            else:
                observation = self.formatter.token_ids(message["content"], ids[-1])
                ids += observation
                mask += [0] * len(observation)
        return ids, mask


def training_row(ids: list[int], mask: list[int], max_tokens: int, row_id: str) -> Trajectory:
    """A conversation as a Trajectory with only the fields training reads, cut at `max_tokens`:
    the learner's batching and micro-batching take it as they take an episode."""
    ids, mask = ids[:max_tokens], mask[:max_tokens]
    prompt_len = mask.index(1) if 1 in mask else len(mask)
    return Trajectory(
        group_id=row_id,
        tokens=np.asarray(ids),
        prompt_len=prompt_len,
        loss_mask=np.asarray(mask),
        logprobs=np.zeros(len(ids)),
        versions=np.where(np.asarray(mask) == 1, 0, NO_VERSION),
        reward=0.0,
        id=row_id,
    )


def training_rows(
    demos: list[Demonstration], tokenizer: Any, framing: Framing, max_tokens: int
) -> list[Trajectory]:
    """Every conversation that keeps at least one assistant token within `max_tokens`."""
    frame = ConversationTokenizer(tokenizer, framing)
    rows = []
    for index, demo in enumerate(demos):
        ids, mask = frame(demo)
        if 1 in mask[:max_tokens]:
            rows.append(training_row(ids, mask, max_tokens, f"demo-{index}"))
    if not rows:
        raise ValueError(f"no demonstration has an assistant token within {max_tokens} tokens")
    return rows

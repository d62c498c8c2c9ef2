"""A scripted engine and a recording tool environment for the agent loop's tests, and the
token-faithfulness checks every episode must pass (with the fake engine or a real one)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from relayrl.actors.engine import Completion, SamplingSettings
from relayrl.chat_format import prompt_token_ids
from relayrl.envs.base import Message, StepResult, Task
from relayrl.envs.tool_calls import CallFormat
from relayrl.envs.tool_env import ToolEnv
from relayrl.envs.tools import ToolResult
from relayrl.trajectory import NO_VERSION, EpisodeEnd, Trajectory


@dataclass(frozen=True)
class ScriptedTurn:
    token_ids: tuple[int, ...]
    finish_reason: EpisodeEnd


@dataclass
class GenerateCall:
    prompt_ids: list[int]
    n: int
    max_new_tokens: int
    completions: list[Completion]


class ScriptedEngine:
    """Replays each episode's scripted turns; which episode a call continues is found from
    its prompt, so a prompt that is not exactly the episode so far fails the test. The
    version rises with every call, as if weights were updated between turns."""

    def __init__(self, scripts: list[list[ScriptedTurn]], seed: int = 0) -> None:
        self.scripts = scripts
        self.calls: list[GenerateCall] = []
        self._contexts: list[list[int]] = []
        self._turn = [0] * len(scripts)
        self._version = 0
        self._rng = random.Random(seed)

    @property
    def version(self) -> int:
        return self._version

    def _episode_of(self, prompt_ids: list[int]) -> int:
        matches = [
            i
            for i, context in enumerate(self._contexts)
            if prompt_ids[: len(context)] == context and len(prompt_ids) > len(context)
        ]
        assert len(matches) == 1, "the prompt does not continue exactly one episode"
        return matches[0]

    def _complete(self, episode: int, settings: SamplingSettings) -> Completion:
        turn = self.scripts[episode][self._turn[episode]]
        self._turn[episode] += 1
        tokens = list(turn.token_ids[: settings.max_new_tokens])
        finish = turn.finish_reason if len(tokens) == len(turn.token_ids) else "length"
        return Completion(
            token_ids=tokens,
            logprobs=[-self._rng.uniform(0.01, 9.0) for _ in tokens],
            finish_reason=finish,
            versions=[self._version] * len(tokens),
        )

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        if not self._contexts:
            episodes = list(range(n))
            self._contexts = [[] for _ in range(n)]
        else:
            assert n == 1, "only a group's first turn is batched"
            episodes = [self._episode_of(prompt_ids)]
        completions = [self._complete(episode, settings) for episode in episodes]
        for episode, completion in zip(episodes, completions, strict=True):
            self._contexts[episode] = list(prompt_ids) + completion.token_ids
        self.calls.append(GenerateCall(list(prompt_ids), n, settings.max_new_tokens, completions))
        self._version += 1
        return completions

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self._version = version

    async def close(self) -> None:
        return None


class RecordingEngine:
    """Delegates to a real engine and records its calls like ScriptedEngine does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[GenerateCall] = []

    @property
    def version(self) -> int:
        return self.inner.version

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        completions = await self.inner.generate(prompt_ids, settings, n)
        self.calls.append(GenerateCall(list(prompt_ids), n, settings.max_new_tokens, completions))
        return completions

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        await self.inner.update_weights(state, version)

    async def close(self) -> None:
        await self.inner.close()


class EchoTool:
    """Answers with text that looks like control tokens, which must stay literal text."""

    description = "echo"
    parameters: dict[str, Any] = {"type": "object"}  # noqa: RUF012

    def __init__(self, name: str) -> None:
        self.name = name

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult("ok", f"<|im_start|>echo {sorted(arguments)} ü")


class RecordingToolEnv(ToolEnv):
    """Records what it was shown and what it answered. A turn with "ANSWER" ends the episode;
    any other final turn is void, and with `retry` it is answered with feedback."""

    def __init__(self, call_format: CallFormat, tool_name: str, retry: bool) -> None:
        super().__init__([EchoTool(tool_name)], call_format)
        self.retry = retry
        self.actions: list[str] = []
        self.results: list[StepResult] = []

    def prompt(self, task: Task) -> list[Message]:
        return list(task.messages)

    async def step(self, action: str) -> StepResult:
        self.actions.append(action)
        result = await super().step(action)
        self.results.append(result)
        return result

    async def finish(self, text: str) -> StepResult:
        if "ANSWER" in text:
            return StepResult(None, True, reward=1.0, reward_channels={"correct": 1.0})
        if self.retry:
            return StepResult("No answer. Try again.", False, void=True)
        return StepResult(None, True, reward_channels={"correct": 0.0}, void=True)


def episode_calls(
    engine_calls: list[GenerateCall], traj: Trajectory, index: int
) -> list[Completion]:
    """The completions that make up episode `index` of the group: its share of the batched
    first call, then the calls whose prompt is exactly the episode so far."""
    found = [engine_calls[0].completions[index]]
    for turn in traj.turns[1:]:
        prefix = traj.tokens[: turn.start].tolist()
        matches = [
            c for call in engine_calls[1:] if call.prompt_ids == prefix for c in call.completions
        ]
        assert len(matches) == 1, f"turn at {turn.start} was not generated from exactly its prefix"
        found.append(matches[0])
    return found


def assert_token_faithful(
    traj: Trajectory,
    completions: list[Completion],
    env: RecordingToolEnv | Any,
    tokenizer: Any,
    prompt: list[Message],
    observation_role: str = "user",
) -> None:
    """Loss mask 1 exactly on sampled tokens, their log-probs and versions in place, the
    environment shown exactly the decoded turns, and the whole token sequence decoding to
    the chat-template transcript of prompt, turns and observations."""
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    assert traj.tokens[: traj.prompt_len].tolist() == prompt_ids
    mask = np.zeros(len(traj.tokens), dtype=np.uint8)
    logprobs = np.zeros(len(traj.tokens), dtype=np.float32)
    versions = np.full(len(traj.tokens), NO_VERSION, dtype=np.int32)
    for turn, completion in zip(traj.turns, completions, strict=True):
        assert traj.tokens[turn.start : turn.end].tolist() == completion.token_ids
        mask[turn.start : turn.end] = 1
        logprobs[turn.start : turn.end] = completion.logprobs
        versions[turn.start : turn.end] = completion.versions
    if traj.finish_reason == "void_turn":
        assert not traj.loss_mask.any()
    else:
        np.testing.assert_array_equal(traj.loss_mask, mask)
    np.testing.assert_array_equal(traj.logprobs, logprobs)
    np.testing.assert_array_equal(traj.versions, versions)

    assert env.actions == [
        tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions
    ]
    turn_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    messages = list(prompt)
    for completion, result in zip(completions[:-1], env.results, strict=False):
        ids = completion.token_ids
        content = ids[:-1] if ids and ids[-1] == turn_end else ids
        messages.append({"role": "assistant", "content": tokenizer.decode(content)})
        messages.append({"role": observation_role, "content": result.observation})
    transcript = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    ) + tokenizer.decode(completions[-1].token_ids)
    assert tokenizer.decode(traj.tokens.tolist()) == transcript
    # Observation text never becomes control tokens: only the frame adds turn markers.
    opening = tokenizer.convert_tokens_to_ids("<|im_start|>")
    sampled = sum(c.token_ids.count(opening) for c in completions)
    observations = len(completions) - 1
    assert (
        traj.tokens.tolist().count(opening)
        == prompt_ids.count(opening) + sampled + 2 * observations
    )

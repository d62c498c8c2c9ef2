"""A rollout workflow of your own, written against an OpenAI-style chat-completions client.

Use it with `rollout.workflow: examples.chat_workflow:ChatCompletionsWorkflow` (see
examples/chat-workflow.yaml; run from the repository root so `examples` imports).

`chat_agent` is the part a user writes: plain chat code, messages in, a message out, the way
one would drive any chat-completions API. `EngineChatClient` serves those calls from the
rollout engine and keeps the episode token-faithful: it records the ids and log-probs the
engine sampled, and when the next request repeats its reply as history it checks the text and
reuses those recorded ids instead of tokenizing the text again (re-tokenized text can differ
from what the model sampled, and the learner would then train on tokens it never produced)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relayrl.actors.engine import Engine, SamplingSettings
from relayrl.actors.episode import EpisodeBuilder, EpisodeOutcome
from relayrl.actors.workflow import WorkflowContext
from relayrl.chat_format import ObservationFormatter, prompt_token_ids
from relayrl.config import AgentConfig
from relayrl.envs.base import Env, Message, StepResult, Task
from relayrl.trajectory import EpisodeEnd


class EngineFailure(RuntimeError):
    """The engine itself failed: the worker's problem, never one episode's."""


@dataclass(frozen=True)
class ChatCompletion:
    """The slice of a chat-completions response an agent reads."""

    message: Message  # {"role": "assistant", "content": ...}
    finish_reason: EpisodeEnd  # stop or length (the engine's own end of the turn)


class EngineChatClient:
    """One episode's chat client. Each request must repeat the conversation so far and add
    exactly one message (the environment's answer) after this client's last reply."""

    def __init__(
        self, engine: Engine, tokenizer: Any, sampling: SamplingSettings, agent: AgentConfig
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.agent = agent
        self.episode: EpisodeBuilder | None = None
        self.generate_s = 0.0
        self.env_s = 0.0
        self._history: list[Message] = []  # the conversation exactly as it is in `episode`
        self._last_span: tuple[int, int] | None = None
        self._last_sampled: int | None = None
        self._formatters: dict[str, ObservationFormatter] = {}

    def _formatter(self, role: str) -> ObservationFormatter:
        if role not in self._formatters:
            self._formatters[role] = ObservationFormatter(
                self.tokenizer,
                role,
                self.agent.max_observation_chars,
                self.agent.max_observation_tokens,
            )
        return self._formatters[role]

    def _new_ids(self, messages: list[Message]) -> list[int]:
        """The ids `messages` add to the episode: the whole prompt on the first request, then
        only the one new message, framed after this client's own sampled reply."""
        if self.episode is None:
            return prompt_token_ids(self.tokenizer, messages)
        seen = len(self._history)
        if messages[:seen] != self._history or len(messages) != seen + 1:
            raise ValueError(
                "each request must repeat the conversation so far, this client's replies "
                "verbatim, and add one message"
            )
        new = messages[-1]
        return self._formatter(new["role"]).token_ids(new["content"], self._last_sampled)

    async def create(self, messages: list[Message]) -> ChatCompletion:
        """`chat.completions.create(messages=...)`, sampled by the engine; a conversation
        already at rollout.agent.max_total_tokens gets an empty reply that ends in length."""
        ids = self._new_ids(messages)
        used = len(ids) + (len(self.episode) if self.episode is not None else 0)
        budget = self.agent.max_total_tokens - used
        if self.episode is None:
            self.episode = EpisodeBuilder(ids)
        if budget < 1:
            return ChatCompletion({"role": "assistant", "content": ""}, EpisodeEnd.LENGTH)
        if len(self._history):
            self.episode.add_observation(ids)
        self._history = list(messages)
        request = dataclasses.replace(
            self.sampling, max_new_tokens=min(self.sampling.max_new_tokens, budget)
        )
        started = time.perf_counter()
        try:
            [completion] = await self.engine.generate(list(self.episode.tokens), request, 1)
        except Exception as exc:
            raise EngineFailure(f"{type(exc).__name__}: {exc}") from exc
        self.generate_s += time.perf_counter() - started
        # The engine's own ids, log-probs and versions: the learner trains on exactly these.
        self._last_span = self.episode.add_sampled(completion)
        self._last_sampled = completion.token_ids[-1] if completion.token_ids else None
        text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        reply = {"role": "assistant", "content": text}
        self._history.append(reply)
        return ChatCompletion(reply, completion.finish_reason)

    def record_step(self, result: StepResult, duration_s: float) -> None:
        """The environment's answer to the last reply, as that turn's record."""
        assert self.episode is not None and self._last_span is not None
        self.episode.record_turn(self._last_span, result, duration_s)
        self.env_s += duration_s


class RecordedEnv:
    """The env as the agent sees it: each step is recorded against the client's last reply."""

    def __init__(self, env: Env, client: EngineChatClient) -> None:
        self._env = env
        self._client = client

    async def step(self, action: str) -> StepResult:
        started = time.perf_counter()
        result = await self._env.step(action)
        self._client.record_step(result, time.perf_counter() - started)
        return result


async def chat_agent(
    client: EngineChatClient, env: RecordedEnv, messages: list[Message], max_turns: int
) -> EpisodeEnd:
    """The user's agent, plain chat code: ask, let the environment answer, ask again."""
    for _ in range(max_turns):
        reply = await client.create(messages)
        if reply.finish_reason == EpisodeEnd.LENGTH and not reply.message["content"]:
            return EpisodeEnd.LENGTH
        result = await env.step(reply.message["content"])
        if result.done or result.observation is None:
            return reply.finish_reason
        answer = {"role": client.agent.observation_role, "content": result.observation}
        messages = [*messages, reply.message, answer]
    return EpisodeEnd.MAX_TURNS


class ChatCompletionsWorkflow:
    """Each episode of a group plays `chat_agent` on its own client, concurrently (the engine
    batches the concurrent requests)."""

    def __init__(self, context: WorkflowContext) -> None:
        self.context = context
        sampling = context.sampling
        self.sampling = SamplingSettings(
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop_strings=tuple(dict.fromkeys(context.stop_strings)),
        )

    @classmethod
    def from_context(cls, context: WorkflowContext) -> ChatCompletionsWorkflow:
        return cls(context)

    async def run_group(self, task: Task, envs: Sequence[Env]) -> list[EpisodeOutcome]:
        return list(await asyncio.gather(*(self._episode(task, env) for env in envs)))

    async def _episode(self, task: Task, env: Env) -> EpisodeOutcome:
        context = self.context
        client = EngineChatClient(context.engine, context.tokenizer, self.sampling, context.agent)
        try:
            messages = await env.reset(task)
            recorded = RecordedEnv(env, client)
            end = await chat_agent(client, recorded, messages, context.agent.max_turns)
        except EngineFailure:
            raise  # the engine's failure ends the worker, as it does under the agent loop
        except Exception as exc:  # the env's (or the agent's) failure ends this episode only
            if client.episode is None:
                client.episode = EpisodeBuilder(prompt_token_ids(context.tokenizer, task.messages))
            client.episode.end_in_error(type(exc).__name__, None, 0.0)
            end = EpisodeEnd.ERROR
        assert client.episode is not None
        return EpisodeOutcome(client.episode, end, client.generate_s, client.env_s)

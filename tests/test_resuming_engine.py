from __future__ import annotations

import asyncio

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.engine import SamplingSettings
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.actors.resuming_engine import ResumingEngine
from relayrl.chat_format import prompt_token_ids
from tests.reference_logprobs import completion_logprobs


def perturbed(model_path: str, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model with every weight moved a little (embeddings still tied), and its state."""
    state = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    torch.manual_seed(seed)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.load_state_dict(state)
    return model, state


def test_interrupted_samples_continue_under_the_new_weights(tiny_model_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    # No stop token, so only the interruption or the budget can end a sample.
    inner = TransformersEngine(TransformersSettings(tiny_model_path), eos_token_ids=())
    old = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    new, new_state = perturbed(tiny_model_path, seed=0)

    published = {"version": 0}
    updates = []
    sampling = asyncio.Event()

    async def latest_version() -> int:
        # Both samples are in the running batch by the watcher's first poll.
        if inner.peak_rows >= 2:
            sampling.set()
        return published["version"]

    async def update() -> None:
        # Like RolloutWorker.sync_weights: load only what is newer than the engine's version.
        if published["version"] > inner.version:
            updates.append(published["version"])
            await inner.update_weights(new_state, published["version"])

    engine = ResumingEngine(inner, latest_version, update, poll_s=0.05)
    prompt = prompt_token_ids(tokenizer, [{"role": "user", "content": "count"}])
    settings = SamplingSettings(max_new_tokens=600, temperature=1.0)

    async def scenario():
        call = asyncio.create_task(engine.generate(prompt, settings, n=2))
        await sampling.wait()
        published["version"] = 1
        return await call

    completions = asyncio.run(scenario())
    assert engine.interruptions == 1 and updates == [1]
    for completion in completions:
        assert_switched_once(completion, prompt, old, new, 600)


def assert_switched_once(completion, prompt, old, new, length: int) -> None:
    """Tokens before the switch scored by the old weights, after it by the new ones."""
    versions = completion.versions
    assert len(completion.token_ids) == length and completion.finish_reason == "length"
    assert versions[0] == 0 and versions[-1] == 1
    switch = versions.index(1)
    assert set(versions[:switch]) == {0} and set(versions[switch:]) == {1}
    reported = torch.tensor(completion.logprobs)
    under_old = completion_logprobs(old, prompt, completion.token_ids)
    under_new = completion_logprobs(new, prompt, completion.token_ids)
    torch.testing.assert_close(reported[:switch], under_old[:switch], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reported[switch:], under_new[switch:], atol=1e-4, rtol=1e-4)


def test_concurrent_calls_in_one_batch_all_resume_under_one_load(tiny_model_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    inner = TransformersEngine(TransformersSettings(tiny_model_path), eos_token_ids=())
    old = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    new, new_state = perturbed(tiny_model_path, seed=1)
    published = {"version": 0}
    updates = []
    started = asyncio.Event()

    async def latest_version() -> int:
        # Every call is in the running batch by the watcher's first poll.
        if inner.peak_requests >= 3:
            started.set()
        return published["version"]

    async def update() -> None:
        if published["version"] > inner.version:
            updates.append(published["version"])
            await inner.update_weights(new_state, published["version"])

    engine = ResumingEngine(inner, latest_version, update, poll_s=0.05)
    prompts = [
        prompt_token_ids(tokenizer, [{"role": "user", "content": text}])
        for text in ("count", "what is 3 + 4", "hello there")
    ]
    settings = SamplingSettings(max_new_tokens=500, seed=4)

    async def scenario():
        calls = [asyncio.create_task(engine.generate(p, settings, 2)) for p in prompts]
        await started.wait()
        published["version"] = 1
        return await asyncio.gather(*calls)

    results = asyncio.run(scenario())
    # An interrupt ended every call's rows at once; one load served all six resumes.
    assert engine.interruptions >= 1 and updates == [1]
    for prompt, completions in zip(prompts, results, strict=True):
        for completion in completions:
            assert_switched_once(completion, prompt, old, new, 500)

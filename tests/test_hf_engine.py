from __future__ import annotations

import asyncio

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.engine import Engine, SamplingSettings
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.chat_format import prompt_token_ids
from tests.reference_logprobs import completion_logprobs


def test_engine_logprobs_match_the_learner_before_and_after_an_update(tiny_model_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    engine = TransformersEngine(
        TransformersSettings(tiny_model_path), eos_token_ids=(tokenizer.eos_token_id,)
    )
    assert isinstance(engine, Engine)
    prompt = prompt_token_ids(tokenizer, [{"role": "user", "content": "what is 3 + 4"}])
    settings = SamplingSettings(max_new_tokens=10, temperature=0.7, seed=1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)

    completions = asyncio.run(engine.generate(prompt, settings, n=3))
    assert len(completions) == 3
    for completion in completions:
        assert 1 <= len(completion.token_ids) <= 10
        assert completion.versions == [0] * len(completion.token_ids)
        expected = completion_logprobs(model, prompt, completion.token_ids, 0.7)
        torch.testing.assert_close(
            torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=1e-4
        )

    # New weights: a perturbed copy, published as version 5.
    torch.manual_seed(0)
    new_state = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    new_state["lm_head.weight"] = new_state["model.embed_tokens.weight"]
    asyncio.run(engine.update_weights(new_state, version=5))
    assert engine.version == 5
    updated = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    updated.load_state_dict(new_state)
    completion = asyncio.run(engine.generate(prompt, settings, n=1))[0]
    assert completion.versions == [5] * len(completion.token_ids)
    reported = torch.tensor(completion.logprobs)
    torch.testing.assert_close(
        reported,
        completion_logprobs(updated, prompt, completion.token_ids, 0.7),
        atol=1e-4,
        rtol=1e-4,
    )
    stale = completion_logprobs(model, prompt, completion.token_ids, 0.7)
    assert (reported - stale).abs().max() > 1e-2


def test_stop_token_ends_a_completion(tiny_model_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    engine = TransformersEngine(TransformersSettings(tiny_model_path), eos_token_ids=())
    prompt = prompt_token_ids(tokenizer, [{"role": "user", "content": "hello"}])
    vocab = len(tokenizer)
    # Every token is a stop token: each completion must end after exactly one.
    settings = SamplingSettings(max_new_tokens=8, stop_token_ids=tuple(range(vocab)))
    for completion in asyncio.run(engine.generate(prompt, settings, n=2)):
        assert len(completion.token_ids) == 1 and completion.finish_reason == "stop"
    settings = SamplingSettings(max_new_tokens=3, stop_token_ids=(vocab + 5,))
    completion = asyncio.run(engine.generate(prompt, settings, n=1))[0]
    assert len(completion.token_ids) == 3 and completion.finish_reason == "length"

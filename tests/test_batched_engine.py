"""The transformers engine batches concurrent requests; a sequence comes out the same batched
as alone (fp32), and each row keeps its own stops and budget."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.engine import Completion, SamplingSettings
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.chat_format import prompt_token_ids
from relayrl.learner.algorithms.logprobs import token_logprobs

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture
def engine(tiny_model_path, tokenizer):
    # No stop token, so only each request's own stops and budget end its rows.
    built = TransformersEngine(TransformersSettings(tiny_model_path), (), tokenizer=tokenizer)
    yield built
    asyncio.run(built.close())


def prompts(tokenizer) -> list[list[int]]:
    """Three prompts of different lengths, so batching them pads."""
    texts = ["hi", "what is 3 + 4, please reply with only the sum", "count from one to ten"]
    return [prompt_token_ids(tokenizer, [{"role": "user", "content": t}]) for t in texts]


def run_together(engine, requests) -> list[list[Completion]]:
    async def together():
        return await asyncio.gather(*(engine.generate(p, s, n) for p, s, n in requests))

    return asyncio.run(together())


def assert_same(alone: list[Completion], batched: list[Completion]) -> None:
    for one, other in zip(alone, batched, strict=True):
        assert one.token_ids == other.token_ids
        assert one.finish_reason == other.finish_reason
        torch.testing.assert_close(
            torch.tensor(other.logprobs), torch.tensor(one.logprobs), **TOLERANCE
        )


def test_a_sequence_is_the_same_batched_as_alone(engine, tokenizer, tiny_model_path) -> None:
    short, long, other = prompts(tokenizer)
    sampled = SamplingSettings(max_new_tokens=24, temperature=0.7, seed=11)
    # top-p this small keeps only the most likely token: greedy decoding.
    greedy = SamplingSettings(max_new_tokens=16, top_p=1e-6, seed=5)
    nucleus = SamplingSettings(max_new_tokens=20, temperature=1.3, top_p=0.8, seed=3)
    requests = [(short, sampled, 3), (long, greedy, 1), (other, nucleus, 2), (long, sampled, 2)]

    alone = [asyncio.run(engine.generate(p, s, n)) for p, s, n in requests]
    assert engine.peak_requests == 1
    batched = run_together(engine, requests)
    assert engine.peak_requests > 1 and engine.peak_rows > 3
    for one, other_ in zip(alone, batched, strict=True):
        assert_same(one, other_)
        assert all(c.finish_reason == "length" for c in other_)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        reference = model.generate(
            torch.tensor([long]), do_sample=False, max_new_tokens=16, eos_token_id=None
        )
    assert batched[1][0].token_ids == reference[0, len(long) :].tolist()
    # The learner re-scores sampled tokens (no top-p) to the engine's log-probs.
    for prompt, completions in ((short, batched[0]), (long, batched[3])):
        for completion in completions:
            tokens = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                logits = model(input_ids=tokens).logits
            rescored = token_logprobs(logits, tokens, 0.7)[0, len(prompt) :]
            torch.testing.assert_close(torch.tensor(completion.logprobs), rescored, **TOLERANCE)


def test_each_row_keeps_its_own_stops_and_budget(engine, tokenizer) -> None:
    short, long, other = prompts(tokenizer)
    free = SamplingSettings(max_new_tokens=30, seed=7)
    [unstopped] = asyncio.run(engine.generate(long, free, 1))
    # A stop string the seeded sample reaches mid-way: the text its 6th token completes.
    stop_at = 6
    text = tokenizer.decode(unstopped.token_ids[:stop_at])
    before = tokenizer.decode(unstopped.token_ids[: stop_at - 1])
    stop = text[len(before) :] if text.startswith(before) and text != before else text
    stop_string = SamplingSettings(max_new_tokens=30, stop_strings=(stop,), seed=7)
    every_token_stops = SamplingSettings(
        max_new_tokens=8, stop_token_ids=tuple(range(len(tokenizer)))
    )
    budget = SamplingSettings(max_new_tokens=3)

    mixed = [(long, stop_string, 1), (short, every_token_stops, 2), (other, budget, 2)]
    stopped, single, capped, open_ = run_together(engine, [*mixed, (long, free, 1)])
    assert engine.peak_requests > 1
    [row] = stopped
    assert row.finish_reason == "stop"
    assert row.token_ids == unstopped.token_ids[: len(row.token_ids)]
    assert len(row.token_ids) <= stop_at
    assert stop in tokenizer.decode(row.token_ids)
    assert stop not in tokenizer.decode(row.token_ids[:-1])
    assert [(len(c.token_ids), c.finish_reason) for c in single] == [(1, "stop")] * 2
    assert [(len(c.token_ids), c.finish_reason) for c in capped] == [(3, "length")] * 2
    assert_same([unstopped], open_)


def test_requests_arriving_together_share_one_prefill(tiny_model_path, tokenizer) -> None:
    """A worker's groups reach an idle engine a little apart; they start as one batch."""
    settings = TransformersSettings(tiny_model_path, gather_window_s=1.0)
    engine = TransformersEngine(settings, (), tokenizer=tokenizer)
    sampled = SamplingSettings(max_new_tokens=24, seed=2)

    async def staggered():
        async def one(prompt, delay):
            await asyncio.sleep(delay)
            return await engine.generate(prompt, sampled, 2)

        await asyncio.gather(*(one(p, 0.02 * i) for i, p in enumerate(prompts(tokenizer))))
        await engine.close()

    asyncio.run(staggered())
    assert engine.prefills == 1
    assert engine.peak_requests == 3


def test_a_cancelled_request_leaves_the_batch_and_the_rest_finish(engine, tokenizer) -> None:
    short, long, _ = prompts(tokenizer)

    async def scenario():
        doomed = asyncio.create_task(engine.generate(long, SamplingSettings(900), 4))
        kept = asyncio.create_task(engine.generate(short, SamplingSettings(40, seed=2), 2))
        done = await kept
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        again = await engine.generate(short, SamplingSettings(40, seed=2), 2)
        # The cancelled request's 4 rows (900 tokens each) are gone from the batch.
        assert engine.rows_in_flight == 0
        return done, again

    kept, again = asyncio.run(scenario())
    assert [len(c.token_ids) for c in kept] == [40, 40]
    assert_same(kept, again)


def test_a_bad_request_fails_alone(engine, tokenizer) -> None:
    short, _, _ = prompts(tokenizer)

    async def scenario():
        good = asyncio.create_task(engine.generate(short, SamplingSettings(5), 1))
        with pytest.raises(ValueError, match="each in"):
            await engine.generate([len(tokenizer) + 10], SamplingSettings(5), 1)
        return await good

    [completion] = asyncio.run(scenario())
    assert len(completion.token_ids) == 5

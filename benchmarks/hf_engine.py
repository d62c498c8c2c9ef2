"""The transformers engine beside HF `model.generate` on the peer task's batch, in one run.

The batch benchmarks/peer_trl.py samples every step: SmolLM2-135M-Instruct fp32, 8 prompts
"What is A + B?" (A, B in 0..99, the arithmetic env's chat prompt) x 4 samples, temperature
1, top-p 1, at most 32 new tokens, 2 torch threads. The engine gets the 8 requests of n=4 at
once, as a worker's 8 concurrent groups send them; `model.generate` gets the 32 prompts as one
left-padded batch. Each side runs `--repeats` times after a warm-up, alternating, and the
figures are medians. The breakdown splits the engine's wall time into its model forwards
(prefill and decode) and everything else (sampling, stop checks, cache bookkeeping).

    .venv/bin/python benchmarks/hf_engine.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.engine import SamplingSettings
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.chat_format import prompt_token_ids
from relayrl.models import resolve_model

PROMPTS = 8
GROUP_SIZE = 4
MAX_NEW_TOKENS = 32
SYSTEM_PROMPT = "Answer with just the number."


def peer_prompts(tokenizer: Any, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(PROMPTS):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"What is {a} + {b}?"},
        ]
        prompts.append(prompt_token_ids(tokenizer, messages))
    return prompts


class ForwardClock:
    """Wall time and count of the engine's model forwards, split by prefill and decode."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.prefill_s = self.decode_s = 0.0
        self.prefills = self.decodes = 0
        inner = engine._forward

        def timed(ids: torch.Tensor, *args: Any) -> torch.Tensor:
            started = time.perf_counter()
            logits = inner(ids, *args)
            spent = time.perf_counter() - started
            if ids.shape[1] > 1:
                self.prefill_s += spent
                self.prefills += 1
            else:
                self.decode_s += spent
                self.decodes += 1
            return logits

        engine._forward = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        self.prefill_s = self.decode_s = 0.0
        self.prefills = self.decodes = 0


async def run_engine(
    engine: TransformersEngine, prompts: list[list[int]], seed: int
) -> tuple[float, int]:
    settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=seed)
    started = time.perf_counter()
    groups = await asyncio.gather(*(engine.generate(p, settings, GROUP_SIZE) for p in prompts))
    spent = time.perf_counter() - started
    return spent, sum(len(c.token_ids) for group in groups for c in group)


def run_hf_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], seed: int
) -> tuple[float, int]:
    rows = [p for p in prompts for _ in range(GROUP_SIZE)]
    width = max(len(p) for p in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
    spent = time.perf_counter() - started
    new = out[:, width:]
    eos = tokenizer.eos_token_id
    # Tokens up to and including each row's first EOS, as the engine counts them.
    tokens = 0
    for row in new.tolist():
        tokens += row.index(eos) + 1 if eos in row else len(row)
    return spent, tokens


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = TransformersEngine(
        TransformersSettings(path, "float32", args.threads, seed=0),
        eos_token_ids=(tokenizer.eos_token_id,),
        tokenizer=tokenizer,
        model=model,
    )
    clock = ForwardClock(engine)
    ours: list[tuple[float, int]] = []
    theirs: list[tuple[float, int]] = []
    forwards: list[tuple[float, float, int, int]] = []
    for repeat in range(args.repeats + 1):
        prompts = peer_prompts(tokenizer, repeat)
        clock.reset()
        engine_run = await run_engine(engine, prompts, repeat)
        forwards.append((clock.prefill_s, clock.decode_s, clock.prefills, clock.decodes))
        hf_run = run_hf_generate(model, tokenizer, prompts, repeat)
        if repeat:  # the first of each is the warm-up
            ours.append(engine_run)
            theirs.append(hf_run)
    await engine.close()

    def summary(runs: list[tuple[float, int]]) -> tuple[float, float]:
        seconds = statistics.median(s for s, _ in runs)
        return seconds, statistics.median(t / s for s, t in runs)

    ours_s, ours_tps = summary(ours)
    theirs_s, theirs_tps = summary(theirs)
    prefill_s, decode_s, prefills, decodes = (
        statistics.median(f) for f in zip(*forwards[1:], strict=True)
    )
    print(
        f"batch: {PROMPTS} prompts x {GROUP_SIZE}, <= {MAX_NEW_TOKENS} new tokens, "
        f"{args.threads} threads, {args.repeats} repeats (medians)"
    )
    print(f"TransformersEngine: {ours_s:.2f} s, {ours_tps:.0f} tok/s")
    print(f"HF model.generate:  {theirs_s:.2f} s, {theirs_tps:.0f} tok/s")
    print(f"engine / generate time: {ours_s / theirs_s:.2f}x, tok/s {ours_tps / theirs_tps:.2f}x")
    other_s = ours_s - prefill_s - decode_s
    print(
        f"engine breakdown: prefill {prefill_s:.2f} s ({prefills:.0f} forwards), decode "
        f"{decode_s:.2f} s ({decodes:.0f} forwards, {1000 * decode_s / max(decodes, 1):.0f} "
        f"ms each), the rest {other_s:.2f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())

"""TRL's GRPOTrainer on the quickstart task, for benchmarks/memory.py; runs in TRL's own venv.

The quickstart's task and sizes: "What is A + B?" with A, B in 0..9 under the system prompt
"Answer with the number only.", reward 1 when the last integer of the reply is A + B;
3 prompts x 8 samples per step, at most 24 new tokens, lr 2e-5, fp32, 2 torch threads.
Prints one JSON line with its own peak RSS.

    .cache/bench-venv-trl/bin/python benchmarks/trl_grpo_task.py --model PATH --steps 8
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import tempfile

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

SYSTEM_PROMPT = "Answer with the number only."


def dataset(size: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        prompt = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"What is {a} + {b}?"},
        ]
        rows.append({"prompt": prompt, "answer": a + b})
    return Dataset.from_list(rows)


def correct(completions: list, answer: list[int], **_: object) -> list[float]:
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        numbers = re.findall(r"-?\d+", completion[0]["content"])
        rewards.append(float(bool(numbers) and int(numbers[-1]) == expected))
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts * args.group_size,
            num_generations=args.group_size,
            max_completion_length=args.max_new_tokens,
            learning_rate=2e-5,
            temperature=1.0,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=args.model,
            reward_funcs=correct,
            args=config,
            train_dataset=dataset(args.steps * args.prompts * 4, 0),
        )
        trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_gb": peak / (1 << 30)}))


if __name__ == "__main__":
    main()

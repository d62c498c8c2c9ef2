"""TRL's GRPOTrainer on relayrl's arithmetic task, for benchmarks/memory.py and
benchmarks/peer_trl.py; runs in TRL's own venv.

The task is the `arithmetic` env with `answer_format: last_number`: "What is A + B?" with A, B
in 0..max_operand under a system prompt, reward 1 when the last integer of the reply is A + B.
The defaults are the quickstart's sizes: 3 prompts x 8 samples per step, at most 24 new tokens,
lr 2e-5, fp32 (`--bf16`: TRL's own default, bf16 autocast), 2 torch threads. Prints one JSON
line: its own peak RSS and, per step, TRL's own step time, mean completion length, tokens seen
and mean reward.

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

# What TRL logs each step that the side-by-side needs (its own names).
STEP_KEYS = ("step_time", "completions/mean_length", "num_tokens", "reward")


def dataset(size: int, seed: int, max_operand: int, system_prompt: str) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        prompt = [
            {"role": "system", "content": system_prompt},
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
    parser.add_argument("--max-operand", type=int, default=9)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--system-prompt", default="Answer with the number only.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="TRL's own default: bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts * args.group_size,
            num_generations=args.group_size,
            max_completion_length=args.max_new_tokens,
            learning_rate=args.lr,
            temperature=1.0,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=args.bf16,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=args.model,
            reward_funcs=correct,
            args=config,
            train_dataset=dataset(
                args.steps * args.prompts * 4, 0, args.max_operand, args.system_prompt
            ),
        )
        trainer.train()
        steps = [
            {key: row[key] for key in STEP_KEYS if key in row}
            for row in trainer.state.log_history
            if "step_time" in row
        ]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_gb": peak / (1 << 30), "steps": steps}))


if __name__ == "__main__":
    main()

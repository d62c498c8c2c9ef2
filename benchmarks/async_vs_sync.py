"""Synchronous (max_staleness 0) against asynchronous (max_staleness k) training, same job.

One rollout worker and one learner rank, one thread each, so generation and training each
own one core and can overlap. Generation and training costs are balanced by the response
length. Reported: wall time per learner step for each mode against the ideal of that mode
(sync: generation + training; async: max(generation, training)), as ratios, and the
completion tokens per second of generation (sampled tokens over the worker's time with a
group in flight), each mode with groups played one at a time and concurrently
(rollout.max_concurrent_groups), side by side in one run because this machine is shared and
noisy.

    .venv/bin/python benchmarks/async_vs_sync.py [--steps 12] [--staleness 2] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from relayrl.cluster.job import run_job
from relayrl.config_loader import load_config
from relayrl.metrics import read_metrics
from relayrl.models import resolve_model

WARMUP_STEPS = 2


def run_mode(
    model: str, staleness: int, concurrency: int, steps: int, tokens: int, root: Path
) -> dict[str, float]:
    config = load_config(
        None,
        [
            f"name=bench-k{staleness}-g{concurrency}",
            f"model.path={model}",
            "rollout.num_workers=1",
            "rollout.group_size=8",
            "rollout.cpus_per_worker=1",
            f"rollout.max_concurrent_groups={concurrency}",
            f"rollout.sampling.max_new_tokens={tokens}",
            "env.name=arithmetic",
            "learner.micro_batch_tokens=4096",
            "learner.lr=1e-5",
            f"trainer.steps={steps}",
            "trainer.prompts_per_step=2",
            f"trainer.max_staleness={staleness}",
            f"output.dir={root}/k{staleness}-g{concurrency}",
            "output.tensorboard=false",
            "output.plot=false",
        ],
    )
    result = run_job(config)
    records = read_metrics(result.metrics)[WARMUP_STEPS:]
    report = result.worker_reports[0]
    # Groups overlap: a step's worth of generation is the time with any group in flight.
    generation = report["busy_s"] / report["groups"] * config.trainer.prompts_per_step
    training = statistics.mean(r["time/train_s"] + r["time/publish_s"] for r in records)
    step = statistics.mean(r["time/step_s"] for r in records)
    ideal = max(generation, training) if staleness else generation + training
    return {
        "step": step,
        "generation": generation,
        "training": training,
        "ideal": ideal,
        "tok_s": report["sampled_tokens"] / report["busy_s"],
        "peak": report["peak_groups_in_flight"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--concurrency", type=int, default=2, help="rollout.max_concurrent_groups of the runs"
    )
    args = parser.parse_args()
    model = resolve_model(args.model)
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for staleness in (0, args.staleness):
            for groups in (1, args.concurrency):
                rows[staleness, groups] = run_mode(
                    model, staleness, groups, args.steps, args.max_new_tokens, Path(root)
                )
    sync = rows[0, 1]
    print(
        "| mode | groups at once (peak) | step s | generation s | training s | ideal s "
        "| step / ideal | speed-up | completion tok/s | vs one group at a time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (staleness, groups), row in rows.items():
        name = f"async (k={staleness})" if staleness else "sync (k=0)"
        print(
            f"| {name} | {groups} ({row['peak']}) | {row['step']:.2f} | {row['generation']:.2f} "
            f"| {row['training']:.2f} | {row['ideal']:.2f} | {row['step'] / row['ideal']:.2f} "
            f"| {sync['step'] / row['step']:.2f}x | {row['tok_s']:.0f} "
            f"| {row['tok_s'] / rows[staleness, 1]['tok_s']:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""Synchronous (max_staleness 0) against asynchronous (max_staleness k) training, same job.

One rollout worker and one learner rank, one thread each, so generation and training each
own one core and can overlap. Generation and training costs are balanced by the response
length. Reported: wall time per learner step for each mode against the ideal of that mode
(sync: generation + training; async: max(generation, training)), as ratios, side by side in
one run because this machine is shared and noisy.

    .venv/bin/python benchmarks/async_vs_sync.py [--steps 12] [--staleness 2]
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


def run_mode(model: str, staleness: int, steps: int, tokens: int, root: Path) -> dict[str, float]:
    config = load_config(
        None,
        [
            f"name=bench-k{staleness}",
            f"model.path={model}",
            "rollout.num_workers=1",
            "rollout.group_size=8",
            "rollout.cpus_per_worker=1",
            f"rollout.sampling.max_new_tokens={tokens}",
            "env.name=arithmetic",
            "learner.micro_batch_tokens=4096",
            "learner.lr=1e-5",
            f"trainer.steps={steps}",
            "trainer.prompts_per_step=2",
            f"trainer.max_staleness={staleness}",
            f"output.dir={root}/k{staleness}",
            "output.tensorboard=false",
            "output.plot=false",
        ],
    )
    result = run_job(config)
    records = read_metrics(result.metrics)[WARMUP_STEPS:]
    report = result.worker_reports[0]
    generation = report["generate_s"] / report["groups"] * config.trainer.prompts_per_step
    training = statistics.mean(r["time/train_s"] + r["time/publish_s"] for r in records)
    step = statistics.mean(r["time/step_s"] for r in records)
    ideal = max(generation, training) if staleness else generation + training
    return {"step": step, "generation": generation, "training": training, "ideal": ideal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as root:
        sync = run_mode(model, 0, args.steps, args.max_new_tokens, Path(root))
        asynchronous = run_mode(model, args.staleness, args.steps, args.max_new_tokens, Path(root))
    print("| mode | step s | generation s | training s | ideal s | step / ideal | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, row in (("sync (k=0)", sync), (f"async (k={args.staleness})", asynchronous)):
        print(
            f"| {name} | {row['step']:.2f} | {row['generation']:.2f} | {row['training']:.2f} "
            f"| {row['ideal']:.2f} | {row['step'] / row['ideal']:.2f} "
            f"| {sync['step'] / row['step']:.2f}x |"
        )


if __name__ == "__main__":
    main()

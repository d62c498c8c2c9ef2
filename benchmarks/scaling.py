"""Trained trajectories/s against the number of rollout workers, with SIMULATED generation.

Every rollout worker's engine is benchmarks/simulated_engine.py: it implements the real engine
protocol and sleeps a fixed time per generate call instead of running a model, so generation
costs no CPU and the workers' supply grows linearly with their number. Everything else is the
real job: driver, controller and admission, rollout workers with the agent loop and the
arithmetic environment, the Redis Stream buffer, the DeepSpeed learner (tiny model) and weight
publishing. One Ray instance serves every point; each point is a fresh job of its own.

For each worker count the job runs `--steps` learner steps; the first `--warmup` and the last
(its final checkpoint) are left out. Reported per point: trained trajectories/s (batch over
driver step time), the linear extrapolation of the one-worker figure, their ratio, the
learner's own limit (batch over its train time), and both sides' idle fractions. The sweep
doubles the worker count until the learner is the bottleneck (and one doubling past it, to
show the plateau), or memory runs short.

    .venv/bin/python -m benchmarks.scaling [--max-workers 64] [--generate-s 0.25]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import ray

from benchmarks.simulated_engine import SECONDS_ENV, install
from relayrl.cluster.job import run_job
from relayrl.cluster.ray_runtime import LOOPBACK, NAMESPACE, actor_env_vars
from relayrl.config_loader import load_config
from relayrl.metrics import read_metrics
from relayrl.process_memory import process_memory
from relayrl.tiny_model import build_tiny_model

# Memory a rollout worker process takes (torch, transformers, tokenizer; no model weights).
WORKER_GB = 0.45
# Left free for the learner, Redis, Ray and the rest of the machine.
RESERVE_GB = 6.0
# A point whose learner waits on data less than this share of its steps is learner-bound.
LEARNER_BOUND_IDLE = 0.05


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def overrides(args: argparse.Namespace, model: str, workers: int, out: Path) -> list[str]:
    return [
        f"name=scaling-{workers}",
        f"model.path={model}",
        f"rollout.num_workers={workers}",
        f"rollout.group_size={args.group_size}",
        "rollout.max_concurrent_groups=1",
        # Logical CPUs only: a simulated engine sleeps, and Ray was started with plenty.
        "rollout.cpus_per_worker=0.05",
        "rollout.sampling.max_new_tokens=8",
        "env.name=arithmetic",
        f"trainer.prompts_per_step={args.prompts_per_step}",
        f"trainer.max_staleness={args.max_staleness}",
        f"trainer.steps={args.steps}",
        "trainer.checkpoint_every=0",
        "learner.micro_batch_tokens=4096",
        f"output.dir={out}",
        "output.tensorboard=false",
        "output.plot=false",
    ]


def measure(metrics_path: Path, warmup: int) -> dict[str, float]:
    records = read_metrics(metrics_path)[warmup:-1]
    trained = sum(r["batch/trajectories"] for r in records)
    return {
        "steps": len(records),
        "trained_per_s": trained / sum(r["time/step_s"] for r in records),
        "learner_limit_per_s": trained / sum(r["time/train_s"] for r in records),
        "learner_idle": statistics.fmean(r["pipeline/learner_idle_fraction"] for r in records),
        "worker_idle": statistics.fmean(r["pipeline/worker_idle_fraction"] for r in records),
        "staleness_max": max(r["staleness/max"] for r in records),
        # Per step: the learner publishing weights, and the driver's own share of the step.
        "publish_s": statistics.fmean(r["time/publish_s"] for r in records),
        "driver_s": statistics.fmean(
            r["time/step_s"] - r["time/wait_batch_s"] - r["time/train_s"] - r["time/publish_s"]
            for r in records
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-workers", type=int, default=64)
    parser.add_argument("--generate-s", type=float, default=0.25)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--max-staleness", type=int, default=3)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the points here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="relayrl-scaling-"))
    model = root / "tiny-model"
    build_tiny_model(model)
    ray.init(
        address="local",
        num_cpus=max(8, args.max_workers),
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        namespace=NAMESPACE,
        runtime_env={
            # PYTHONPATH: Ray's workers import the setup hook from this checkout.
            "env_vars": {
                **actor_env_vars(),
                SECONDS_ENV: str(args.generate_s),
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            },
            "worker_process_setup_hook": install,
        },
    )
    points: list[dict[str, Any]] = []
    stopped = f"reached --max-workers {args.max_workers}"
    workers = 1
    learner_bound_at: int | None = None
    try:
        while workers <= args.max_workers:
            needed = workers * WORKER_GB + RESERVE_GB
            if needed > available_gb():
                stopped = (
                    f"{workers} workers need ~{needed:.0f} GiB with the reserve and "
                    f"{available_gb():.1f} GiB are available"
                )
                break
            config = load_config(None, overrides(args, str(model), workers, root / str(workers)))
            result = run_job(config)
            point = {"workers": workers, **measure(result.metrics, args.warmup)}
            last = read_metrics(result.metrics)[-1]
            point["worker_rss_gb"] = last.get("memory/worker_rss_gb", 0.0)
            points.append(point)
            print(json.dumps(point), flush=True)
            if point["learner_idle"] <= LEARNER_BOUND_IDLE:
                if learner_bound_at is not None:
                    stopped = f"learner-bound from {learner_bound_at} workers"
                    break
                # One more doubling shows the plateau.
                learner_bound_at = workers
            workers *= 2
    finally:
        ray.shutdown()
    print_table(points, args, stopped)
    if args.json:
        args.json.write_text(json.dumps({"points": points, "stopped": stopped}, indent=2))


def print_table(points: list[dict[str, Any]], args: argparse.Namespace, stopped: str) -> None:
    base = points[0]["trained_per_s"] if points else 0.0
    print(
        f"\nsimulated generation: {args.generate_s}s per call, group {args.group_size}, "
        f"batch {args.group_size * args.prompts_per_step}, max_staleness {args.max_staleness}; "
        f"driver RSS {process_memory().get('rss_gb', 0.0):.2f} GB; stopped: {stopped}"
    )
    print(
        "| workers | trained traj/s | linear | of linear | learner limit traj/s "
        "| learner idle | worker idle | publish s/step | driver s/step | worker RSS GB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in points:
        linear = base * p["workers"]
        print(
            f"| {p['workers']} | {p['trained_per_s']:.1f} | {linear:.1f} | "
            f"{p['trained_per_s'] / linear:.0%} | {p['learner_limit_per_s']:.1f} | "
            f"{p['learner_idle']:.0%} | {p['worker_idle']:.0%} | {p['publish_s']:.2f} | "
            f"{p['driver_s']:.2f} | {p['worker_rss_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()

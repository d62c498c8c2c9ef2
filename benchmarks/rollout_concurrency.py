"""One rollout worker's generation throughput against rollout.max_concurrent_groups.

The real worker, transformers engine, environment and Redis buffer, without Ray or a learner:
the worker plays a fixed number of groups and the completion tokens per second of its time
with a group in flight are reported for each concurrency, the runs interleaved and repeated
because this machine is shared and noisy.

    .venv/bin/python benchmarks/rollout_concurrency.py [--model smollm2-135m] [--groups 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from relayrl.actors.rollout_worker import RolloutWorker
from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.config import JobConfig
from relayrl.models import resolve_model
from relayrl.weights import WeightVersion


class FixedGate:
    """Admits `groups` groups, as many at once as asked, then says the job is stopping."""

    def __init__(self, groups: int) -> None:
        self.remaining = groups

    async def acquire(self, worker_id: str, count: int) -> int | None:
        if not self.remaining:
            return None
        self.remaining -= 1
        return 0

    async def release(self, worker_id: str, count: int, produced: bool) -> None:
        """Nothing to book: the benchmark admits a fixed number of groups."""


class NoNewWeights:
    """A pull transport on which nothing is ever published."""

    def latest(self) -> WeightVersion | None:
        return None

    def fetch(self, newer_than: int) -> None:
        return None

    async def latest_async(self) -> WeightVersion | None:
        return None

    async def fetch_async(self, newer_than: int) -> None:
        return None


def run_once(
    model: str, buffer: RedisStreamBuffer, concurrency: int, args: argparse.Namespace
) -> dict[str, float]:
    config = JobConfig.model_validate(
        {
            "model": {"dtype": args.dtype},
            "rollout": {
                "engine": "transformers",
                "torch_threads": args.threads,
                "group_size": args.group_size,
                "sampling": {"max_new_tokens": args.max_new_tokens},
                "max_concurrent_groups": concurrency,
            },
            "env": {"name": "arithmetic"},
        }
    )
    worker = RolloutWorker(
        config, f"bench-{concurrency}", model, 0, buffer, NoNewWeights(), FixedGate(args.groups)
    )
    report = asyncio.run(worker.run())
    engine = worker.engine
    asyncio.run(engine.close())
    return {
        "tok_s": report["sampled_tokens"] / report["busy_s"],
        "busy_s": report["busy_s"],
        "tokens": report["sampled_tokens"],
        "peak_groups": report["peak_groups_in_flight"],
        "peak_rows": getattr(engine, "peak_rows", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--groups", type=int, default=8, help="groups each run plays")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = resolve_model(args.model)
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in args.concurrency}
    with tempfile.TemporaryDirectory() as root:
        redis = EmbeddedRedis(Path(root) / "redis").start()
        try:
            buffer = RedisStreamBuffer(redis.url, "bench:rollout-concurrency")
            buffer.ensure_group()
            for _ in range(args.repeats):
                for concurrency in args.concurrency:
                    runs[concurrency].append(run_once(model, buffer, concurrency, args))
        finally:
            redis.stop()
    base = statistics.median(r["tok_s"] for r in runs[args.concurrency[0]])
    print(
        f"{args.model} {args.dtype}, {args.groups} groups x {args.group_size} samples, "
        f"{args.max_new_tokens} new tokens at most, {args.threads} thread(s)"
    )
    print(
        "| groups at once | peak groups | peak rows | tokens | busy s | completion tok/s "
        "| vs first |"
    )
    print("|---|---|---|---|---|---|---|")
    for concurrency, rows in runs.items():
        tok_s = statistics.median(r["tok_s"] for r in rows)
        last = rows[-1]
        print(
            f"| {concurrency} | {last['peak_groups']:.0f} | {last['peak_rows']:.0f} "
            f"| {last['tokens']:.0f} | {statistics.median(r['busy_s'] for r in rows):.2f} "
            f"| {tok_s:.1f} | {tok_s / base:.2f}x |"
        )


if __name__ == "__main__":
    main()

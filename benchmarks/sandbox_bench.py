"""Sandbox start-up and per-call overhead against a bare `python3 -c 'print(1)'`.

    python benchmarks/sandbox_bench.py [--calls 200] [--workers 2] [--pool]

Prints a Markdown table: p50/p99 latency of sequential calls and calls per second per core with
`--workers` calls in flight, and each as a ratio to the bare interpreter. The variants take turns
call by call (latency) and round by round (throughput), so load from other tenants of a shared
machine hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from relayrl.envs.sandbox import SandboxLimits, check_host, run_python_async
from relayrl.envs.sandbox.tools import SANDBOX_PYTHON

TRIVIAL = "print(1)"
LIMITS = SandboxLimits(wall_s=10.0)
THROUGHPUT_ROUNDS = 4

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Measurement:
    name: str
    p50_ms: float
    p99_ms: float
    calls_per_s_per_core: float


async def bare_call() -> None:
    argv = [SANDBOX_PYTHON, "-c", TRIVIAL]
    completed = await asyncio.to_thread(subprocess.run, argv, capture_output=True, check=True)
    assert completed.stdout == b"1\n"


async def sandbox_call() -> None:
    result = await run_python_async(TRIVIAL, LIMITS)
    assert result.status == "ok" and result.stdout == "1\n", result


async def interleaved_latencies_ms(calls: dict[str, Call], count: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


async def interleaved_throughput(
    calls: dict[str, Call], count: int, workers: int
) -> dict[str, float]:
    """Calls per second per core with `workers` in flight."""
    busy_s = dict.fromkeys(calls, 0.0)
    in_flight = asyncio.Semaphore(workers)

    async def limited(call: Call) -> None:
        async with in_flight:
            await call()

    for _ in range(THROUGHPUT_ROUNDS):
        for name, call in calls.items():
            started = time.perf_counter()
            await asyncio.gather(*(limited(call) for _ in range(count // THROUGHPUT_ROUNDS)))
            busy_s[name] += time.perf_counter() - started
    cores = min(workers, os.cpu_count() or 1)
    done = count // THROUGHPUT_ROUNDS * THROUGHPUT_ROUNDS
    return {name: done / seconds / cores for name, seconds in busy_s.items()}


@asynccontextmanager
async def ray_pool_call(workers: int) -> AsyncIterator[Call]:
    """A call through a started Ray SandboxPool of `workers` actors; prints its start time."""
    import ray

    from relayrl.cluster.sandbox_actors import RaySandboxRunners
    from relayrl.envs.sandbox.pool import SandboxPool

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=workers, include_dashboard=False)
    try:
        started = time.perf_counter()
        async with SandboxPool(workers, LIMITS, runners=RaySandboxRunners()) as pool:
            print(f"SandboxPool({workers}) start: {time.perf_counter() - started:.2f} s")

            async def pool_call() -> None:
                assert (await pool.run(TRIVIAL)).stdout == "1\n"

            yield pool_call
    finally:
        ray.shutdown()


async def measure(calls: dict[str, Call], count: int, workers: int) -> list[Measurement]:
    for call in calls.values():
        await call()  # warm page cache, imports and actors
    latencies = await interleaved_latencies_ms(calls, count)
    throughput = await interleaved_throughput(calls, count, workers)
    return [
        Measurement(
            name=name,
            p50_ms=statistics.median(latencies[name]),
            p99_ms=statistics.quantiles(latencies[name], n=100)[98],
            calls_per_s_per_core=throughput[name],
        )
        for name in calls
    ]


def table(rows: list[Measurement]) -> str:
    bare = rows[0]
    lines = [
        "| call | p50 ms | p99 ms | calls/s/core | p50 × bare | calls/s × bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.calls_per_s_per_core:.1f}"
            f" | {row.p50_ms / bare.p50_ms:.2f} |"
            f" {row.calls_per_s_per_core / bare.calls_per_s_per_core:.2f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Measurement]:
    calls: dict[str, Call] = {
        f"bare `python3 -c {TRIVIAL!r}`": bare_call,
        "run_python": sandbox_call,
    }
    if not args.pool:
        return await measure(calls, args.calls, args.workers)
    async with ray_pool_call(args.workers) as pool_call:
        return await measure({**calls, "SandboxPool.run": pool_call}, args.calls, args.workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pool", action="store_true", help="also time calls through a Ray pool")
    args = parser.parse_args()

    started = time.perf_counter()
    check_host()
    print(f"check_host (start-up probe): {(time.perf_counter() - started) * 1000:.0f} ms")
    rows = asyncio.run(run(args))
    print(f"{args.calls} sequential calls each; throughput with {args.workers} in flight")
    print(table(rows))


if __name__ == "__main__":
    main()

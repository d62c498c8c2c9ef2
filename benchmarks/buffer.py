"""The Redis trajectory buffer against a raw pipelined `XADD` loop on the same server.

    python benchmarks/buffer.py [--trajectories 256] [--group 8] [--tokens 1024,4096,16384]
                                [--fsync always|everysec] [--rounds 3]

Starts one embedded Redis (the job's own, with the job's default fsync) and, for each
trajectory length, measures in alternating rounds so load from other tenants hits both alike:
- `push`: `RedisStreamBuffer.push` of whole groups (msgpack encode + MULTI/EXEC per group),
- `raw XADD`: the same payload bytes, already encoded, sent with a non-transactional pipeline
  of one group per round trip (no encode, no atomicity, no counters): the ceiling,
- `read + ack`: `RedisStreamBuffer.read` (XREADGROUP + decode + validation) then `ack` (the
  acknowledging script) of what was pushed,
- `raw XREAD`: `XREADGROUP` of the same count without decoding.
Prints a Markdown table of trajectories/s and MB/s, and each relayrl path as a ratio to its raw
counterpart. Best of `--rounds` per path.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.redis_buffer import GROUP_FIELD, ID_FIELD, PAYLOAD_FIELD, RedisStreamBuffer
from relayrl.trajectory import NO_VERSION, Trajectory, encode

PROMPT_TOKENS = 256


@dataclass(frozen=True)
class Row:
    tokens: int
    path: str
    per_s: float
    mb_per_s: float
    ratio: float | None


def make_group(tokens: int, size: int, seed: int) -> list[Trajectory]:
    """One group of `size` episodes of `tokens` tokens, the last ones sampled."""
    rng = np.random.default_rng(seed)
    group = f"group-{seed}"
    sampled = tokens - PROMPT_TOKENS
    return [
        Trajectory(
            group_id=group,
            tokens=rng.integers(0, 49_152, tokens),
            prompt_len=PROMPT_TOKENS,
            loss_mask=[0] * PROMPT_TOKENS + [1] * sampled,
            logprobs=np.concatenate([np.zeros(PROMPT_TOKENS), -rng.random(sampled)]),
            versions=[NO_VERSION] * PROMPT_TOKENS + [0] * sampled,
            reward=float(rng.random()),
            task={"prompt": "x" * 200},
        )
        for _ in range(size)
    ]


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def one_round(
    client: redis.Redis,
    buffer: RedisStreamBuffer,
    raw_stream: str,
    groups: list[list[Trajectory]],
    encoded: list[list[dict[bytes, bytes]]],
) -> dict[str, float]:
    """Seconds of each path, one after another on fresh streams."""
    count = sum(len(g) for g in groups)

    def relayrl_push() -> None:
        for group in groups:
            buffer.push(group)

    def raw_push() -> None:
        for fields_of_group in encoded:
            pipe = client.pipeline(transaction=False)
            for fields in fields_of_group:
                pipe.xadd(raw_stream, fields)
            pipe.execute()

    def relayrl_read() -> None:
        got = 0
        while got < count:
            entries = buffer.read(max_count=64, block_ms=1000)
            buffer.ack([e.entry_id for e in entries])
            got += len(entries)

    def raw_read() -> None:
        got = 0
        while got < count:
            reply = client.xreadgroup("raw", "c", {raw_stream: ">"}, count=64, block=1000)
            got += len(reply[0][1]) if reply else 0

    return {
        "push": timed(relayrl_push),
        "raw XADD": timed(raw_push),
        "read + ack": timed(relayrl_read),
        "raw XREADGROUP": timed(raw_read),
    }


def measure_length(
    url: str, tokens: int, groups: list[list[Trajectory]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Best seconds per path, and the payload bytes one pass moves."""
    client = redis.Redis.from_url(url)
    payload_bytes = float(sum(len(encode(t)) for g in groups for t in g))
    encoded = [
        [
            {ID_FIELD: t.id.encode(), GROUP_FIELD: t.group_id.encode(), PAYLOAD_FIELD: encode(t)}
            for t in group
        ]
        for group in groups
    ]
    best: dict[str, float] = {}
    for round_index in range(rounds):
        stream = f"bench-{tokens}-{round_index}"
        buffer = RedisStreamBuffer(url, stream, trim_acknowledged=True)
        buffer.ensure_group()
        client.xgroup_create(f"{stream}-raw", "raw", id="0", mkstream=True)
        for path, seconds in one_round(client, buffer, f"{stream}-raw", groups, encoded).items():
            best[path] = min(best.get(path, float("inf")), seconds)
        client.delete(stream, f"{stream}-raw", buffer.added_key, buffer.booked_key)
    return {path: (seconds, payload_bytes) for path, seconds in best.items()}


def rows_for(tokens: int, count: int, timings: dict[str, tuple[float, float]]) -> list[Row]:
    raw_of = {"push": "raw XADD", "read + ack": "raw XREADGROUP"}
    rows = []
    for path, (seconds, payload_bytes) in timings.items():
        ratio = None
        if path in raw_of:
            ratio = timings[raw_of[path]][0] / seconds
        rows.append(Row(tokens, path, count / seconds, payload_bytes / seconds / 1e6, ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=256)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", default="1024,4096,16384")
    parser.add_argument("--fsync", choices=["always", "everysec"], default="always")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lengths = [int(t) for t in args.tokens.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(folder, fsync=args.fsync) as db:
        for tokens in lengths:
            groups = [
                make_group(tokens, args.group, seed)
                for seed in range(args.trajectories // args.group)
            ]
            count = sum(len(g) for g in groups)
            rows += rows_for(tokens, count, measure_length(db.url, tokens, groups, args.rounds))
    print(f"fsync={args.fsync}, {args.trajectories} trajectories in groups of {args.group}\n")
    print("| tokens | path | trajectories/s | MB/s | vs raw |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        print(f"| {row.tokens} | {row.path} | {row.per_s:.0f} | {row.mb_per_s:.1f} | {ratio} |")


if __name__ == "__main__":
    main()

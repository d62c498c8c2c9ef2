"""Shared pieces of the whole-job tests: a job run against its own Redis, and the stream
audit that says where every pushed entry ended up."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from relayrl.cluster.job import JobResult, run_job
from relayrl.config import JobConfig
from relayrl.config_loader import load_config


def job_on_own_redis(
    out: Path, overrides: Sequence[str]
) -> Iterator[tuple[JobConfig, JobResult, redis.Redis]]:
    """Fixture body: runs the job with a Redis of its own (kept after the job, so tests can
    read the stream), yields (config, result, client), and stops Redis whatever happens."""
    from relayrl.cluster.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(out / "redis").start()
    try:
        config = load_config(
            None, [*overrides, f"buffer.url={server.url}", f"output.dir={out}/run"]
        )
        result = run_job(config)
        yield config, result, redis.Redis.from_url(server.url)
    finally:
        server.stop()


def unacknowledged(client: Any, stream: str) -> tuple[set[str], set[str]]:
    """(entries the learner's group read but did not acknowledge, entries it never read)."""
    pending = {
        p["message_id"].decode()
        for p in client.xpending_range(stream, "learner", min="-", max="+", count=1_000_000)
    }
    group = next(g for g in client.xinfo_groups(stream) if g["name"] == b"learner")
    last = group["last-delivered-id"].decode()
    undelivered = {e.decode() for e, _ in client.xrange(stream, min=f"({last}", max="+")}
    return pending, undelivered

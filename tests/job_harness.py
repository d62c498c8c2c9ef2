"""Shared pieces of the whole-job tests: a job run against its own Redis (in process, or as
a `relayrl train` subprocess), the processes it started, and the stream audit that says
where every pushed entry ended up."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from relayrl.cluster.job import JobResult, run_job
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.config import JobConfig
from relayrl.config_loader import load_config
from relayrl.metrics import read_metrics
from relayrl.trajectory import Trajectory, decode

# The subprocess jobs' admission bound (`trainer.max_staleness`).
STALENESS = 1


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


def stored_trajectories(client: Any, stream: str) -> list[tuple[str, Trajectory]]:
    """Every entry of the stream, decoded, with its entry id, in stream order."""
    return [
        (entry_id.decode(), decode(fields[PAYLOAD_FIELD]))
        for entry_id, fields in client.xrange(stream)
    ]


def turn_versions(trajectories: Sequence[Trajectory]) -> list[list[int]]:
    """The policy versions of each stored turn's sampled tokens, one list per turn; asserts
    that within a turn the version never goes back (a switch is a load mid-turn)."""
    found = []
    for trajectory in trajectories:
        for turn in trajectory.turns:
            span = slice(turn.start, turn.end)
            versions = trajectory.versions[span][trajectory.loss_mask[span].astype(bool)]
            assert (versions[1:] >= versions[:-1]).all(), (trajectory.id, versions.tolist())
            found.append(versions.tolist())
    return found


def assert_nothing_discarded(records: Sequence[dict[str, Any]]) -> None:
    """No step of the run discarded a sample, for any reason: `discarded/total` is zero and no
    per-reason key appears."""
    for record in records:
        reasons = {k: v for k, v in record.items() if k.startswith("discarded/")}
        assert reasons == {"discarded/total": 0}, (record["step"], reasons)


def assert_discarded_only_as_stale(records: Sequence[dict[str, Any]]) -> None:
    """Nothing discarded but stale groups: a group that runs concurrently with later ones can be
    overtaken into the stream past `max_staleness` (docs/architecture.md, admission)."""
    for record in records:
        reasons = {k: v for k, v in record.items() if k.startswith("discarded/")}
        stale = reasons.pop("discarded/stale", 0)
        assert reasons == {"discarded/total": stale}, (record["step"], reasons)


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


def job_args(model: str, out: Path, steps: int, extra: list[str], staleness: int = 1) -> list[str]:
    """`relayrl train` with two workers on the digits env, config read from stdin (`-`)."""
    overrides = [
        "name=faults",
        f"model.path={model}",
        "rollout.num_workers=2",
        "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=8",
        "env.name=tests.plugin_envs:DIGITS",
        "buffer.trim_acknowledged=false",
        "learner.micro_batch_tokens=128",
        "learner.batch_timeout_s=120",
        f"trainer.steps={steps}",
        "trainer.prompts_per_step=2",
        f"trainer.max_staleness={staleness}",
        "trainer.checkpoint_every=1",
        f"output.dir={out}",
        "output.tensorboard=false",
        *extra,
    ]
    args = [sys.executable, "-m", "relayrl.cli", "train", "-"]
    for item in overrides:
        args += ["--set", item]
    return args


# Each started job's log, by pid: a job that exits early fails its test with the log's tail.
JOB_LOGS: dict[int, Path] = {}


def start(args: list[str], log: Path) -> subprocess.Popen:
    cwd = Path(__file__).resolve().parents[1]  # so Ray workers import tests.plugin_envs
    proc = subprocess.Popen(args, cwd=cwd, stdout=log.open("a"), stderr=subprocess.STDOUT)
    JOB_LOGS[proc.pid] = log
    return proc


def assert_running(proc: subprocess.Popen) -> None:
    """The job has not exited; if it has, the failure carries the end of its log."""
    if proc.poll() is None:
        return
    log = JOB_LOGS.get(proc.pid)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else "(no log)"
    raise AssertionError(f"job exited early with {proc.returncode}; its log ends:\n{tail}")


def descendants(pid: int) -> list[int]:
    found = []
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for token in child.read_text().split():
            found.append(int(token))
            found.extend(descendants(int(token)))
    return found


def find_process(root: int, title: str, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in descendants(root):
            try:
                program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                if title.encode() in program:
                    return pid
            except OSError:
                continue
        time.sleep(0.5)
    raise AssertionError(f"no {title} process under {root}")


def steps_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_steps(
    proc: subprocess.Popen, out: Path, count: int, timeout_s: float = 300, poll_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout_s
    while steps_done(out) < count:
        assert_running(proc)
        assert time.monotonic() < deadline, "job made no progress"
        time.sleep(poll_s)


def wait_for_workers(proc: subprocess.Popen, out: Path, count: int, timeout_s: float = 300) -> None:
    """Until the job's last step record shows `count` rollout workers."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_metrics(out / "metrics.jsonl")
        if records and records[-1]["rollout/workers"] == count:
            return
        assert_running(proc)
        assert time.monotonic() < deadline, f"the fleet never reached {count} workers"
        time.sleep(0.5)

"""Crashes at awkward moments: SIGKILL a rollout worker and the learner mid-run, then resume;
kill the embedded Redis mid-run. Every trajectory is accounted for afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from relayrl.cluster.audit import audit_stream
from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.learner.checkpoint import read_ledger
from relayrl.trajectory import decode
from tests.job_harness import (
    STALENESS,
    find_process,
    job_args,
    start,
    unacknowledged,
    wait_for_steps,
)

pytestmark = pytest.mark.slow

STEPS = 8
# The learner's commit that the armed fault point kills. A tiny step takes ~0.2 s: the fleet
# must see the worker killed after step 1 and replace it before this commit.
KILLED_AT = 6
BATCH = 4  # trajectories a step trains: job_args' 2 prompts x 2 samples


def audit(client: redis.Redis, stream: str, out: Path, steps: int) -> None:
    """Each trajectory pushed is trained by exactly one committed step, discarded with a
    reason, or still pending/undelivered; trained tokens respect the staleness bound."""
    pushed = {}
    versions = {}
    for entry_id, fields in client.xrange(stream):
        trajectory = decode(fields[PAYLOAD_FIELD])
        pushed[entry_id.decode()] = trajectory.id
        versions[trajectory.id] = trajectory.sampled_versions()
    ledger = read_ledger(out / "checkpoints")
    assert [r["step"] for r in ledger] == list(range(1, steps + 1))
    trained = [t for r in ledger for t in r["trajectory_ids"]]
    assert len(trained) == len(set(trained)), "a trajectory was trained twice"
    for record in ledger:
        policy_version = record["step"] - 1
        for trajectory_id in record["trajectory_ids"]:
            assert policy_version - versions[trajectory_id].min() <= STALENESS
    acked = [e for r in ledger for e in r["entry_ids"]]
    assert len(acked) == len(set(acked))
    pending, undelivered = unacknowledged(client, stream)
    assert not pending & set(acked), "an entry of a committed step is still pending"
    assert set(acked) | pending | undelivered == set(pushed), "a trajectory vanished"
    assert client.xlen(f"{stream}:dead") == 0
    report = audit_stream(client, stream, out / "checkpoints")
    assert report.ok and report.awaiting_ack == 0, "\n".join(report.lines())


def test_embedded_redis_killed_mid_run_comes_back(tiny_model_path, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "job.log"
    args = job_args(tiny_model_path, out, steps=5, extra=[])
    config = tmp_path / "job.yaml"
    config.write_text("name: faults\n")
    args[args.index("-")] = str(config)
    proc = start(args, log)
    try:
        wait_for_steps(proc, out, 2)
        redis_pid = find_process(proc.pid, "redis-server", 5)
        os.kill(redis_pid, signal.SIGKILL)
        assert proc.wait(600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "restarted it on the same data" in log.read_text()
    with EmbeddedRedis(out / "redis") as server:
        audit(redis.Redis.from_url(server.url), "relayrl:faults:trajectories", out, 5)


def test_worker_sigkilled_then_learner_killed_after_latest_before_the_acks_then_resume(
    tiny_model_path, tmp_path
):
    """One run, two faults: a rollout worker SIGKILLed after the first step (the fleet
    replaces it), then the learner SIGKILLed by an armed fault point on its third commit,
    where `latest` names step 3 but its entries are unacked. (A learner killed at a random
    moment is the chaos soak's first round.)"""
    from relayrl.cluster.audit import audit_run

    out = tmp_path / "run"
    log = tmp_path / "job.log"
    config = tmp_path / "job.yaml"
    config.write_text("name: faults\n")
    args = job_args(tiny_model_path, out, steps=STEPS, extra=[])
    args[args.index("-")] = str(config)
    armed = {**os.environ, "RELAYRL_FAULT": f"after_latest_before_acks:kill@{KILLED_AT}"}
    cwd = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(
        args, cwd=cwd, env=armed, stdout=log.open("a"), stderr=subprocess.STDOUT
    )
    try:
        wait_for_steps(first, out, 1, poll_s=0.05)
        os.kill(find_process(first.pid, "ray::RolloutWorker"), signal.SIGKILL)
        assert first.wait(600) != 0
    finally:
        if first.poll() is None:
            first.kill()
    text = log.read_text()
    # The killed worker was replaced, with its cause: the fleet's own line, not any "died".
    assert re.search(r"worker-\d+ died \(\w+Error.*\); replaced by worker-\d+", text), text[-3000:]
    crashed = audit_run(out)
    assert crashed.ok, "\n".join(crashed.lines())
    assert crashed.trained == KILLED_AT * BATCH and crashed.awaiting_ack >= BATCH

    resumed = start([*args, "--resume"], log)
    assert resumed.wait(600) == 0, log.read_text()[-3000:]
    assert "resumed from" in log.read_text()
    report = audit_run(out)
    assert report.ok, "\n".join(report.lines())
    assert report.duplicates == [] and report.awaiting_ack == 0
    assert report.trained == STEPS * BATCH
    ledger = read_ledger(out / "checkpoints")
    assert [r["step"] for r in ledger] == list(range(1, STEPS + 1))
    assert all("duplicate" not in r["discarded"] for r in ledger)
    with EmbeddedRedis(out / "redis") as server:
        audit(redis.Redis.from_url(server.url), "relayrl:faults:trajectories", out, STEPS)

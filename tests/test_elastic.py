"""Rollout workers join and leave a running job; joiners pull the current weights first."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis

from relayrl.metrics import read_metrics
from tests.job_harness import (
    STALENESS,
    assert_discarded_only_as_stale,
    job_args,
    start,
    steps_done,
    stored_trajectories,
    wait_for_steps,
    wait_for_workers,
)

pytestmark = pytest.mark.slow


def scale(args: list[str], workers: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "relayrl.cli", "scale", args[4], str(workers)]
    command += args[5:]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_scale_workers_up_and_down_while_training(tiny_model_path, redis_server, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "job.log"
    config = tmp_path / "job.yaml"
    config.write_text(f"buffer:\n  url: {redis_server.url}\n")
    # Far more steps than the test waits for: it stops the job itself once it has seen both.
    extra = ["name=elastic", "trainer.checkpoint_every=0", "trainer.steps=100000"]
    args = job_args(tiny_model_path, out, steps=100000, extra=extra)
    args[args.index("-")] = str(config)
    proc = start(args, log)
    try:
        # Three versions out before the join, so weights one version stale are told apart
        # from the initial ones a joiner that skipped its first pull would generate on.
        wait_for_steps(proc, out, 3)
        published_before_join = steps_done(out)
        joined_after_ms = time.time() * 1000
        grown = scale(args, 3)
        assert grown.returncode == 0, grown.stderr
        assert "rollout workers 2 -> 3" in grown.stdout
        wait_for_workers(proc, out, 3)
        wait_for_steps(proc, out, steps_done(out) + 2)
        shrunk = scale(args, 1)
        assert shrunk.returncode == 0, shrunk.stderr
        wait_for_workers(proc, out, 1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(300) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "scaling rollout workers 2 -> 3" in text and "scaling rollout workers 3 -> 1" in text
    records = read_metrics(out / "metrics.jsonl")
    # Training carried on through both changes without a gap, on fresh weights.
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert all(r["staleness/max"] <= 1 for r in records)
    # The intake drops what is too stale, so the bound above holds whatever admission or a
    # joiner does. A group overtaken in flight is discarded as stale (docs/architecture.md,
    # admission), and only then: the stream below shows no joiner generated on old weights.
    assert_discarded_only_as_stale(records)
    # Every group pushed after the join (the joiner's first ones among them) started on
    # weights at most max_staleness behind those published before the join.
    client = redis.Redis.from_url(redis_server.url)
    first_versions = [
        min(trajectory.sampled_versions().tolist(), default=published_before_join)
        for entry_id, trajectory in stored_trajectories(client, "relayrl:elastic:trajectories")
        if int(entry_id.split("-")[0]) > joined_after_ms
    ]
    assert first_versions, "nothing was pushed after the join"
    assert min(first_versions) >= published_before_join - STALENESS, first_versions
    assert "stopped" in text


def test_scale_without_a_running_job_exits_2(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(f"output:\n  dir: {tmp_path}\n")
    result = subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "scale", str(config), "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no running job" in result.stderr

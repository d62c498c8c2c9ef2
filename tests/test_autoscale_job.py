"""Autoscaling a live job: a slow environment starves the learner and the fleet grows to
rollout.autoscale.max_workers; then a slow learner leaves a full batch waiting and the workers
idle on admission, and the fleet shrinks to min_workers. No trajectory is lost or trained
twice."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import redis
import yaml

from relayrl.cluster.audit import audit_stream
from relayrl.metrics import read_metrics
from tests.job_harness import job_args, start, wait_for_steps, wait_for_workers

pytestmark = pytest.mark.slow

# Each pause is many times what the other side's work takes on a loaded 2-core box (a tiny
# model's batch: well under 0.2 s), so the idle fractions sit far past the thresholds.
SLOW_ENV = {"env_s": 1.0, "learner_s": 0.0}
SLOW_LEARNER = {"env_s": 0.0, "learner_s": 2.0}


def set_pace(script: Path, pace: dict[str, float]) -> None:
    """Replace the pace file in one rename: the env and the loss read it on every call, and a
    read between an in-place truncate and its write would fail the job on an empty file."""
    staged = script.with_suffix(".staged")
    staged.write_text(json.dumps(pace))
    os.replace(staged, script)


def test_the_fleet_follows_the_slower_side(tiny_model_path, redis_server, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "job.log"
    script = tmp_path / "pace.json"
    set_pace(script, SLOW_ENV)
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "buffer": {"url": redis_server.url},
                "env": {
                    "name": "tests.autoscale_envs:PACED_DIGITS",
                    "params": {"script": str(script)},
                },
                "learner": {
                    "algorithm": {
                        "loss": {
                            "name": "custom",
                            "target": "tests.autoscale_envs:PacedLoss",
                            "params": {"script": str(script)},
                        }
                    }
                },
                "rollout": {
                    "autoscale": {
                        "min_workers": 1,
                        "max_workers": 3,
                        "patience_steps": 2,
                        "cooldown_s": 3.0,
                    }
                },
            }
        )
    )
    extra = [
        "name=autoscale",
        "env.name=tests.autoscale_envs:PACED_DIGITS",
        "rollout.num_workers=1",
        "rollout.max_concurrent_groups=1",
        "trainer.steps=100000",
    ]
    args = job_args(tiny_model_path, out, steps=100000, extra=extra)
    args[args.index("-")] = str(config)
    proc = start(args, log)
    try:
        wait_for_steps(proc, out, 1)
        wait_for_workers(proc, out, 3, timeout_s=600)
        set_pace(script, SLOW_LEARNER)
        wait_for_workers(proc, out, 1, timeout_s=600)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(300) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    changes = re.findall(r"autoscale: rollout workers (\d+) -> (\d+)", text)
    assert [(int(a), int(b)) for a, b in changes] == [(1, 2), (2, 3), (3, 2), (2, 1)], text[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    sizes = [r["rollout/workers"] for r in records]
    assert max(sizes) == 3 and sizes[-1] == 1
    # Per-worker figures name every worker the fleet had.
    seen = {key.split("/")[1] for r in records for key in r if key.startswith("worker/")}
    assert len(seen) >= 3
    report = audit_stream(
        redis.Redis.from_url(redis_server.url),
        "relayrl:autoscale:trajectories",
        out / "checkpoints",
    )
    assert report.ok, "\n".join(report.lines())

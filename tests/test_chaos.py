"""A short chaos soak: random SIGKILLs (driver, learner rank, rollout worker, Redis) and
network faults, each followed by `--resume`; the audit invariant holds, nothing stalls, and
no process of the job is left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.chaos import job_processes, soak
from relayrl.cluster.audit import audit_run
from relayrl.cluster.session_guard import SESSION_RECORD, session_processes
from relayrl.cluster.stray_processes import is_running, pids_where, working_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_five_rounds_of_chaos_lose_duplicate_and_leave_nothing(tmp_path):
    result = soak(rounds=5, seed=1, out=tmp_path)
    assert result["rounds_survived"] == 5, result
    assert result["final_resume_finished"], result
    assert result["duplicates"] == 0, result
    assert result["unaccounted"] == 0, result
    assert result["stalls"] == 0, result
    assert result["orphaned_processes"] == 0, result
    assert result["trained"] > 0


def test_a_killed_driver_leaves_no_process_and_resume_finishes(tiny_model_path, tmp_path):
    out = tmp_path / "run"
    log = (tmp_path / "job.log").open("a")
    config = tmp_path / "job.yaml"
    config.write_text("name: orphans\n")
    overrides = [
        f"model.path={tiny_model_path}",
        "rollout.num_workers=2",
        "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=8",
        "env.name=arithmetic",
        "trainer.prompts_per_step=2",
        "trainer.checkpoint_every=1",
        f"output.dir={out}",
        "output.tensorboard=false",
        "output.plot=false",
    ]
    args = [sys.executable, "-m", "relayrl.cli", "train", str(config)]
    for item in overrides:
        args += ["--set", item]
    driver = subprocess.Popen(
        [*args, "--set", "trainer.steps=1000"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: steps_done(out) >= 2 or driver.poll() is not None, 300)
        assert driver.poll() is None, "the job ended before it could be killed"
        session_dir = json.loads((out / SESSION_RECORD).read_text())["session_dir"]
        job = job_processes(driver.pid, "")
        assert session_processes(session_dir) and redis_servers(out)
    finally:
        driver.kill()
        driver.wait()
    # Redis (parent-death signal) and every Ray process (the session guard) go with it.
    wait_for(lambda: not [pid for pid in job if is_running(pid)], 60)
    assert not redis_servers(out) and not session_processes(session_dir)

    done = steps_done(out)
    resumed = subprocess.run(
        [*args, "--set", f"trainer.steps={done + 2}", "--resume"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    assert resumed.returncode == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert not redis_servers(out)
    assert not (out / SESSION_RECORD).exists()
    assert not pids_where(lambda _pid, argv: any(str(out) in arg for arg in argv))
    report = audit_run(out)
    assert report.ok, report.lines()
    assert report.trained > 0


def steps_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def redis_servers(out: Path) -> list[int]:
    data = (out / "redis").resolve()
    return pids_where(lambda pid, argv: "redis-server" in argv[0] and working_dir(pid) == data)


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.5)

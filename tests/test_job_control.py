"""One `relayrl train` job taken through every way a run ends short, each leg resumed from the
last: SIGTERM (exit 130, none of its processes left), a fresh start into its folder (refused),
`relayrl stop` (checkpoints the step it ends on, exits 0), `relayrl stop --now` (exit 130), a
SIGKILLed driver (Redis and every Ray process go with it); then a last resume finishes with
one record per step, the optimizer and the learning-rate schedule carried through every
resume, the audit clean, and status read live through Ray and from the folder once ended.
A job start costs far more than the checks on it, so the legs share one run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.chaos import job_processes
from relayrl.cluster.audit import audit_run
from relayrl.cluster.session_guard import SESSION_RECORD, session_processes
from relayrl.cluster.stray_processes import is_running, pids_where, working_dir
from relayrl.learner.checkpoint import committed_step, latest_checkpoint, read_ledger
from relayrl.metrics import read_metrics
from tests.job_harness import descendants, job_args, start, wait_for_steps

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NAME = "lifecycle"
LR = 1e-3
# Longer than the whole run: every step's learning rate is one warm-up rise above the last.
WARMUP = 100


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayrl.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def status(target: Path) -> dict[str, Any]:
    shown = cli("status", str(target), "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (so a reused pid is not taken for it); None once it
    is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def program(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def still_running(started: dict[int, str], timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid, born in started.items() if start_time(pid) == born]
        if not alive or time.monotonic() > deadline:
            return [f"{pid} {program(pid)}" for pid in alive]
        time.sleep(0.2)


def redis_servers(out: Path) -> list[int]:
    data = (out / "redis").resolve()
    return pids_where(lambda pid, argv: "redis-server" in argv[0] and working_dir(pid) == data)


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.5)


def optimizer_steps(deepspeed_dir: Path) -> set[int]:
    """Every `step` count the checkpoint's optimizer state holds (Adam counts its updates)."""
    found: set[int] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "step" and isinstance(item, int | float | torch.Tensor):
                    found.add(int(item))
                else:
                    walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for path in deepspeed_dir.rglob("*optim*.pt"):
        walk(torch.load(path, map_location="cpu", weights_only=False))
    if not found:
        for path in deepspeed_dir.rglob("*.pt"):
            state = torch.load(path, map_location="cpu", weights_only=False)
            walk(state.get("optimizer") if isinstance(state, dict) else None)
    return found


def assert_live_status(out: Path) -> None:
    live = status(out)
    assert live["live"] and live["state"] == "running", live
    assert live["job"] == NAME and live["step"] >= 1 and live["total"] == 100000
    assert [w["state"] for w in live["workers"]] == ["running", "running"], live
    assert all(w["restarts"] == 0 and w["engine_version"] >= 0 for w in live["workers"])
    assert set(live["buffer"]) == {"queue_depth", "pending", "dead_letters"}
    # A step's window may see no new tokens: admission can have filled the bound already.
    assert live["tokens_per_s"]["generated"] >= 0 and live["tokens_per_s"]["trained"] > 0
    assert 0 <= live["idle_fraction"]["learner"] <= 1 and live["staleness"]["max"] <= 1
    assert live["errors"] == [] and live["desired_workers"] == 2


def sigterm_exits_130_and_leaves_no_process(args: list[str], out: Path, log: Path) -> int:
    proc = start(args, log)
    try:
        wait_for_steps(proc, out, 2)
        assert_live_status(out)
        # Everything the job started: Ray's processes, its workers, the embedded Redis.
        started = {pid: born for pid in descendants(proc.pid) if (born := start_time(pid))}
        programs = {program(pid) for pid in started}
        assert any("redis-server" in p for p in programs), programs
        assert any("raylet" in p or "gcs_server" in p for p in programs), programs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert still_running(started) == []
    stopped_at = len(read_metrics(out / "metrics.jsonl"))
    assert stopped_at >= 2
    return stopped_at


def a_fresh_start_is_refused(args: list[str], out: Path) -> None:
    """A fresh start into a stopped run's folder would mix two runs: refused before it trains."""
    before = len(read_metrics(out / "metrics.jsonl"))
    # One step: were it let in, it would end at once instead of training on to the timeout.
    fresh = [*args, "--set", "trainer.steps=1"]
    refused = subprocess.run(fresh, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "holds a previous run" in refused.stderr
    assert len(read_metrics(out / "metrics.jsonl")) == before


def stop_checkpoints_the_step_it_ends_on(args: list[str], out: Path, log: Path) -> int:
    resumed_from = committed_step(out / "checkpoints")
    # No periodic checkpoint in this leg: the one the stop writes is the only new one.
    proc = start([*args, "--resume", "--set", "trainer.checkpoint_every=0"], log)
    try:
        wait_for_steps(proc, out, resumed_from + 2)
        stopped = cli("stop", str(out))
        assert stopped.returncode == 0, stopped.stderr
        assert f"{NAME}: stopped at step" in stopped.stdout
        assert proc.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    last = read_metrics(out / "metrics.jsonl")[-1]["step"]
    assert last > resumed_from
    assert f"stopped on request after step {last}" in log.read_text()
    # The stop checkpointed the step it ended on, and acknowledged what that step trained.
    assert committed_step(out / "checkpoints") == last
    ended = status(out)
    assert not ended["live"] and ended["state"] == "stopped" and ended["step"] == last, ended
    assert ended["ledger"]["steps"] == last and ended["checkpoint"].endswith(f"step-{last:06d}")
    return last


def stop_now_exits_130(args: list[str], out: Path, log: Path) -> None:
    proc = start([*args, "--resume"], log)
    try:
        wait_for_steps(proc, out, committed_step(out / "checkpoints") + 2)
        stopped = cli("stop", str(out), "--now")
        assert stopped.returncode == 0, stopped.stderr
        assert f"{NAME}: interrupted at step" in stopped.stdout
        assert proc.wait(300) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped (relayrl stop --now)" in log.read_text()
    assert status(out)["state"] == "interrupted"


def a_killed_driver_leaves_no_process(args: list[str], out: Path, log: Path) -> None:
    driver = start([*args, "--resume"], log)
    try:
        wait_for_steps(driver, out, committed_step(out / "checkpoints") + 2)
        session_dir = json.loads((out / SESSION_RECORD).read_text())["session_dir"]
        job = job_processes(driver.pid, "")
        assert session_processes(session_dir) and redis_servers(out)
    finally:
        driver.kill()
        driver.wait()
    # Redis (parent-death signal) and every Ray process (the session guard) go with it.
    wait_for(lambda: not [pid for pid in job if is_running(pid)], 60)
    assert not redis_servers(out) and not session_processes(session_dir)


def test_a_job_stopped_every_way_resumes_each_time_and_finishes(tiny_model_path, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(f"name: {NAME}\n")
    extra = [
        f"name={NAME}",
        f"learner.lr={LR}",
        f"learner.warmup_steps={WARMUP}",
        "output.plot=false",
    ]
    # Far more steps than any leg waits for: each leg ends the job itself.
    args = job_args(tiny_model_path, out, steps=100000, extra=extra)
    args[args.index("-")] = str(config)

    sigterm_exits_130_and_leaves_no_process(args, out, tmp_path / "sigterm.log")
    a_fresh_start_is_refused(args, out)
    stop_checkpoints_the_step_it_ends_on(args, out, tmp_path / "stop.log")
    stop_now_exits_130(args, out, tmp_path / "stop-now.log")
    # One record per step: none lost to a stop signal, none doubled by a resume.
    signalled = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert signalled == list(range(1, len(signalled) + 1))
    a_killed_driver_leaves_no_process(args, out, tmp_path / "killed.log")
    killed_at = committed_step(out / "checkpoints")

    steps = killed_at + 1
    resumed = cli("train", str(config), *args[5:], "--resume", "--set", f"trainer.steps={steps}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    found = [r["step"] for r in records]
    # The record is written before the commit, so even a SIGKILL between them loses none.
    assert found[: len(signalled)] == signalled and found == list(range(1, steps + 1)), found
    assert [r["step"] for r in read_ledger(out / "checkpoints")] == list(range(1, steps + 1))
    # The warm-up goes on from each restored step: a scheduler rebuilt at resume would start
    # over at its first value.
    lrs = [r["lr"] for r in records]
    assert lrs == pytest.approx([LR * step / WARMUP for step in found]), lrs
    assert lrs[-1] < LR
    # Adam's moment estimates came back with their update count.
    last = latest_checkpoint(out / "checkpoints")
    assert last is not None
    assert optimizer_steps(last / "deepspeed") == {steps}
    audit = cli("audit", str(out))
    assert audit.returncode == 0, audit.stdout
    report = audit_run(out)
    assert report.ok, report.lines()
    assert report.trained > 0
    finished = status(out)
    assert finished["state"] == "finished" and finished["step"] == steps, finished
    assert "ray_address" not in {p.name for p in out.iterdir()}
    assert not redis_servers(out)
    assert not (out / SESSION_RECORD).exists()
    assert not pids_where(lambda _pid, argv: any(str(out) in arg for arg in argv))


def test_stop_without_a_running_job_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("name: gone\n")
    result = cli("stop", str(tmp_path))
    assert result.returncode == 2 and "no running job" in result.stderr
    shown = status(tmp_path)
    assert shown["state"] == "not started" and not shown["live"]

"""`relayrl status` and `relayrl stop` against a real `relayrl train` job: status live through
Ray while it runs, a graceful stop that checkpoints the step it ends on and exits 0, a resume
from there, the audit clean, and status read from the output folder once it ended."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relayrl.learner.checkpoint import committed_step, read_ledger
from relayrl.metrics import read_metrics
from tests.job_harness import job_args, start, wait_for_steps

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


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


def test_stop_gracefully_then_resume(tiny_model_path: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text("name: stopper\n")
    # Far more steps than the test waits for, and no periodic checkpoint: the one the stop
    # writes is the only one there is.
    args = job_args(
        tiny_model_path,
        out,
        steps=100000,
        extra=["name=stopper", "trainer.checkpoint_every=0", "output.plot=false"],
    )
    args[args.index("-")] = str(config)
    log = tmp_path / "job.log"
    proc = start(args, log)
    try:
        wait_for_steps(proc, out, 2)
        live = status(out)
        assert live["live"] and live["state"] == "running", live
        assert live["job"] == "stopper" and live["step"] >= 1 and live["total"] == 100000
        assert [w["state"] for w in live["workers"]] == ["running", "running"], live
        assert all(w["restarts"] == 0 and w["engine_version"] >= 0 for w in live["workers"])
        assert set(live["buffer"]) == {"queue_depth", "pending", "dead_letters"}
        # A step's window may see no new tokens: admission can have filled the bound already.
        assert live["tokens_per_s"]["generated"] >= 0 and live["tokens_per_s"]["trained"] > 0
        assert 0 <= live["idle_fraction"]["learner"] <= 1 and live["staleness"]["max"] <= 1
        assert live["errors"] == [] and live["desired_workers"] == 2

        stopped = cli("stop", str(out))
        assert stopped.returncode == 0, stopped.stderr
        assert "stopper: stopped at step" in stopped.stdout
        assert proc.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    last = read_metrics(out / "metrics.jsonl")[-1]["step"]
    assert f"stopped on request after step {last}" in log.read_text()
    # The stop checkpointed the step it ended on, and acknowledged what that step trained.
    assert committed_step(out / "checkpoints") == last
    ended = status(out)
    assert not ended["live"] and ended["state"] == "stopped" and ended["step"] == last, ended
    assert ended["ledger"]["steps"] == last and ended["checkpoint"].endswith(f"step-{last:06d}")

    resumed = cli("train", str(config), *args[5:], "--resume", "--set", f"trainer.steps={last + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, last + 2))
    assert len(read_ledger(out / "checkpoints")) == last + 1
    audit = cli("audit", str(out))
    assert audit.returncode == 0, audit.stdout
    finished = status(out)
    assert finished["state"] == "finished" and finished["step"] == last + 1, finished
    assert "ray_address" not in {p.name for p in out.iterdir()}


def test_stop_now_interrupts_and_a_resume_continues(tiny_model_path: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text("name: halted\n")
    extra = ["name=halted", "trainer.checkpoint_every=1", "output.plot=false"]
    args = job_args(tiny_model_path, out, steps=100000, extra=extra)
    args[args.index("-")] = str(config)
    log = tmp_path / "job.log"
    proc = start(args, log)
    try:
        wait_for_steps(proc, out, 2)
        stopped = cli("stop", str(out), "--now")
        assert stopped.returncode == 0, stopped.stderr
        assert "halted: interrupted at step" in stopped.stdout
        assert proc.wait(300) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped (relayrl stop --now)" in log.read_text()
    assert status(out)["state"] == "interrupted"
    committed = committed_step(out / "checkpoints")
    resumed = cli(
        "train", str(config), *args[5:], "--resume", "--set", f"trainer.steps={committed + 1}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert cli("audit", str(out)).returncode == 0


def test_stop_without_a_running_job_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("name: gone\n")
    result = cli("stop", str(tmp_path))
    assert result.returncode == 2 and "no running job" in result.stderr
    shown = status(tmp_path)
    assert shown["state"] == "not started" and not shown["live"]

"""SIGTERM stops a job cleanly (exit 130) and leaves none of the processes it started; a
fresh start into its folder is refused; `--resume` continues the optimizer and the
learning-rate schedule where they stopped."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from relayrl.learner.checkpoint import latest_checkpoint, read_ledger
from relayrl.metrics import read_metrics
from tests.job_harness import descendants, job_args, start, wait_for_steps

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 10
WARMUP = 16
LR = 1e-3


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


def test_sigterm_exits_130_cleanly_then_resume_continues_optimizer_and_schedule(
    tiny_model_path, tmp_path
) -> None:
    out = tmp_path / "run"
    log = tmp_path / "job.log"
    config = tmp_path / "job.yaml"
    config.write_text("name: stopping\n")
    extra = [f"learner.lr={LR}", f"learner.warmup_steps={WARMUP}"]
    args = job_args(tiny_model_path, out, steps=STEPS, extra=extra)
    args[args.index("-")] = str(config)
    first = start(args, log)
    try:
        wait_for_steps(first, out, 2)
        # Everything the job started: Ray's processes, its workers, the embedded Redis.
        started = {pid: born for pid in descendants(first.pid) if (born := start_time(pid))}
        programs = {program(pid) for pid in started}
        assert any("redis-server" in p for p in programs), programs
        assert any("raylet" in p or "gcs_server" in p for p in programs), programs
        first.send_signal(signal.SIGTERM)
        assert first.wait(300) == 130, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert still_running(started) == []
    stopped_at = len(read_metrics(out / "metrics.jsonl"))
    assert 2 <= stopped_at < STEPS

    # A fresh start into the stopped run's folder would mix two runs: refused before it trains.
    refused = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "holds a previous run" in refused.stderr
    assert len(read_metrics(out / "metrics.jsonl")) == stopped_at

    resumed = start([*args, "--resume"], log)
    assert resumed.wait(600) == 0, log.read_text()[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    ledger = read_ledger(out / "checkpoints")
    assert [r["step"] for r in ledger] == list(range(1, STEPS + 1))
    # One record per step: none lost to the stop, none doubled by the resume.
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    by_step = {r["step"]: r for r in records}
    # The warm-up goes on from the restored step: a scheduler rebuilt at resume would start
    # over at its first value.
    lrs = [by_step[step]["lr"] for step in range(1, STEPS + 1)]
    assert lrs[-1] < LR
    rises = [later - earlier for earlier, later in itertools.pairwise(lrs)]
    assert rises == pytest.approx([LR / WARMUP] * (STEPS - 1)), lrs
    # Adam's moment estimates came back with their update count.
    last = latest_checkpoint(out / "checkpoints")
    assert last is not None
    assert optimizer_steps(last / "deepspeed") == {STEPS}

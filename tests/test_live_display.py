"""Per-worker figures and the terminal panel, from worker reports and step records shaped
exactly as the job writes them."""

from __future__ import annotations

import io
import logging

from relayrl.cluster.live_display import MAX_WORKER_LINES, LiveDisplay, panel, status_line
from relayrl.cluster.worker_metrics import WorkerMeter, per_worker

STEP = {
    "step": 3,
    "reward/mean": 0.25,
    "reward/std": 0.1,
    "reward/digits": 0.25,
    "eval/accuracy": 0.5,
    "response/length_mean": 8.0,
    "loss/total": 0.01,
    "staleness/max": 1,
    "staleness/mean": 0.5,
    "time/wait_batch_s": 1.5,
    "time/train_s": 0.5,
    "time/step_s": 2.0,
    "rollout/workers": 2,
    "pipeline/rollout_tokens_per_s": 120.0,
    "pipeline/rollout_trajectories_per_s": 4.0,
}


def report(worker: str, trajectories: int, tokens: int, idle_s: float) -> dict:
    return {
        "worker_id": worker,
        "trajectories": trajectories,
        "sampled_tokens": tokens,
        "idle_s": idle_s,
        "weight_syncs": 1,
        "rss_gb": 0.5,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_worker_meter_rates_are_per_step_and_forget_departed_workers():
    clock = Clock()
    meter = WorkerMeter(clock)
    clock.now = 2.0
    first = meter.step([report("w0", 4, 40, 0.5), report("w1", 2, 20, 1.0)])
    assert first["worker/w0/trajectories_per_s"] == 2.0
    assert first["worker/w1/tokens_per_s"] == 10.0
    assert first["worker/w1/idle_fraction"] == 0.5
    assert first["pipeline/rollout_trajectories_per_s"] == 3.0
    clock.now = 4.0
    second = meter.step([report("w0", 8, 60, 0.5)])
    assert second["worker/w0/trajectories_per_s"] == 2.0
    assert second["worker/w0/idle_fraction"] == 0.0
    assert "worker/w1/tokens_per_s" not in second
    assert per_worker(second) == {
        "w0": {
            "tokens_per_s": 10.0,
            "trajectories_per_s": 2.0,
            "idle_fraction": 0.0,
            "weight_syncs": 1,
            "rss_gb": 0.5,
        }
    }


def test_status_line_carries_reward_eval_throughput_staleness_and_workers():
    line = status_line(STEP, 10)
    for part in (
        "step 3/10",
        "reward=0.250",
        "digits=0.250",
        "accuracy=0.500",
        "stale<=1",
        "workers=2",
        "gen=120tok/s",
        "traj=4.0/s",
    ):
        assert part in line, part


def test_panel_lists_workers_up_to_a_limit():
    many = dict(STEP)
    for i in range(MAX_WORKER_LINES + 3):
        many[f"worker/worker-{i}/tokens_per_s"] = 10.0
    lines = panel(many, 10, 0, 60.0, "job")
    assert lines[0].startswith("job  step 3/10 [") and "30%" in lines[0]
    assert any(line.strip().startswith("eval") and "accuracy=0.500" in line for line in lines)
    assert sum("tok/s" in line and "worker-" in line for line in lines) == MAX_WORKER_LINES
    assert lines[-1].strip() == "... and 3 more workers"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_tty_the_panel_is_redrawn_in_place():
    terminal = Terminal()
    display = LiveDisplay("job", total=10, start=0, stream=terminal, clock=Clock())
    display.update(STEP)
    drawn = terminal.getvalue()
    assert "\x1b[" not in drawn
    display.update({**STEP, "step": 4})
    redraw = terminal.getvalue()[len(drawn) :]
    assert redraw.startswith(f"\x1b[{drawn.count(chr(10))}F\x1b[J")
    assert "step 4/10" in redraw


def test_off_a_tty_each_step_is_one_log_line(caplog):
    display = LiveDisplay("job", total=10, start=0, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="relayrl.cluster.live_display"):
        display.update(STEP)
        display.update({**STEP, "step": 4})
    assert [r.getMessage().split(" reward")[0] for r in caplog.records] == [
        "step 3/10",
        "step 4/10",
    ]

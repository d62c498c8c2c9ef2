"""What an operator sees of a real run: a status line per step off a terminal, per-worker
figures, Prometheus series served by Ray's metrics agent while the job runs, and the HTML
report at the end, all from the job's own metrics.jsonl (the session's observed_run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from relayrl.cluster.live_display import status_line
from relayrl.metrics import read_metrics
from tests.observed_run import NAME, STEPS, WORKERS, ObservedRun

pytestmark = pytest.mark.slow


def test_each_step_has_a_status_line_and_per_worker_figures(observed_run: ObservedRun):
    result = observed_run.result
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        line = status_line(record, STEPS)
        assert line.startswith(f"step {record['step']}/{STEPS} reward=")
        assert f"workers={WORKERS}" in line and "traj=" in line and "stale<=" in line
        assert record["buffer/backlog"] >= 0
    last = records[-1]
    workers = {key.split("/")[1] for key in last if key.startswith("worker/")}
    assert workers == {"worker-0", "worker-1"}
    for worker in workers:
        assert 0.0 <= last[f"worker/{worker}/idle_fraction"] <= 1.0
    total = sum(r["pipeline/rollout_trajectories_per_s"] * r["time/step_s"] for r in records)
    assert total > 0


def test_the_run_report_draws_every_figure(observed_run: ObservedRun):
    result = observed_run.result
    assert result.report == result.output_dir / "report.html"
    page = result.report.read_text()
    titles = re.findall(r"<h2>([^<]+)</h2>", page)
    assert titles == [
        "Reward",
        "Throughput",
        "Trajectories generated",
        "Staleness of trained tokens",
        "Idle fractions",
        "Rollout workers",
    ]
    assert page.count('src="data:image/png;base64,') == len(titles)
    assert f"<tr><th>steps</th><td>{STEPS}</td></tr>" in page


def test_prometheus_serves_the_jobs_series(observed_run: ObservedRun):
    text = observed_run.prometheus
    steps = rf'ray_relayrl_steps_total\{{[^}}]*job="{NAME}"[^}}]*\}} {STEPS}'
    assert re.search(steps, text), text[:2000]
    assert re.search(rf'ray_relayrl_rollout_workers\{{[^}}]*job="{NAME}"[^}}]*\}} {WORKERS}', text)
    assert re.search(r'ray_relayrl_worker_tokens_per_s\{[^}]*worker="worker-1"', text)


def test_a_report_from_a_records_file_with_no_steps(tmp_path: Path):
    from relayrl.report import write_report

    empty = tmp_path / "metrics.jsonl"
    empty.write_text("")
    page = write_report(empty, tmp_path / "report.html", "empty").read_text()
    assert "No learner step was recorded." in page


def test_eval_rounds_are_charted_as_points_and_summed_up(tmp_path: Path):
    from relayrl.report import write_report

    base = {"reward/mean": 0.5, "time/step_s": 1.0}
    records = [
        {"step": 1, **base},
        {"step": 2, **base, "eval/accuracy": 0.25, "eval/step": 1, "eval/policy_version": 1},
        {"step": 3, **base},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    page = write_report(path, tmp_path / "report.html", "evaluated").read_text()
    assert re.findall(r"<h2>([^<]+)</h2>", page) == ["Reward", "Evaluation"]
    assert "<tr><th>eval/accuracy</th><td>0.2500</td></tr>" in page
    assert "eval/step</th>" not in page

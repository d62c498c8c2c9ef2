"""What an operator sees of a real run: a status line per step off a terminal, per-worker
figures, Prometheus series served by Ray's metrics agent while the job runs, and the HTML
report at the end, all from the job's own metrics.jsonl."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import ray

from relayrl.cluster.job import run_job
from relayrl.cluster.live_display import status_line
from relayrl.cluster.training_loop import LoopHooks, StepReport
from relayrl.config_loader import load_config
from relayrl.metrics import read_metrics

pytestmark = pytest.mark.slow

STEPS = 3
# Ray's agent exports what the driver recorded every few seconds; a scrape waits this long.
SCRAPE_WAIT_S = 120.0


class LastStepScrape:
    """On the last step, read Ray's Prometheus endpoint until the job's series show."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, report: StepReport) -> None:
        if report.step != report.total:
            return
        port = ray._private.worker.global_worker.node.metrics_export_port
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                self.text = page.read().decode()
            if "relayrl_steps" in self.text and "relayrl_worker_tokens_per_s" in self.text:
                return
            time.sleep(2.0)


@pytest.fixture(scope="module")
def run(tiny_model_path, tmp_path_factory):
    from relayrl.cluster.embedded_redis import EmbeddedRedis

    out = tmp_path_factory.mktemp("observed")
    server = EmbeddedRedis(out / "redis").start()
    scrape = LastStepScrape()
    try:
        config = load_config(
            None,
            [
                "name=observed",
                f"model.path={tiny_model_path}",
                "rollout.num_workers=2",
                "rollout.group_size=2",
                "rollout.sampling.max_new_tokens=8",
                "env.name=tests.plugin_envs:DIGITS",
                "learner.micro_batch_tokens=128",
                f"trainer.steps={STEPS}",
                "trainer.prompts_per_step=2",
                "trainer.max_staleness=1",
                "output.tensorboard=false",
                f"buffer.url={server.url}",
                f"output.dir={out}/run",
            ],
        )
        result = run_job(config, hooks=LoopHooks(on_step=[scrape]))
    finally:
        server.stop()
    return result, scrape.text


def test_each_step_has_a_status_line_and_per_worker_figures(run):
    result, _ = run
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        line = status_line(record, STEPS)
        assert line.startswith(f"step {record['step']}/{STEPS} reward=")
        assert "workers=2" in line and "traj=" in line and "stale<=" in line
        assert record["buffer/backlog"] >= 0
    last = records[-1]
    workers = {key.split("/")[1] for key in last if key.startswith("worker/")}
    assert workers == {"worker-0", "worker-1"}
    for worker in workers:
        assert 0.0 <= last[f"worker/{worker}/idle_fraction"] <= 1.0
    total = sum(r["pipeline/rollout_trajectories_per_s"] * r["time/step_s"] for r in records)
    assert total > 0


def test_the_run_report_draws_every_figure(run):
    result, _ = run
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


def test_prometheus_serves_the_jobs_series(run):
    _, text = run
    assert re.search(r'ray_relayrl_steps_total\{[^}]*job="observed"[^}]*\} 3', text), text[:2000]
    assert re.search(r'ray_relayrl_rollout_workers\{[^}]*job="observed"[^}]*\} 2', text)
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

"""Held-out evaluation inside a real job (Ray, Redis, DeepSpeed, the tiny model) on the
dataset env's eval split: rounds every N steps and at the end on the rollout workers, eval/*
records in metrics.jsonl and TensorBoard, reports on disk, nothing of it in the buffer, and
the final round equal to `relayrl eval` of the final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from relayrl.actors.eval_setup import eval_plan, evaluate_model, held_out_items
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.metrics import read_metrics
from relayrl.trajectory import decode
from tests.job_harness import job_on_own_redis

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "math_word_problems.jsonl"
STEPS = 4


@pytest.fixture(scope="module")
def finished_job(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from job_on_own_redis(
        tmp_path_factory.mktemp("eval-job"),
        [
            "name=eval-job",
            f"model.path={tiny_model_path}",
            "rollout.num_workers=2",
            "rollout.group_size=2",
            "rollout.sampling.max_new_tokens=8",
            "buffer.trim_acknowledged=false",
            "env.name=dataset",
            f"env.params.path={DATA}",
            "env.params.columns.id=id",
            "env.params.eval_size=6",
            "learner.micro_batch_tokens=256",
            f"trainer.steps={STEPS}",
            "trainer.prompts_per_step=2",
            "eval.every=2",
            "eval.env_params.split=eval",
            "eval.num_tasks=5",
            "eval.samples=2",
        ],
    )


def test_rounds_every_n_steps_and_at_the_end_reach_metrics_and_tensorboard(finished_job) -> None:
    _, result, _ = finished_job
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    evals = [r for r in records if "eval/accuracy" in r]
    # A round joins the first record that finds it back; the last step waits for its own.
    assert {r["eval/step"] for r in evals} <= {2, 4} and all(
        r["eval/step"] <= r["step"] for r in evals
    )
    final = records[-1]
    assert final["eval/step"] == STEPS and final["eval/policy_version"] == STEPS
    for record in evals:
        assert record["eval/tasks"] == 5
        assert record["eval/greedy/episodes"] == 5 and record["eval/sampled/episodes"] == 10
        assert 0 <= record["eval/sampled/pass@2"] <= 1
        assert "eval/greedy/reward/correct" in record and "eval/sampled/tool_call_rate" in record
        # The newest policy when the round started: the one its step published, or later.
        assert record["eval/policy_version"] >= record["eval/step"]
    for step in (2, 4):
        report = json.loads((result.output_dir / "eval" / f"step_{step:06d}.json").read_text())
        assert len(report["tasks"]) == 5 and report["metrics"]["eval/tasks"] == 5
    events = EventAccumulator(str(result.output_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/accuracy")] == [r["step"] for r in evals]
    assert result.plot is not None and result.plot.stat().st_size > 10_000


def test_evaluation_never_reaches_the_buffer(finished_job) -> None:
    config, result, client = finished_job
    held_out = {item.task.id for item in held_out_items(config, eval_plan(config))}
    trained = [decode(f[PAYLOAD_FIELD]).task["id"] for _, f in client.xrange(config.stream_name)]
    assert trained and not held_out & set(trained)
    # The workers' counters hold only their training groups: one stream entry each.
    assert sum(r["trajectories"] for r in result.worker_reports) == len(trained)


def test_the_final_round_equals_relayrl_eval_of_the_final_checkpoint(finished_job) -> None:
    config, result, _ = finished_job
    in_job = json.loads((result.output_dir / "eval" / f"step_{STEPS:06d}.json").read_text())
    offline = evaluate_model(config, str(result.checkpoint), "final")
    assert offline["metrics"] == {**in_job["metrics"], "eval/policy_version": 0.0}
    assert read_metrics(result.metrics)[-1]["eval/accuracy"] == in_job["metrics"]["eval/accuracy"]
    transcripts = [
        [(e["mode"], e["sample"], e["transcript"]) for e in task["episodes"]]
        for task in in_job["tasks"]
    ]
    assert transcripts == [
        [(e["mode"], e["sample"], e["transcript"]) for e in task["episodes"]]
        for task in offline["tasks"]
    ]

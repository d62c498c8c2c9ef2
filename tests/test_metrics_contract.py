"""The metrics the README promises, read from a real short run (the session's observed_run):
each key is there, in its range, and agrees with what the stream and the ledger say the step
trained; TensorBoard holds the same figures under the same tags."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from relayrl.learner.checkpoint import read_ledger
from relayrl.metrics import read_metrics
from tests.job_harness import assert_nothing_discarded, stored_trajectories
from tests.observed_run import CAP, GROUP, PROMPTS, STEPS, WORKERS, ObservedRun

pytestmark = pytest.mark.slow

# Every key the README names for a CPU run with this algorithm (weights/push_* are GPU only).
PROMISED = {
    "step",
    "version",
    "lr",
    "grad_norm",
    "reward/mean",
    "reward/std",
    "reward/digits",
    "loss/total",
    "loss/clip_fraction",
    "loss/kl",
    "loss/entropy",
    "staleness/max",
    "staleness/mean",
    "discarded/total",
    "filter/dropped_trajectories",
    "off_policy/is_weight_mean",
    "off_policy/is_weight_max",
    "off_policy/is_weight_min",
    "off_policy/truncated_fraction",
    "pipeline/rollout_tokens_per_s",
    "pipeline/learner_tokens_per_s",
    "pipeline/worker_idle_fraction",
    "pipeline/learner_idle_fraction",
    "buffer/queue_depth",
    "buffer/pending",
    "buffer/dead_letters",
    "rollout/workers",
    "rollout/restarts",
    "rollout/in_flight",
    "episode/turns_mean",
    "episode/masked_fraction",
    "episode/errors",
    "batch/trajectories",
    "batch/sampled_tokens",
    "batch/total_tokens",
    "batch/min_token_version",
    "memory/learner_rss_gb",
    "memory/learner_peak_rss_gb",
    "memory/learner_pss_gb",
    "memory/worker_rss_gb",
    "memory/worker_peak_rss_gb",
    "memory/workers_pss_gb",
    "time/wait_batch_s",
    "time/train_s",
    "time/publish_s",
    "time/step_s",
}
FRACTIONS = {
    "loss/clip_fraction",
    "off_policy/truncated_fraction",
    "pipeline/worker_idle_fraction",
    "pipeline/learner_idle_fraction",
    "episode/masked_fraction",
    "reward/mean",
    "reward/digits",
}


def test_every_promised_key_is_there_and_in_range(observed_run: ObservedRun) -> None:
    result = observed_run.result
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        missing = PROMISED - record.keys()
        assert not missing, (record["step"], sorted(missing))
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float)}
        assert all(math.isfinite(v) for v in numbers.values()), record
        for key in FRACTIONS:
            assert 0.0 <= record[key] <= 1.0, (key, record[key])
        assert record["version"] == record["step"]
        assert 0 < record["lr"] <= 1e-5 + 1e-12  # the default lr, no warm-up
        assert record["grad_norm"] > 0
        assert record["reward/std"] >= 0
        assert record["loss/kl"] >= 0 and record["loss/entropy"] > 0
        assert 0 <= record["staleness/mean"] <= record["staleness/max"] <= 1
        low, high = record["off_policy/is_weight_min"], record["off_policy/is_weight_max"]
        assert 0 < low <= record["off_policy/is_weight_mean"] <= high
        # The statistics are of the raw weights; only tokens above the cap were truncated.
        assert (record["off_policy/truncated_fraction"] > 0) == (high > CAP), record
        assert record["pipeline/rollout_tokens_per_s"] > 0
        assert record["pipeline/learner_tokens_per_s"] > 0
        assert record["rollout/workers"] == WORKERS and record["rollout/restarts"] == 0
        assert 0 <= record["rollout/in_flight"] <= (1 + 1) * PROMPTS * GROUP
        assert record["buffer/queue_depth"] >= 0 and record["buffer/pending"] >= 0
        assert record["buffer/dead_letters"] == 0
        assert record["episode/errors"] == 0 and record["episode/turns_mean"] == 1
        ends = sum(v for k, v in record.items() if k.startswith("episode/end_"))
        assert ends == pytest.approx(1.0)
        assert record["filter/dropped_trajectories"] == 0
        for side in ("learner", "worker"):
            rss = record[f"memory/{side}_rss_gb"]
            assert 0.05 < rss <= record[f"memory/{side}_peak_rss_gb"] < 64
        assert 0.05 < record["memory/workers_pss_gb"] < 64
        for key in ("time/wait_batch_s", "time/train_s", "time/publish_s"):
            assert 0 <= record[key] <= record["time/step_s"]
    assert_nothing_discarded(records)


def test_batch_figures_match_what_the_ledger_says_each_step_trained(
    observed_run: ObservedRun,
) -> None:
    result = observed_run.result
    stream = observed_run.config.stream_name
    stored = {t.id: t for _, t in stored_trajectories(observed_run.client, stream)}
    ledger = read_ledger(result.output_dir / "checkpoints")
    for record, step in zip(read_metrics(result.metrics), ledger, strict=True):
        assert record["step"] == step["step"]
        batch = [stored[i] for i in step["trajectory_ids"]]
        assert record["batch/trajectories"] == len(batch) == PROMPTS * GROUP
        assert record["batch/sampled_tokens"] == sum(t.num_sampled_tokens for t in batch)
        assert record["batch/total_tokens"] == sum(len(t.tokens) for t in batch)
        rewards = np.array([t.reward for t in batch])
        assert record["reward/mean"] == pytest.approx(rewards.mean())
        assert record["reward/std"] == pytest.approx(rewards.std())
        versions = np.concatenate([t.sampled_versions() for t in batch])
        policy = record["step"] - 1
        assert record["batch/min_token_version"] == versions.min()
        assert record["staleness/max"] == policy - versions.min()
        assert record["staleness/mean"] == pytest.approx((policy - versions).mean())
        lags = Counter((policy - versions).tolist())
        hist = {k: v for k, v in record.items() if k.startswith("staleness/hist_")}
        assert hist == {f"staleness/hist_{lag}": n for lag, n in lags.items()}
        ends = Counter(str(t.finish_reason) for t in batch)
        for reason, n in ends.items():
            assert record[f"episode/end_{reason}"] == pytest.approx(n / len(batch))


def test_tensorboard_holds_every_numeric_metric_per_step(observed_run: ObservedRun) -> None:
    result = observed_run.result
    records = read_metrics(result.metrics)
    events = EventAccumulator(str(result.output_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    numeric = {
        k
        for record in records
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }
    assert set(events.Tags()["scalars"]) - {"step"} == numeric
    for key in ("reward/mean", "loss/total", "pipeline/rollout_tokens_per_s", "buffer/pending"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [r["step"] for r in records]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)

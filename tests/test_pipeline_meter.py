"""PipelineMeter: per-step throughput and idle fractions from cumulative worker reports."""

from __future__ import annotations

import pytest

from relayrl.cluster import pipeline_meter
from relayrl.cluster.pipeline_meter import PipelineMeter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(100.0)
    monkeypatch.setattr(pipeline_meter.time, "perf_counter", clock)
    return clock


def report(worker: str, tokens: float, idle: float, **memory: float) -> dict[str, float | str]:
    return {"worker_id": worker, "sampled_tokens": tokens, "idle_s": idle, **memory}


LEARNER = {"time/wait_batch_s": 1.0, "time/train_s": 3.0, "batch/total_tokens": 600}


def test_rates_and_idle_fractions_of_one_step(clock: Clock) -> None:
    meter = PipelineMeter()
    clock.now += 4.0
    figures = meter.step([report("a", 100, 1.0), report("b", 300, 3.0)], LEARNER)
    assert figures["pipeline/rollout_tokens_per_s"] == pytest.approx(400 / 4.0)
    assert figures["pipeline/learner_tokens_per_s"] == pytest.approx(600 / 3.0)
    # Two workers over four seconds: eight worker-seconds, four of them idle.
    assert figures["pipeline/worker_idle_fraction"] == pytest.approx(4.0 / 8.0)
    assert figures["pipeline/learner_idle_fraction"] == pytest.approx(1.0 / 4.0)


def test_later_steps_count_only_what_changed_since_the_last(clock: Clock) -> None:
    meter = PipelineMeter()
    clock.now += 2.0
    meter.step([report("a", 100, 0.5)], LEARNER)
    clock.now += 5.0
    # "a" reports running totals; "b" joined since the last step and counts from zero.
    figures = meter.step([report("a", 350, 1.5), report("b", 250, 4.0)], LEARNER)
    assert figures["pipeline/rollout_tokens_per_s"] == pytest.approx((250 + 250) / 5.0)
    assert figures["pipeline/worker_idle_fraction"] == pytest.approx((1.0 + 4.0) / 10.0)


def test_idle_fraction_is_capped_at_one(clock: Clock) -> None:
    meter = PipelineMeter()
    clock.now += 1.0
    figures = meter.step([report("a", 0, 7.0)], {})
    assert figures["pipeline/worker_idle_fraction"] == 1.0
    assert figures["pipeline/rollout_tokens_per_s"] == 0.0
    assert figures["pipeline/learner_idle_fraction"] == 0.0


def test_worker_memory_is_the_largest_rss_and_the_summed_pss(clock: Clock) -> None:
    meter = PipelineMeter()
    clock.now += 1.0
    reports = [
        report("a", 0, 0, rss_gb=1.5, peak_rss_gb=2.0, pss_gb=1.0),
        report("b", 0, 0, rss_gb=2.5, peak_rss_gb=2.25, pss_gb=0.75),
    ]
    figures = meter.step(reports, LEARNER)
    assert figures["memory/worker_rss_gb"] == 2.5
    assert figures["memory/worker_peak_rss_gb"] == 2.25
    assert figures["memory/workers_pss_gb"] == pytest.approx(1.75)


def test_no_memory_figures_when_no_worker_reports_them(clock: Clock) -> None:
    clock.now += 1.0
    figures = PipelineMeter().step([report("a", 10, 0)], LEARNER)
    assert not [key for key in figures if key.startswith("memory/")]

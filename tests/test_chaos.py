"""A short chaos soak: random SIGKILLs (driver, learner rank, rollout worker, Redis) and
network faults, each followed by `--resume`; the audit invariant holds, nothing stalls, and
no process of the job is left behind. (A SIGKILLed driver's processes, Redis and Ray session
checked one by one: tests/test_job_control.py.)"""

from __future__ import annotations

import pytest

from benchmarks.chaos import soak

pytestmark = pytest.mark.slow


def test_five_rounds_of_chaos_lose_duplicate_and_leave_nothing(tmp_path):
    result = soak(rounds=5, seed=1, out=tmp_path)
    assert result["rounds_survived"] == 5, result
    assert result["final_resume_finished"], result
    assert result["duplicates"] == 0, result
    assert result["unaccounted"] == 0, result
    assert result["stalls"] == 0, result
    assert result["orphaned_processes"] == 0, result
    assert result["trained"] > 0

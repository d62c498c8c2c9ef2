"""A whole job against a password-protected Redis whose password only the environment holds
(the session's observed_run): the learner and the rollout workers read it themselves, and it
reaches no file of the run."""

from __future__ import annotations

import pytest
import redis

from tests.observed_run import PASSWORD, PASSWORD_ENV, STEPS, ObservedRun

pytestmark = pytest.mark.slow


def test_job_reads_the_redis_password_from_the_environment_everywhere(
    observed_run: ObservedRun,
) -> None:
    config, result = observed_run.config, observed_run.result
    assert config.buffer.password_env == PASSWORD_ENV and PASSWORD not in config.buffer.url
    # The job's Redis takes no client that lacks the password.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(observed_run.bare_url).ping()
    assert result.steps == STEPS and result.checkpoint is not None
    # Workers pushed and the learner read through the same password-protected stream.
    assert len(result.metrics.read_text().splitlines()) == STEPS
    leaked = [
        str(path)
        for path in result.output_dir.rglob("*")
        if path.is_file() and PASSWORD.encode() in path.read_bytes()
    ]
    assert not leaked, leaked

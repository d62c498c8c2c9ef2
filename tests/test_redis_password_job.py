"""A whole job against a password-protected Redis whose password only the environment holds:
the learner and the rollout workers read it themselves, and it reaches no file of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.job import run_job
from relayrl.config_loader import load_config

pytestmark = pytest.mark.slow

SECRET = "only-in-the-environment-7f3a"


def test_job_reads_the_redis_password_from_the_environment_everywhere(
    tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYRL_TEST_REDIS_PASSWORD", SECRET)
    server = EmbeddedRedis(tmp_path / "redis", password=SECRET).start()
    try:
        config = load_config(
            None,
            [
                "name=secret-job",
                f"model.path={tiny_model_path}",
                f"buffer.url=redis://127.0.0.1:{server.port}/0",
                "buffer.password_env=RELAYRL_TEST_REDIS_PASSWORD",
                "env.name=tests.plugin_envs:DIGITS",
                "rollout.num_workers=1",
                "rollout.group_size=2",
                "rollout.sampling.max_new_tokens=8",
                "learner.micro_batch_tokens=64",
                "trainer.steps=2",
                "trainer.prompts_per_step=1",
                f"output.dir={tmp_path}/run",
            ],
        )
        result = run_job(config)
    finally:
        server.stop()
    assert result.steps == 2 and result.checkpoint is not None
    # Workers pushed and the learner read through the same password-protected stream.
    assert len(result.metrics.read_text().splitlines()) == 2
    leaked = [
        str(path)
        for path in (tmp_path / "run").rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert not leaked, leaked

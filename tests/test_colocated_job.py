"""The colocated placement end to end: one Ray actor holds the learner rank and an in-process
rollout worker generating with the learner's own module. Real Ray, Redis, DeepSpeed and the
transformers engine; a job of three steps, then a resume to a fourth; `relayrl scale` on it
is refused while it runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import redis
import torch
import yaml
from transformers import AutoModelForCausalLM

from relayrl import metric_keys as keys
from relayrl.cluster.audit import audit_stream
from relayrl.cluster.colocated_fleet import ColocatedFleet, ColocatedLearnerGroup
from relayrl.cluster.job import run_job
from relayrl.cluster.job_runtime import JobRuntime
from relayrl.cluster.training_loop import LoopHooks
from relayrl.config_loader import load_config
from relayrl.learner.checkpoint import step_dir
from relayrl.metrics import read_metrics
from tests.job_harness import stored_trajectories
from tests.reference_logprobs import completion_logprobs

pytestmark = pytest.mark.slow

FIRST_STEPS = 3
STEPS = 4
SHARES = "test/engine_shares_learner_parameters"


SCALED: list[subprocess.CompletedProcess[str]] = []


def _shares_parameters(step: int, runtime: JobRuntime) -> dict[str, Any]:
    assert isinstance(runtime.learner, ColocatedLearnerGroup)
    assert isinstance(runtime.fleet, ColocatedFleet)
    shares = ray.get(runtime.learner.actor.shares_parameters.remote())
    return {SHARES: float(shares)}


def _scale_once(step: int, runtime: JobRuntime) -> dict[str, Any]:
    """`relayrl scale` from another process, once, while the job runs (from the config.yaml
    it saved, which must name the placement it runs at)."""
    if not SCALED:
        command = ["scale", str(runtime.output_dir / "config.yaml"), "3"]
        SCALED.append(
            subprocess.run(
                [sys.executable, "-m", "relayrl.cli", *command],
                capture_output=True,
                text=True,
                timeout=300,
            )
        )
    return {}


@pytest.fixture(scope="module")
def colocated_job(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from relayrl.cluster.embedded_redis import EmbeddedRedis

    out = tmp_path_factory.mktemp("colocated")
    server = EmbeddedRedis(out / "redis").start()
    overrides = [
        "name=colocated",
        f"model.path={tiny_model_path}",
        "rollout.placement=colocated",
        "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=8",
        "env.name=tests.plugin_envs:DIGITS",
        "buffer.trim_acknowledged=false",
        f"buffer.url={server.url}",
        "learner.lr=1e-3",
        "learner.micro_batch_tokens=128",
        "trainer.prompts_per_step=2",
        # Generation runs ahead: the learner's step must wait for running rows.
        "trainer.max_staleness=1",
        "trainer.checkpoint_every=1",
        f"trainer.keep_checkpoints={STEPS}",
        f"output.dir={out}/run",
        "output.tensorboard=false",
        "output.plot=false",
    ]
    hooks = LoopHooks(step_metrics=[_shares_parameters, _scale_once])
    try:
        first = load_config(None, [*overrides, f"trainer.steps={FIRST_STEPS}"])
        run_job(first, hooks=hooks)
        config = load_config(None, [*overrides, f"trainer.steps={STEPS}"])
        result = run_job(config, resume=True, hooks=hooks)
        yield config, result, redis.Redis.from_url(server.url)
    finally:
        server.stop()


def test_colocated_job_trains_every_step_and_resumes(colocated_job) -> None:
    _, result, _ = colocated_job
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["version"] for r in records] == list(range(1, STEPS + 1))
    assert all(r[keys.ROLLOUT_WORKERS] == 1 for r in records)
    assert all(r[keys.TIME_ENGINE_DRAIN_S] >= 0 for r in records)


def test_engine_generates_with_the_learners_own_parameters(colocated_job) -> None:
    _, result, _ = colocated_job
    assert all(r[SHARES] == 1.0 for r in read_metrics(result.metrics))


def test_audit_is_clean(colocated_job) -> None:
    config, result, client = colocated_job
    report = audit_stream(client, config.stream_name, result.output_dir / "checkpoints")
    assert report.ok, report.lines()
    assert report.trained == STEPS * config.batch_size


def test_every_token_is_labelled_with_the_policy_that_sampled_it(
    colocated_job, tiny_model_path: str
) -> None:
    """Re-scoring each sample under the checkpoint of its label gives its behaviour
    log-probs; under the neighbouring version it does not."""
    config, result, client = colocated_job
    checkpoints = Path(result.output_dir) / "checkpoints"
    models: dict[int, torch.nn.Module] = {}

    def policy(version: int) -> torch.nn.Module:
        if version not in models:
            path = tiny_model_path if version == 0 else step_dir(checkpoints, version) / "hf"
            models[version] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return models[version]

    labelled = set()
    mismatched_elsewhere = 0
    for _, trajectory in stored_trajectories(client, config.stream_name):
        versions = set(trajectory.sampled_versions().tolist())
        assert len(versions) == 1, versions  # no sample runs across a learner step
        (version,) = versions
        labelled.add(version)
        prompt = trajectory.tokens[: trajectory.prompt_len].tolist()
        completion = trajectory.tokens[trajectory.prompt_len :].tolist()
        recorded = torch.tensor(trajectory.logprobs[trajectory.prompt_len :])
        rescored = completion_logprobs(policy(version), prompt, completion)
        torch.testing.assert_close(rescored, recorded, atol=1e-4, rtol=0)
        if version + 1 <= STEPS - 1:
            other = completion_logprobs(policy(version + 1), prompt, completion)
            mismatched_elsewhere += not torch.allclose(other, recorded, atol=1e-4, rtol=0)
    # At max_staleness 1 generation may run a version ahead, so one version can go unsampled.
    assert 0 in labelled and len(labelled) >= STEPS - 1 and labelled <= set(range(STEPS + 1))
    assert mismatched_elsewhere > 0


def test_scale_is_refused_by_the_running_colocated_job(colocated_job) -> None:
    _, result, _ = colocated_job
    (scaled,) = SCALED
    assert scaled.returncode == 2, scaled.stderr
    assert "cannot be scaled" in scaled.stderr and "rollout.placement: separate" in scaled.stderr
    assert (
        yaml.safe_load((result.output_dir / "config.yaml").read_text())["rollout"]["placement"]
        == "colocated"
    )

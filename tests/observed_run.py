"""One short real job whose outputs several test modules read: the metrics contract, what an
operator sees of a run (status lines, the report, Prometheus) and a Redis password that only
the environment holds. A job costs far more than the checks on its outputs, so the session
runs it once (the `observed_run` fixture in conftest.py)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
import redis

from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.job import JobResult, run_job
from relayrl.cluster.training_loop import LoopHooks, StepReport
from relayrl.config import JobConfig
from relayrl.config_loader import load_config

NAME = "observed"
STEPS = 3
WORKERS = 2
PROMPTS = 2
GROUP = 2
CAP = 2.0  # the truncated importance-sampling cap
PASSWORD = "only-in-the-environment-7f3a"
PASSWORD_ENV = "RELAYRL_TEST_REDIS_PASSWORD"
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


@dataclass(frozen=True)
class ObservedRun:
    config: JobConfig
    result: JobResult
    client: redis.Redis  # the job's Redis, kept up so tests can read the stream
    bare_url: str  # that Redis without its password
    prometheus: str  # Ray's Prometheus page as scraped on the last step


def run_observed_job(model_path: str, out: Path) -> Iterator[ObservedRun]:
    """Fixture body: the job against a password-protected Redis whose password only the
    environment holds (learner and workers read it themselves), with TensorBoard on and
    Prometheus scraped on the last step; stops Redis whatever happens."""
    server = EmbeddedRedis(out / "redis", password=PASSWORD).start()
    bare_url = f"redis://127.0.0.1:{server.port}/0"
    scrape = LastStepScrape()
    os.environ[PASSWORD_ENV] = PASSWORD
    try:
        config = load_config(
            None,
            [
                f"name={NAME}",
                f"model.path={model_path}",
                f"rollout.num_workers={WORKERS}",
                f"rollout.group_size={GROUP}",
                "rollout.sampling.max_new_tokens=8",
                "env.name=tests.plugin_envs:DIGITS",
                f"buffer.url={bare_url}",
                f"buffer.password_env={PASSWORD_ENV}",
                "buffer.trim_acknowledged=false",
                "learner.micro_batch_tokens=128",
                "learner.grad_clip=1.0",
                "learner.algorithm.kl.coef=0.01",
                "learner.algorithm.entropy.coef=0.001",
                "learner.algorithm.off_policy.importance_sampling.mode=truncate",
                f"learner.algorithm.off_policy.importance_sampling.cap={CAP}",
                f"trainer.steps={STEPS}",
                f"trainer.prompts_per_step={PROMPTS}",
                "trainer.max_staleness=1",
                "trainer.checkpoint_every=1",
                "output.tensorboard=true",
                f"output.dir={out}/run",
            ],
        )
        try:
            result = run_job(config, hooks=LoopHooks(on_step=[scrape]))
        finally:
            del os.environ[PASSWORD_ENV]
        client = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
        yield ObservedRun(config, result, client, bare_url, scrape.text)
    finally:
        server.stop()

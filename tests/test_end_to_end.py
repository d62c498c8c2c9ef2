"""The walking skeleton end to end: real Ray, real Redis, real DeepSpeed, a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl import metric_keys as keys
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.learner.checkpoint import read_ledger
from relayrl.metrics import read_metrics
from relayrl.trajectory import decode
from tests.job_harness import job_on_own_redis, unacknowledged

pytestmark = pytest.mark.slow

STEPS = 4


@pytest.fixture(scope="module")
def finished_job(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from job_on_own_redis(
        tmp_path_factory.mktemp("job"),
        [
            "name=e2e",
            f"model.path={tiny_model_path}",
            "rollout.num_workers=2",
            "rollout.group_size=4",
            "rollout.sampling.max_new_tokens=12",
            "buffer.trim_acknowledged=false",
            "env.name=tests.plugin_envs:DIGITS",
            "learner.lr=1e-3",
            "learner.micro_batch_tokens=128",
            f"trainer.steps={STEPS}",
            "trainer.prompts_per_step=2",
            "trainer.max_staleness=0",
            "trainer.checkpoint_every=2",
        ],
    )


def test_learner_took_every_step_and_wrote_metrics(finished_job) -> None:
    _, result, _ = finished_job
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["version"] for r in records] == list(range(1, STEPS + 1))
    assert all(r[keys.BATCH_TRAJECTORIES] == 8 for r in records)
    assert all(torch.isfinite(torch.tensor(r[keys.LOSS_TOTAL])) for r in records)
    assert result.plot is not None and result.plot.stat().st_size > 10_000
    assert any((result.output_dir / "tensorboard").iterdir())


def test_synchronous_steps_train_on_the_previous_version(finished_job) -> None:
    _, result, _ = finished_job
    for record in read_metrics(result.metrics):
        # max_staleness 0: every token of step s was sampled by policy version s - 1.
        assert record[keys.STALENESS_MAX] == 0
        assert record[keys.BATCH_MIN_TOKEN_VERSION] == record["step"] - 1
        # The intake's stale filter would hide over-admission from the two checks above.
        assert record[keys.DISCARDED_TOTAL] == 0, record


def test_workers_generated_with_rising_weight_versions(finished_job) -> None:
    config, _, client = finished_job
    versions = set()
    for _, fields in client.xrange(config.stream_name):
        versions.update(decode(fields[PAYLOAD_FIELD]).sampled_versions().tolist())
    assert {0, 1, 2, 3} <= versions


def test_every_pushed_trajectory_is_trained_once_or_still_pending(finished_job) -> None:
    config, result, client = finished_job
    stream = config.stream_name
    pushed = {}
    for entry_id, fields in client.xrange(stream):
        pushed[entry_id.decode()] = decode(fields[PAYLOAD_FIELD]).id
    produced = sum(r["trajectories"] for r in result.worker_reports)
    assert produced == len(pushed)

    ledger = read_ledger(result.output_dir / "checkpoints")
    assert [r["step"] for r in ledger] == list(range(1, STEPS + 1))
    trained_entries = [e for r in ledger for e in r["entry_ids"]]
    trained_ids = [t for r in ledger for t in r["trajectory_ids"]]
    assert len(trained_ids) == len(set(trained_ids)) == STEPS * 8
    assert {pushed[e] for e in trained_entries} == set(trained_ids)

    pending, undelivered = unacknowledged(client, stream)
    assert not pending & set(trained_entries)
    assert set(trained_entries) | pending | undelivered == set(pushed)
    assert client.xlen(f"{stream}:dead") == 0


def test_checkpoint_loads_with_transformers(finished_job, tiny_model_path: str) -> None:
    _, result, _ = finished_job
    assert result.checkpoint is not None and result.checkpoint.name == "hf"
    trained = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    changed = [
        name
        for (name, a), (_, b) in zip(
            trained.state_dict().items(), initial.state_dict().items(), strict=True
        )
        if not torch.equal(a, b)
    ]
    assert changed, "training did not change any weight"
    assert (Path(result.checkpoint) / "tokenizer.json").is_file()

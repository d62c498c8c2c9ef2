"""Experiment trackers through the metrics writer: MLflow on a local file store and W&B in
offline mode (each where installed), a resumed job continuing the same tracker run, and a
tracker that is configured but missing stopping the job before it starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from relayrl.cli import main
from relayrl.cluster.preflight import preflight
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError
from relayrl.metrics import MetricsWriter, read_metrics
from relayrl.tracker_config import MlflowLogger, WandbLogger
from relayrl.trackers import mlflow_name, open_trackers, require_trackers

STEP_ONE = {"reward/mean": 0.5, "eval/sampled/pass@2": 0.25, "finish": "stop"}


def test_tensorboard_stays_the_default_and_no_tracker_is_needed() -> None:
    config = load_config(None, [])
    assert config.output.tensorboard and config.output.loggers == []
    require_trackers(config.output.loggers)


def test_mlflow_file_store_gets_every_numeric_metric_and_a_resume_continues_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # MLflow keeps its file store only for those who ask for it.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path}/mlruns"
    loggers = [MlflowLogger(name="mlflow", tracking_uri=uri, experiment="tests")]
    out = tmp_path / "run"
    out.mkdir()
    writer = MetricsWriter(out, False, open_trackers(loggers, "job", out, {"name": "job"}))
    writer.write(1, STEP_ONE)
    writer.write(2, {"reward/mean": 0.75})
    writer.close()
    resumed = MetricsWriter(out, False, open_trackers(loggers, "job", out, {"name": "job"}))
    resumed.write(3, {"reward/mean": 1.0})
    resumed.close()

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "job"
    history = client.get_metric_history(run.info.run_id, "reward/mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75), (3, 1.0)]
    assert mlflow_name("eval/sampled/pass@2") == "eval/sampled/pass_at_2"
    [passed] = client.get_metric_history(run.info.run_id, "eval/sampled/pass_at_2")
    assert (passed.step, passed.value) == (1, 0.25)
    assert "finish" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.json"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_wandb_offline_run_is_kept_in_the_output_folder(tmp_path: Path) -> None:
    wandb = pytest.importorskip("wandb")
    loggers = [WandbLogger(name="wandb", mode="offline", project="tests")]
    out = tmp_path / "run"
    out.mkdir()
    writer = MetricsWriter(out, False, open_trackers(loggers, "job", out, {"name": "job"}))
    writer.write(1, STEP_ONE)
    writer.close()
    # The W&B service writes the run's log after finish() returns; teardown waits for it.
    wandb.teardown()
    [log] = (out / "wandb").glob("offline-run-*/run-job-*.wandb")
    written = log.read_bytes()
    assert b"eval/sampled/pass@2" in written and b"reward/mean" in written
    assert b"finish" not in written


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_configured_tracker_that_is_not_installed_stops_the_job_at_preflight(
    tracker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A None entry makes `import <tracker>` fail as it does where the package is absent.
    monkeypatch.setitem(sys.modules, tracker, None)
    overrides = [f"output.dir={tmp_path}/run", f"output.loggers=[{{name: {tracker}}}]"]
    config = load_config(None, overrides)
    package = "wandb" if tracker == "wandb" else "mlflow-skinny"
    with pytest.raises(JobConfigError, match=rf"output.loggers\[0\]: {tracker} is configured "):
        preflight(config)
    with pytest.raises(JobConfigError, match=f"pip install {package}"):
        open_trackers(config.output.loggers, "job", tmp_path, {})
    assert main(["train", "/dev/null", *[f"--set={o}" for o in overrides]]) == 2
    assert f"{tracker} is configured but cannot be imported" in capsys.readouterr().err

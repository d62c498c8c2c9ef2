"""Where a relative `trainer.sft.data` points: at the working directory the job is started from
(as output.dir does), never at the config file's folder, and as an absolute path, so learner
ranks running in another folder read the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relayrl.cluster.sft_stage import check_sft_data
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError


def config_in(folder: Path, data: str) -> Path:
    folder.mkdir()
    path = folder / "job.yaml"
    config = {
        "name": "relative-data",
        "model": {"path": "smollm2-135m"},
        "env": {"name": "math-python"},
        "trainer": {"sft": {"data": data, "steps": 1}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_relative_data_path_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = config_in(tmp_path / "configs", "demos/math.jsonl")
    workdir = tmp_path / "work"
    (workdir / "demos").mkdir(parents=True)
    (workdir / "demos" / "math.jsonl").write_text("")
    monkeypatch.chdir(workdir)
    config = load_config(config_path)
    assert config.trainer.sft is not None
    assert config.trainer.sft.data == str(workdir / "demos" / "math.jsonl")
    check_sft_data(config)


def test_a_missing_relative_file_is_reported_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = config_in(tmp_path / "configs", "demos/math.jsonl")
    # The file sits beside the config, which is not where relative paths point.
    (tmp_path / "configs" / "demos").mkdir()
    (tmp_path / "configs" / "demos" / "math.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    config = load_config(config_path)
    with pytest.raises(JobConfigError, match=str(tmp_path / "demos" / "math.jsonl")):
        check_sft_data(config)


def test_an_absolute_data_path_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "math.jsonl"
    config = load_config(config_in(tmp_path / "configs", str(data)))
    assert config.trainer.sft is not None
    assert config.trainer.sft.data == str(data)

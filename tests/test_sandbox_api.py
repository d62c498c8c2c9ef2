"""The sandbox's Python API: limits, typed results, staged files, the start-up check."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from relayrl.envs.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    check_host,
    run_python,
    run_python_async,
)
from relayrl.envs.sandbox import tools as sandbox_tools

QUICK = SandboxLimits(wall_s=5.0, cpu_s=5)


def test_limits_reject_non_positive_values() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=-1.0)


def test_ok_program_returns_a_json_ready_result() -> None:
    result = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)", QUICK)
    assert (result.status, result.exit_code) == ("ok", 0)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert 0 < result.duration_s < QUICK.wall_s
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_exit_code_and_exception_are_errors() -> None:
    exited = run_python("raise SystemExit(3)", QUICK)
    assert (exited.status, exited.exit_code) == ("error", 3)
    raised = run_python("1 / 0", QUICK)
    assert (raised.status, raised.exit_code) == ("error", 1)
    assert raised.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert 'File "/scratch/main.py", line 1' in raised.stderr


def test_files_are_staged_next_to_the_program_and_importable() -> None:
    files = {"helper.py": "ANSWER = 42\n", "data/input.txt": "hello"}
    code = "import helper\nprint(helper.ANSWER, open('data/input.txt').read())"
    result = run_python(code, QUICK, files)
    assert (result.status, result.stdout) == ("ok", "42 hello\n")


@pytest.mark.parametrize("name", ["../escape.py", "/etc/escape.py", "", "main.py"])
def test_file_names_must_stay_inside_scratch(name: str) -> None:
    with pytest.raises(ValueError):
        run_python("pass", QUICK, {name: "x"})


def test_scratch_is_private_to_one_run() -> None:
    first = run_python("open('left-behind', 'w').write('x'); import os; print(os.getcwd())", QUICK)
    assert (first.status, first.stdout) == ("ok", "/scratch\n")
    second = run_python("import os; print(os.listdir('.'))", QUICK)
    assert second.stdout == "['main.py']\n"


def test_cpu_limit_reports_timeout() -> None:
    result = run_python("while True: pass", SandboxLimits(wall_s=10.0, cpu_s=1))
    # SIGXCPU: the CPU rlimit ended it, not the 10 s wall timeout (which kills, with no code).
    assert (result.status, result.exit_code) == ("timeout", -signal.SIGXCPU)


def test_output_exactly_at_the_cap_is_kept_whole() -> None:
    limits = SandboxLimits(wall_s=5.0, max_output_bytes=1000)
    at_cap = run_python("import sys; sys.stderr.write('e' * 1000)", limits)
    assert (at_cap.status, len(at_cap.stderr)) == ("ok", 1000)
    past_cap = run_python("import sys; sys.stderr.write('e' * 1001)", limits)
    assert (past_cap.status, past_cap.exit_code) == ("output_limit", None)
    assert past_cap.stderr == "e" * 1000


def test_async_runs_overlap() -> None:
    # Each program says when it started and ended; overlapping spans prove they ran at once,
    # however slow the host.
    code = "import time; print(time.time()); time.sleep(1); print(time.time())"

    async def two_sleeps() -> list:
        return await asyncio.gather(run_python_async(code, QUICK), run_python_async(code, QUICK))

    first, second = asyncio.run(two_sleeps())
    assert (first.status, second.status) == ("ok", "ok")
    (start_a, end_a), (start_b, end_b) = (map(float, r.stdout.split()) for r in (first, second))
    assert start_a < end_b and start_b < end_a, "the second run began after the first ended"


def test_check_host_passes_here() -> None:
    check_host()


def test_missing_bwrap_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = sandbox_tools.shutil.which

    def which_without_bwrap(program: str, path: str | None = None) -> str | None:
        return None if program == "bwrap" else real_which(program, path=path)

    monkeypatch.setattr(sandbox_tools.shutil, "which", which_without_bwrap)
    sandbox_tools.host_tools.cache_clear()
    check_host.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match=r"apt-get install -y bubblewrap"):
            check_host()
    finally:
        monkeypatch.undo()
        sandbox_tools.host_tools.cache_clear()

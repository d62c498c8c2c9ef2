"""Turn what a finished sandbox left behind into a typed result."""

from __future__ import annotations

import signal

from relayrl.envs.sandbox.output import CapturedOutput
from relayrl.envs.sandbox.result import SandboxResult, SandboxStatus

# bwrap reports a program killed by signal N as exit code 128 + N.
_SIGNAL_EXIT_BASE = 128


def classify(
    captured: CapturedOutput, returncode: int, oom_killed: bool, duration_s: float
) -> SandboxResult:
    stderr = captured.stderr.decode(errors="replace")
    exit_code = _program_exit_code(returncode)
    ended_by_sandbox = captured.overflowed or captured.timed_out
    return SandboxResult(
        status=_status(captured, exit_code, oom_killed, stderr),
        exit_code=None if ended_by_sandbox else exit_code,
        stdout=captured.stdout.decode(errors="replace"),
        stderr=stderr,
        duration_s=round(duration_s, 4),
    )


def _status(
    captured: CapturedOutput, exit_code: int, oom_killed: bool, stderr: str
) -> SandboxStatus:
    if captured.overflowed:
        return "output_limit"
    if captured.timed_out or exit_code == -signal.SIGXCPU:
        return "timeout"
    if oom_killed:
        return "memory"
    if exit_code < 0:
        return "killed"
    if exit_code == 0:
        return "ok"
    return "memory" if _ended_in_memory_error(stderr) else "error"


def _program_exit_code(returncode: int) -> int:
    """The exit code, or -N for signal N, whether bwrap or the launcher itself was signalled."""
    if returncode > _SIGNAL_EXIT_BASE:
        return -(returncode - _SIGNAL_EXIT_BASE)
    return returncode


def _ended_in_memory_error(stderr: str) -> bool:
    lines = stderr.rstrip().splitlines()
    return bool(lines) and lines[-1].startswith("MemoryError")

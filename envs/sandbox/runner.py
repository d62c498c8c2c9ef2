"""Run one untrusted Python program confined, and report how it ended."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Mapping

from relayrl.envs.sandbox.cgroup import SandboxCgroup
from relayrl.envs.sandbox.command import cgroup_process_limit, sandbox_command
from relayrl.envs.sandbox.identity import sandbox_uid
from relayrl.envs.sandbox.limits import MIB, SandboxLimits
from relayrl.envs.sandbox.namespace import NamespaceInit
from relayrl.envs.sandbox.outcome import classify
from relayrl.envs.sandbox.output import CapturedOutput, capture
from relayrl.envs.sandbox.result import SandboxResult
from relayrl.envs.sandbox.seccomp import filter_memfd
from relayrl.envs.sandbox.staging import staged_files
from relayrl.envs.sandbox.tools import host_tools

DEFAULT_LIMITS = SandboxLimits()
# How long the namespace gets to empty after its init exited or was killed.
_REAP_TIMEOUT_S = 2.0


def run_python(
    code: str, limits: SandboxLimits = DEFAULT_LIMITS, files: Mapping[str, str] | None = None
) -> SandboxResult:
    """Run `code` as /scratch/main.py next to `files` (relative path -> text), confined."""
    tools = host_tools()
    cgroup = SandboxCgroup.create(
        memory_bytes=(limits.memory_mb + limits.scratch_mb) * MIB,
        max_processes=cgroup_process_limit(limits),
    )
    info_read, info_write = (os.fdopen(fd, "rb", buffering=0) for fd in os.pipe())
    seccomp = os.fdopen(filter_memfd(), "rb", buffering=0)
    try:
        with staged_files(code, files) as staged, info_read, info_write, seccomp:
            argv = sandbox_command(
                tools,
                limits,
                sandbox_uid(),
                staged,
                info_write.fileno(),
                seccomp.fileno(),
                cgroup.procs_files,
            )
            started = time.monotonic()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[*(file.fd for file in staged), info_write.fileno(), seccomp.fileno()],
                env={},  # the launcher's environment would show in the sandbox's /proc/1/environ
                cwd="/",
                start_new_session=True,
            )
            info_write.close()  # so bwrap's close of its copy ends our read
            deadline = started + limits.wall_s
            with process, NamespaceInit.from_info_fd(info_read.fileno(), deadline) as init:
                returncode, captured = _supervise(process, init, deadline, limits)
        duration_s = time.monotonic() - started
        return classify(captured, returncode, cgroup.oom_killed(), duration_s)
    finally:
        cgroup.kill_and_remove()


async def run_python_async(
    code: str, limits: SandboxLimits = DEFAULT_LIMITS, files: Mapping[str, str] | None = None
) -> SandboxResult:
    # A cancelled caller leaves the thread running, but never past the run's wall limit.
    return await asyncio.to_thread(run_python, code, limits, files)


def _supervise(
    process: subprocess.Popen[bytes], init: NamespaceInit, deadline: float, limits: SandboxLimits
) -> tuple[int, CapturedOutput]:
    assert process.stdout is not None and process.stderr is not None
    try:
        captured = capture(process.stdout, process.stderr, deadline, limits.max_output_bytes)
        if not (captured.overflowed or captured.timed_out):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                captured.timed_out = True
    finally:
        if process.poll() is None:
            _terminate(process, init)
        # bwrap's outer process can exit before its init has emptied the namespace.
        init.wait_gone(_REAP_TIMEOUT_S)
    return process.wait(), captured


def _terminate(process: subprocess.Popen[bytes], init: NamespaceInit) -> None:
    # SIGKILL to the namespace's init takes every process inside with it, then bwrap exits.
    init.kill()
    try:
        process.wait(timeout=_REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # bwrap's --die-with-parent then takes the namespace down.
        os.killpg(process.pid, signal.SIGKILL)

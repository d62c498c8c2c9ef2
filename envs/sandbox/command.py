"""The argv that launches one confined program: cgroup entry, uid drop, bwrap, seccomp, rlimits."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from relayrl.envs.sandbox.limits import MIB, SandboxLimits
from relayrl.envs.sandbox.staging import ENTRY_POINT, StagedFile
from relayrl.envs.sandbox.tools import SYSTEM_PREFIX, HostTools

SCRATCH = PurePosixPath("/scratch")
# Top-level entries that point into /usr on merged-/usr systems and hold libraries elsewhere.
_SYSTEM_ROOTS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Debian's alternatives are symlinks that libraries under /usr resolve through (libblas for numpy).
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
# bwrap runs a monitor outside and an init inside the namespace besides the program.
_BWRAP_PROCESSES = 2


def sandbox_command(
    tools: HostTools,
    limits: SandboxLimits,
    uid: int | None,
    files: Sequence[StagedFile],
    info_fd: int,
    seccomp_fd: int,
    cgroup_procs: Sequence[Path],
) -> list[str]:
    """`info_fd` receives bwrap's JSON with the host pid of the namespace's init; `seccomp_fd`
    holds the filter bwrap installs last, right before it execs the program."""
    program = [tools.python, "-E", "-s", "-B", str(ENTRY_POINT)]
    return [
        *_enter_cgroup(tools, cgroup_procs),
        *_drop_identity(tools, uid),
        *_bwrap(tools, limits, uid, files, info_fd, seccomp_fd),
        *_rlimits(tools, limits),
        *program,
    ]


def cgroup_process_limit(limits: SandboxLimits) -> int:
    return limits.max_processes + _BWRAP_PROCESSES


def _enter_cgroup(tools: HostTools, procs_files: Sequence[Path]) -> list[str]:
    # The shell joins the cgroups before exec'ing the rest, so no child can start outside them.
    if not procs_files:
        return []
    join = " && ".join(f"echo $$ > {shlex.quote(str(path))}" for path in procs_files)
    return [tools.shell, "-c", f'{join} && exec "$@"', "sandbox-cgroup"]


def _drop_identity(tools: HostTools, uid: int | None) -> list[str]:
    # The death signal makes bwrap (and with it the namespace) die if its launcher dies.
    become = [] if uid is None else [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return [tools.setpriv, *become, "--pdeathsig=KILL", "--"]


def _bwrap(
    tools: HostTools,
    limits: SandboxLimits,
    uid: int | None,
    files: Sequence[StagedFile],
    info_fd: int,
    seccomp_fd: int,
) -> list[str]:
    argv = [
        tools.bwrap,
        "--info-fd",
        str(info_fd),
        "--seccomp",
        str(seccomp_fd),
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--clearenv",
        *_setenv(PATH="/usr/bin:/bin", HOME=str(SCRATCH), TMPDIR=str(SCRATCH), LANG="C.UTF-8"),
        "--ro-bind",
        SYSTEM_PREFIX,
        SYSTEM_PREFIX,
        *_system_roots(),
        *[arg for path in _SYSTEM_FILES for arg in ("--ro-bind-try", path, path)],
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.scratch_mb * MIB),
        "--perms",
        "0700",
        "--tmpfs",
        str(SCRATCH),
        *_stage(files),
        # bwrap's root and /dev are tmpfs it built; read-only, only the capped scratch takes writes.
        "--remount-ro",
        "/",
        "--remount-ro",
        "/dev",
        "--chdir",
        str(SCRATCH),
    ]
    if uid is not None:
        argv += ["--uid", str(uid), "--gid", str(uid)]
    return [*argv, "--"]


def _setenv(**variables: str) -> list[str]:
    return [arg for name, value in variables.items() for arg in ("--setenv", name, value)]


def _system_roots() -> list[str]:
    argv: list[str] = []
    for name in _SYSTEM_ROOTS:
        path = f"/{name}"
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    return argv


def _stage(files: Sequence[StagedFile]) -> list[str]:
    argv: list[str] = []
    made = {SCRATCH}
    for file in files:
        target = SCRATCH / file.path
        for parent in reversed(target.parents):
            if parent.is_relative_to(SCRATCH) and parent not in made:
                argv += ["--dir", str(parent)]
                made.add(parent)
        argv += ["--file", str(file.fd), str(target)]
    return argv


def _rlimits(tools: HostTools, limits: SandboxLimits) -> list[str]:
    # Set inside the user namespace so RLIMIT_NPROC counts only this sandbox's processes.
    # The CPU hard limit is a second above the soft one so SIGXCPU (not SIGKILL) reports it.
    return [
        tools.prlimit,
        f"--nproc={limits.max_processes}",
        f"--as={limits.memory_mb * MIB}",
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--fsize={limits.scratch_mb * MIB}",
        f"--nofile={limits.max_open_files}",
        "--core=0",
        "--",
    ]

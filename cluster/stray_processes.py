"""Find, verify and end processes a dead job left behind, and make children die with their
parent. Linux only: everything here reads /proc."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def command_line(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def start_time(pid: int) -> int | None:
    """Clock ticks since boot when `pid` started: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised name, which may itself hold spaces; starttime is field 22.
    return int(stat.rsplit(")", 1)[1].split()[19])


def working_dir(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def pids_where(test: Callable[[int, list[str]], bool]) -> list[int]:
    """Running processes other than this one whose (pid, command line) pass `test`."""
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        argv = command_line(pid)
        if argv and is_running(pid) and test(pid, argv):
            found.append(pid)
    return found


def end_process(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; returns once the process is gone."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while is_running(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` that has the kernel send `sig` to the child when its parent dies.
    The kernel tracks the parent *thread*: spawn from a thread that lives as long as the
    child should."""
    parent = os.getpid()

    def arm() -> None:
        if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm

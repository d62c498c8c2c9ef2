"""A throwaway cgroup capping one run's total memory (and on v2 processes), where writable."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NAME_PREFIX = "relayrl-sandbox-"
_DRAIN_TIMEOUT_S = 2.0
_SWAP_SETTINGS = {"memory.swap.max", "memory.memsw.limit_in_bytes"}


@dataclass(frozen=True)
class SandboxCgroup:
    directory: Path
    oom_events: Path  # the file whose "oom_kill N" line counts OOM kills

    @classmethod
    def create(cls, memory_bytes: int, max_processes: int) -> SandboxCgroup | None:
        """A fresh child of our own cgroup with the caps set, or None if that is not allowed."""
        try:
            cgroup, settings = _plan(memory_bytes, max_processes)
        except OSError:
            return None
        try:
            _remove_stale_siblings(cgroup.directory.parent)
            cgroup.directory.mkdir()
            for setting, value in settings.items():
                _write_setting(cgroup.directory / setting, value)
        except OSError:
            cgroup.kill_and_remove()
            return None
        return cgroup

    @property
    def procs_file(self) -> Path:
        return self.directory / "cgroup.procs"

    def oom_killed(self) -> bool:
        try:
            lines = self.oom_events.read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            key, _, count = line.partition(" ")
            if key == "oom_kill" and int(count) > 0:
                return True
        return False

    def kill_and_remove(self) -> None:
        if not self.directory.exists():
            return
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while _kill_members(self.procs_file) and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            self.directory.rmdir()


def _plan(memory_bytes: int, max_processes: int) -> tuple[SandboxCgroup, dict[str, int]]:
    """The cgroup to make and the settings to write in it."""
    name = f"{_NAME_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        directory = _own_cgroup_dir("") / name
        settings = {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": max_processes}
        return SandboxCgroup(directory, directory / "memory.events"), settings
    # On v1 each hierarchy joined costs the launch an RCU grace period (the pids one ~15 ms);
    # RLIMIT_NPROC inside the user namespace already caps processes exactly, so join memory only.
    directory = _own_cgroup_dir("memory") / name
    settings = {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}
    return SandboxCgroup(directory, directory / "memory.oom_control"), settings


def _own_cgroup_dir(controller: str) -> Path:
    # /proc/self/cgroup rows are "id:controllers:path"; v2's single row has empty controllers.
    for row in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = row.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controller / path.lstrip("/")
    raise OSError(f"no {controller or 'unified'} cgroup hierarchy")


def _remove_stale_siblings(parent: Path) -> None:
    """Remove cgroups left by launchers killed mid-run (the launcher's pid is in the name)."""
    for sibling in parent.glob(f"{_NAME_PREFIX}*"):
        launcher = sibling.name.removeprefix(_NAME_PREFIX).split("-")[0]
        if launcher.isdigit() and not _alive(int(launcher)):
            with contextlib.suppress(OSError):  # one still in use refuses rmdir with EBUSY
                sibling.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another uid
        pass
    return True


def _write_setting(path: Path, value: int) -> None:
    if path.name in _SWAP_SETTINGS and not path.exists():  # swap accounting is optional
        return
    path.write_text(str(value))


def _kill_members(procs_file: Path) -> bool:
    """SIGKILL every process left in the cgroup; True while any remain."""
    try:
        pids = [int(pid) for pid in procs_file.read_text().split()]
    except OSError:
        return False
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)

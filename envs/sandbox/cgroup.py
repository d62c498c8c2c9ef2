"""A throwaway cgroup per run capping its total memory and its processes, where the host allows.

cgroup v2: a child of the nearest cgroup, from our own upwards, that has the memory and pids
controllers delegated to its children and is ours to write (or of $RELAYRL_SANDBOX_CGROUP).
cgroup v1: a child of our own cgroup in the memory and in the pids hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A cgroup v2 directory (absolute, or relative to CGROUP_ROOT) delegated to the sandboxes.
DELEGATED_CGROUP_ENV = "RELAYRL_SANDBOX_CGROUP"
CONTROLLERS = ("memory", "pids")
_NAME_PREFIX = "relayrl-sandbox-"
_DRAIN_TIMEOUT_S = 2.0
_SWAP_SETTINGS = {"memory.swap.max", "memory.memsw.limit_in_bytes"}


@dataclass(frozen=True)
class SandboxCgroup:
    capped_by: dict[str, Path]  # controller -> the cgroup capping it (v2: the same one for all)
    oom_events: Path | None  # the file whose "oom_kill N" line counts OOM kills
    missing: dict[str, str] = field(default_factory=dict)  # controller -> why it caps nothing

    @classmethod
    def create(cls, memory_bytes: int, max_processes: int) -> SandboxCgroup:
        """Fresh cgroups with the caps set; a controller the host does not allow is `missing`."""
        name = f"{_NAME_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            return _create_v2(name, memory_bytes, max_processes)
        return _create_v1(name, memory_bytes, max_processes)

    @property
    def directories(self) -> list[Path]:
        return list(dict.fromkeys(self.capped_by.values()))

    @property
    def procs_files(self) -> list[Path]:
        return [directory / "cgroup.procs" for directory in self.directories]

    def oom_killed(self) -> bool:
        if self.oom_events is None:
            return False
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
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while any([_kill_members(procs) for procs in self.procs_files]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        for directory in self.directories:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _create_v2(name: str, memory_bytes: int, max_processes: int) -> SandboxCgroup:
    try:
        parent = _delegated_v2_parent()
    except OSError as error:
        return SandboxCgroup({}, None, dict.fromkeys(CONTROLLERS, str(error)))
    settings = {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": max_processes}
    made = _child(parent / name, settings)
    if isinstance(made, str):
        return SandboxCgroup({}, None, dict.fromkeys(CONTROLLERS, made))
    return SandboxCgroup(dict.fromkeys(CONTROLLERS, made), made / "memory.events")


def _create_v1(name: str, memory_bytes: int, max_processes: int) -> SandboxCgroup:
    plans = {
        "memory": {
            "memory.limit_in_bytes": memory_bytes,
            "memory.memsw.limit_in_bytes": memory_bytes,
        },
        "pids": {"pids.max": max_processes},
    }
    made_by: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for controller, settings in plans.items():
        try:
            made = _child(_own_cgroup_dir(controller) / name, settings)
        except OSError as error:
            made = str(error)
        if isinstance(made, str):
            missing[controller] = made
        else:
            made_by[controller] = made
    memory = made_by.get("memory")
    oom_events = memory / "memory.oom_control" if memory else None
    return SandboxCgroup(made_by, oom_events, missing)


def _child(directory: Path, settings: dict[str, int]) -> Path | str:
    """The cgroup made with `settings` written, or why it could not be."""
    try:
        _remove_stale_siblings(directory.parent)
        directory.mkdir()
    except OSError as error:
        return f"cannot create a cgroup in {directory.parent}: {error.strerror}"
    try:
        for setting, value in settings.items():
            _write_setting(directory / setting, value)
    except OSError as error:
        with contextlib.suppress(OSError):
            directory.rmdir()
        return f"cannot set {setting} in {directory.parent}: {error.strerror}"
    return directory


def _delegated_v2_parent() -> Path:
    """The cgroup whose children may be capped in memory and pids, and that we may write."""
    explicit = os.environ.get(DELEGATED_CGROUP_ENV)
    if explicit:
        directory = CGROUP_ROOT / explicit  # an absolute path replaces the root
        if not _delegates(directory):
            # An empty cgroup may turn on for its children what its parent grants it.
            try:
                (directory / "cgroup.subtree_control").write_text("+memory +pids")
            except OSError as error:
                raise OSError(
                    f"{DELEGATED_CGROUP_ENV}={explicit}: cannot enable memory and pids for its"
                    f" children: {error.strerror}"
                ) from error
        return directory
    own = _own_cgroup_dir("")
    for directory in [own, *own.parents]:
        if _delegates(directory):
            return directory
        if directory == CGROUP_ROOT:
            break
    raise OSError(
        f"no cgroup from {own} up has memory and pids in cgroup.subtree_control and is writable"
        f" (set {DELEGATED_CGROUP_ENV} to a delegated cgroup)"
    )


def _delegates(directory: Path) -> bool:
    # Moving a process between two cgroups needs write access to their common ancestor's procs.
    try:
        enabled = set((directory / "cgroup.subtree_control").read_text().split())
    except OSError:
        return False
    writable = os.access(directory, os.W_OK) and os.access(directory / "cgroup.procs", os.W_OK)
    return writable and set(CONTROLLERS) <= enabled


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

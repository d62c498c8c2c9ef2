"""Which confinements a sandboxed program gets on this host, seen from inside one."""

from __future__ import annotations

import errno
import functools
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from relayrl.envs.sandbox.cgroup import SandboxCgroup
from relayrl.envs.sandbox.host import check_host
from relayrl.envs.sandbox.limits import MIB, SandboxLimits
from relayrl.envs.sandbox.runner import run_python
from relayrl.envs.sandbox.tools import SandboxUnavailable
from relayrl.errors import JobConfigError

log = logging.getLogger(__name__)

CONFINEMENTS = (
    "namespaces",
    "seccomp",
    "cgroup memory",
    "cgroup pids",
    "rlimits",
    "unprivileged uid",
    "network off",
)
_PROBE_LIMITS = SandboxLimits(wall_s=10.0, cpu_s=5)
_IO_URING_SETUP = 425  # the same number on every architecture
# Reports, from inside the sandbox, what confines it.
_PROBE = f"""
import ctypes, json, os, resource, socket
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
ring = libc.syscall({_IO_URING_SETUP}, 1, ctypes.create_string_buffer(128))
print(json.dumps({{
    "pid": os.getpid(),
    "uid": os.getuid(),
    "hostname": socket.gethostname(),
    "seccomp_mode": status["Seccomp"].strip(),
    "io_uring_errno": ctypes.get_errno() if ring == -1 else 0,
    "capabilities": int(status["CapEff"], 16),
    "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
    "processes": resource.getrlimit(resource.RLIMIT_NPROC)[0],
    "interfaces": sorted(name for _index, name in socket.if_nameindex()),
}}))
"""


@dataclass(frozen=True)
class Confinement:
    name: str
    active: bool
    detail: str  # what shows it holds, or what is missing and how to get it


@functools.cache
def host_confinements() -> tuple[Confinement, ...]:
    """Each confinement in CONFINEMENTS, probed once per process."""
    try:
        check_host()
    except SandboxUnavailable as error:
        return (
            Confinement("namespaces", False, str(error)),
            *(Confinement(name, False, "no sandbox runs here") for name in CONFINEMENTS[1:]),
        )
    result = run_python(_PROBE, _PROBE_LIMITS)
    try:
        seen = json.loads(result.stdout)
    except ValueError:
        reason = f"the probe ended {result.status}: {result.stderr.strip()[-300:]}"
        return tuple(Confinement(name, False, reason) for name in CONFINEMENTS)
    cgroup = SandboxCgroup.create(_PROBE_LIMITS.memory_mb * MIB, _PROBE_LIMITS.max_processes)
    cgroup.kill_and_remove()
    return (
        _namespaces(seen),
        _seccomp(seen),
        _cgroup(cgroup, "memory"),
        _cgroup(cgroup, "pids"),
        _rlimits(seen),
        _unprivileged(seen),
        _network_off(seen),
    )


def require_confinements(allow_weaker: bool, field: str) -> None:
    """Raise JobConfigError naming `field` if a confinement is missing and weaker is not allowed;
    if it is, log what is missing once per process. No sandbox at all is SandboxUnavailable."""
    check_host()
    missing = [confinement for confinement in host_confinements() if not confinement.active]
    if not missing:
        return
    summary = "; ".join(f"{confinement.name}: {confinement.detail}" for confinement in missing)
    if not allow_weaker:
        raise JobConfigError(
            f"the sandbox on this host lacks {summary} (see `relayrl sandbox check`); "
            f"provide it or set {field}: true to run with weaker confinement"
        )
    _log_weaker_once(summary, field)


@functools.cache
def _log_weaker_once(summary: str, field: str) -> None:
    log.warning("%s is true: sandboxed programs run without %s", field, summary)


def _namespaces(seen: dict[str, Any]) -> Confinement:
    # bwrap's init is pid 1 of the new pid namespace and the program its first child.
    active = seen["pid"] <= 2 and seen["hostname"] == "sandbox"
    detail = "bwrap: user, pid, mount, ipc, uts, cgroup and network namespaces, read-only host"
    return Confinement("namespaces", active, detail if active else f"bwrap ran but saw {seen}")


def _seccomp(seen: dict[str, Any]) -> Confinement:
    active = seen["seccomp_mode"] == "2" and seen["io_uring_errno"] == errno.ENOSYS
    if active:
        return Confinement("seccomp", True, "filter on: io_uring_setup answers ENOSYS")
    return Confinement(
        "seccomp",
        False,
        f"seccomp mode {seen['seccomp_mode']}, io_uring_setup errno {seen['io_uring_errno']}",
    )


def _cgroup(cgroup: SandboxCgroup, controller: str) -> Confinement:
    name = f"cgroup {controller}"
    if controller in cgroup.missing:
        return Confinement(name, False, cgroup.missing[controller])
    return Confinement(name, True, f"a cgroup per run under {cgroup.capped_by[controller].parent}")


def _rlimits(seen: dict[str, Any]) -> Confinement:
    active = resource.RLIM_INFINITY not in (seen["address_space"], seen["processes"])
    detail = f"RLIMIT_AS {seen['address_space']}, RLIMIT_NPROC {seen['processes']}"
    return Confinement("rlimits", active, detail)


def _unprivileged(seen: dict[str, Any]) -> Confinement:
    # bwrap maps the uid the program runs as to the same host uid.
    active = seen["uid"] != 0 and seen["capabilities"] == 0
    detail = f"uid {seen['uid']}, effective capabilities {seen['capabilities']:#x}"
    return Confinement("unprivileged uid", active, detail)


def _network_off(seen: dict[str, Any]) -> Confinement:
    active = seen["interfaces"] == ["lo"]
    return Confinement("network off", active, f"interfaces: {', '.join(seen['interfaces'])}")

"""The host programs the sandbox is built from, found once."""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass

from relayrl.errors import UserError

SANDBOX_PYTHON = "/usr/bin/python3"
# Bound read-only into every sandbox; tools used inside it must live here.
SYSTEM_PREFIX = "/usr"


class SandboxUnavailable(UserError):
    """The host cannot run sandboxes; the message says what to install or enable."""


@dataclass(frozen=True)
class HostTools:
    bwrap: str
    setpriv: str
    shell: str
    prlimit: str  # runs inside the sandbox, so it is a path under SYSTEM_PREFIX
    python: str  # likewise


@functools.cache
def host_tools() -> HostTools:
    return HostTools(
        bwrap=_require("bwrap", "bubblewrap"),
        setpriv=_require("setpriv", "util-linux"),
        shell=_require("sh", "dash"),
        prlimit=_require_system_file(_require("prlimit", "util-linux"), "util-linux"),
        python=_require_system_file(SANDBOX_PYTHON, "python3-minimal"),
    )


def _require(program: str, apt_package: str) -> str:
    # The launcher runs with an empty environment, so every program is given by absolute path.
    path = shutil.which(program, path=os.pathsep.join(["/usr/bin", "/bin", "/usr/sbin", "/sbin"]))
    if path is None:
        raise SandboxUnavailable(f"`{program}` not found: apt-get install -y {apt_package}")
    return path


def _require_system_file(path: str, apt_package: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise SandboxUnavailable(f"{path} not found: apt-get install -y {apt_package}")
    if os.path.commonpath([real, SYSTEM_PREFIX]) != SYSTEM_PREFIX:
        raise SandboxUnavailable(f"{path} resolves to {real}, outside {SYSTEM_PREFIX}")
    if os.stat(real).st_mode & 0o005 != 0o005:
        # Sandboxes run as an unprivileged uid, which needs world read and execute.
        raise SandboxUnavailable(f"{real} is not world-readable and executable")
    return real

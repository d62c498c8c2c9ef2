"""Start-up check that this host can run sandboxes, so a missing piece fails early and clearly."""

from __future__ import annotations

import functools
import sys

from relayrl.envs.sandbox.limits import SandboxLimits
from relayrl.envs.sandbox.runner import run_python
from relayrl.envs.sandbox.tools import SandboxUnavailable, host_tools

_PROBE_LIMITS = SandboxLimits(wall_s=5.0, cpu_s=5)
_NAMESPACE_HINT = (
    "bwrap could not build the sandbox; it needs user, pid and network namespaces "
    "(check `sysctl user.max_user_namespaces` > 0, kernel.unprivileged_userns_clone=1 where "
    "that exists, and in a container a seccomp/AppArmor profile that allows unshare)"
)


@functools.cache
def check_host() -> None:
    """Raise SandboxUnavailable, saying what to install or enable, unless a sandbox runs here."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable("the sandbox needs Linux (bubblewrap and namespaces)")
    host_tools()
    probe = run_python("print(6 * 7)", _PROBE_LIMITS)
    if probe.status != "ok" or probe.stdout.strip() != "42":
        raise SandboxUnavailable(f"{_NAMESPACE_HINT}; probe ended {probe.status}: {probe.stderr}")

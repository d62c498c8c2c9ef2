"""A local sandbox for untrusted Python: bubblewrap namespaces, seccomp, rlimits and cgroups.

The Ray actor pool lives in `relayrl.envs.sandbox.pool` (imported on demand: it needs Ray).
"""

from relayrl.envs.sandbox.host import check_host
from relayrl.envs.sandbox.limits import SandboxLimits
from relayrl.envs.sandbox.result import SandboxResult, SandboxStatus
from relayrl.envs.sandbox.runner import run_python, run_python_async
from relayrl.envs.sandbox.tools import SandboxUnavailable

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxStatus",
    "SandboxUnavailable",
    "check_host",
    "run_python",
    "run_python_async",
]

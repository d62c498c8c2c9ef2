"""A local sandbox for untrusted Python: bubblewrap namespaces, seccomp, rlimits and cgroups.

`relayrl.envs.sandbox.pool` queues programs on runners someone else provides (in a job, the
Ray sandbox actors of `relayrl.cluster.sandbox_actors`).
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

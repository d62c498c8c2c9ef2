"""The typed outcome of one sandboxed program."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

# ok: exit 0; error: non-zero exit; timeout: wall or CPU time ran out; memory: an allocation
# failed or the cgroup OOM-killed it; output_limit: a stream passed its cap; killed: a signal.
SandboxStatus = Literal["ok", "timeout", "memory", "error", "killed", "output_limit"]


@dataclass(frozen=True)
class SandboxResult:
    status: SandboxStatus
    exit_code: int | None  # the program's exit code, -N for signal N, None if the sandbox ended it
    stdout: str
    stderr: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

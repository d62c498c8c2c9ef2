"""Resource caps for one sandboxed program."""

from __future__ import annotations

from dataclasses import dataclass, fields

MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # wall-clock time from launch to exit
    cpu_s: int = 10  # CPU seconds per process (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process, and the cgroup total where one is writable
    max_processes: int = 32  # processes and threads the program may run at once
    max_output_bytes: int = MIB  # per stream (stdout, stderr); more ends the run
    scratch_mb: int = 64  # size of the private writable tmpfs the program runs in
    max_open_files: int = 256

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"SandboxLimits.{field.name} must be positive")

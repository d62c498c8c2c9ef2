"""This process's memory as the kernel counts it, in GB, for the run's metrics.

RSS counts every resident page, shared ones (the Ray object store, mapped model files) once per
process that maps them; PSS splits each shared page among its mappers, so PSS adds up over the
processes of a job. Both come from /proc (Linux); a figure that cannot be read is left out.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

GB = 1 << 30


def proc_field_bytes(path: str, field: str) -> int | None:
    """A "Field:  N kB" line of a /proc file, in bytes; None when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def pss_bytes(pid: int) -> int | None:
    return proc_field_bytes(f"/proc/{pid}/smaps_rollup", "Pss")


def rss_bytes(pid: int) -> int | None:
    return proc_field_bytes(f"/proc/{pid}/status", "VmRSS")


def _kb_field(path: str, field: str) -> float | None:
    found = proc_field_bytes(path, field)
    return None if found is None else found / GB


def peak_rss_gb() -> float:
    """The largest RSS this process has had since it started (VmHWM, which moves with VmRSS;
    getrusage's figure lags it and is the fallback off Linux)."""
    high_water = _kb_field("/proc/self/status", "VmHWM")
    if high_water is not None:
        return high_water
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return peak / GB if sys.platform == "darwin" else peak * 1024 / GB


def process_memory() -> dict[str, float]:
    """{"rss_gb", "peak_rss_gb", "pss_gb"} of this process; PSS only where /proc has it."""
    figures = {
        "rss_gb": _kb_field("/proc/self/status", "VmRSS"),
        "peak_rss_gb": peak_rss_gb(),
        "pss_gb": _kb_field("/proc/self/smaps_rollup", "Pss"),
    }
    return {name: value for name, value in figures.items() if value is not None}

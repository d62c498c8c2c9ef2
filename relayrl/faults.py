"""Named fault points: seams where a test makes the process raise or die on cue.

A test arms points through the environment, which Ray hands to every actor it starts:
`RELAYRL_FAULT="after_latest_before_acks:kill"` (several: comma-separated; `name:raise`
raises FaultInjected, `name:kill` SIGKILLs the process, `name:kill@3` fires on the third
pass only). Unarmed, a fault point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "RELAYRL_FAULT"

# Every seam the code marks; arming a name not listed here is a typo, refused loudly.
POINTS = frozenset(
    {
        "after_xadd_before_release",
        "after_ledger_before_latest",
        "after_latest_before_acks",
        "mid_batch_read",
        "mid_publish",
    }
)


class FaultInjected(RuntimeError):
    """Raised by an armed `name:raise` fault point."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    armed: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition(":")
        action, _, nth = action.partition("@")
        if name not in POINTS or action not in ("raise", "kill"):
            raise ValueError(f"{FAULT_ENV}: unknown fault {item!r}; points: {sorted(POINTS)}")
        armed[name] = (action, int(nth) if nth else 1)
    return armed


_armed = _parse(os.environ.get(FAULT_ENV, ""))
_passes: dict[str, int] = {}


def arm(spec: str) -> None:
    """Re-read the arming (tests in one process call this after setting the variable)."""
    global _armed
    _armed = _parse(spec)
    _passes.clear()


def fault_point(name: str) -> None:
    if not _armed:
        return
    plan = _armed.get(name)
    if plan is None:
        return
    action, nth = plan
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FaultInjected(f"fault point {name} armed to raise")

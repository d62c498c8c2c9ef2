"""Stop signals as KeyboardInterrupt, held back while a step is being committed.

A SIGTERM that lands between a step's checkpoint and its metrics record would leave a step
that trained and committed with no record. Inside `deferred()` the first signal waits until
the block ends; a second one interrupts at once, so a hung commit can still be stopped."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_held: list[int] = []
_depth = 0


def interrupt(signum: int, frame: FrameType | None) -> None:
    """The handler for SIGTERM and SIGINT."""
    if _depth and not _held:
        _held.append(signum)
        return
    _held.clear()
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole; a stop signal that arrived meanwhile is raised after it."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _held:
            signum = _held.pop()
            raise KeyboardInterrupt(f"signal {signum}")

"""Read a child's stdout and stderr as they come, up to a cap and a deadline."""

from __future__ import annotations

import os
import selectors
import time
from dataclasses import dataclass, field
from typing import IO

_CHUNK_BYTES = 64 * 1024


@dataclass
class CapturedOutput:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    overflowed: bool = False  # a stream passed the cap; it holds its first `cap` bytes
    timed_out: bool = False  # the deadline came before both streams closed


def capture(stdout: IO[bytes], stderr: IO[bytes], deadline: float, cap: int) -> CapturedOutput:
    """Read both pipes until they close, one passes `cap` bytes, or `deadline` (monotonic)."""
    captured = CapturedOutput()
    buffers = {stdout.fileno(): captured.stdout, stderr.fileno(): captured.stderr}
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                captured.timed_out = True
                return captured
            for key, _events in selector.select(remaining):
                # At most one byte past the cap is read: enough to know the stream overflowed.
                buffer = buffers[key.fd]
                chunk = os.read(key.fd, min(_CHUNK_BYTES, cap + 1 - len(buffer)))
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer += chunk
                if len(buffer) > cap:
                    del buffer[cap:]
                    captured.overflowed = True
                    return captured
    return captured

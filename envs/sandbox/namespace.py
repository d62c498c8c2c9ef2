"""The sandbox's pid-namespace init, held by pidfd: when it is gone, every process inside is."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from types import TracebackType

_INFO_LIMIT_BYTES = 64 * 1024


class NamespaceInit:
    """bwrap's init inside the sandbox, or a no-op if bwrap failed before making one.

    bwrap's outer process may exit while the init is still tearing the namespace down, so the
    init itself is what the launcher kills and waits for.
    """

    def __init__(self, pidfd: int | None) -> None:
        self._pidfd = pidfd

    @classmethod
    def from_info_fd(cls, info_fd: int, deadline: float) -> NamespaceInit:
        """Read bwrap's --info-fd JSON until bwrap closes it, and hold its child-pid."""
        info = _read_until_eof(info_fd, deadline)
        try:
            pid = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError, TypeError):
            return cls(None)
        try:
            return cls(os.pidfd_open(pid))
        except ProcessLookupError:
            return cls(None)

    def kill(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def wait_gone(self, timeout_s: float) -> bool:
        """True once the init has exited, which it does only after the rest of its namespace."""
        if self._pidfd is None:
            return True
        readable, _, _ = select.select([self._pidfd], [], [], timeout_s)
        return bool(readable)

    def __enter__(self) -> NamespaceInit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _read_until_eof(fd: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < _INFO_LIMIT_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return bytes(data)

"""Which host uid a sandboxed program runs as."""

from __future__ import annotations

import os
import random

# Far above any login or system account, so the uid owns nothing on the host.
_FIRST_PRIVATE_UID = 1_000_000
_UID_LIMIT = 2**31 - 1  # bwrap reads --uid as a signed int
_NOBODY = 65534


def sandbox_uid() -> int | None:
    """A fresh uid for one run when we are root, None to run as ourselves.

    A uid of its own per run keeps RLIMIT_NPROC from being shared between concurrent sandboxes
    (the kernel counts processes per uid) and root's processes from ignoring it.
    """
    if os.geteuid() != 0:
        return None
    ranges = _mapped_uid_ranges()
    usable = [
        (max(start, _FIRST_PRIVATE_UID), min(start + count, _UID_LIMIT)) for start, count in ranges
    ]
    usable = [(low, high) for low, high in usable if high > low]
    if not usable:
        return _NOBODY
    low, high = max(usable, key=lambda span: span[1] - span[0])
    return random.randrange(low, high)


def _mapped_uid_ranges() -> list[tuple[int, int]]:
    # Inside a container only the uids in our user namespace's map can be switched to.
    with open("/proc/self/uid_map") as uid_map:
        rows = [line.split() for line in uid_map if line.strip()]
    return [(int(inside), int(count)) for inside, _outside, count in rows]

"""One bucket stream, many engines: each bucket is produced once (under ZeRO-3, gathered on
every learner rank) and handed to every engine's sender at once; the producer moves on (and
lets the bucket go) only when all of them have taken it. A sender that fails or falls behind
is left out of the rest of the stream; the others are not held up by it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import torch

Pair = tuple[str, torch.Tensor]
_Key = TypeVar("_Key")
_Result = TypeVar("_Result")


class FellBehind(RuntimeError):
    """A sender did not take a bucket in time and was left out of the stream."""


class _Feed(Generic[_Result]):
    """One sender's iterator over the shared stream."""

    def __init__(self) -> None:
        self._buckets: queue.Queue[list[Pair] | None] = queue.Queue()
        self._taken = threading.Event()
        self._left_out = False
        self.outcome: list[_Result | BaseException] = []
        self.ended = threading.Event()

    @property
    def live(self) -> bool:
        return not (self._left_out or self.ended.is_set())

    def offer(self, bucket: list[Pair]) -> None:
        self._taken.clear()
        self._buckets.put(bucket)

    def wait_taken(self, timeout_s: float) -> bool:
        return self._taken.wait(max(timeout_s, 0.0))

    def leave_out(self) -> None:
        self._left_out = True
        self.outcome = [FellBehind("did not take a weight bucket in time")]

    def close(self) -> None:
        self._buckets.put(None)

    def __iter__(self) -> Iterator[Pair]:
        while (bucket := self._buckets.get()) is not None:
            if self._left_out:
                raise FellBehind("left out of the weight stream")
            yield from bucket
            # Asking for more after a bucket's last tensor means the sender is done with it.
            self._taken.set()

    def run(self, consume: Callable[[Iterator[Pair]], _Result]) -> None:
        try:
            result: _Result | BaseException = consume(iter(self))
        except BaseException as error:
            result = error
        if not self._left_out:
            self.outcome = [result]
        self.ended.set()
        self._taken.set()


def fan_out(
    buckets: Iterable[list[Pair]],
    consumers: dict[_Key, Callable[[Iterator[Pair]], _Result]],
    timeout_s: float,
    settle: Callable[[], None],
) -> dict[_Key, _Result | BaseException]:
    """Run every consumer on its own thread over one pass of `buckets`, which this thread
    iterates to the end whatever the consumers do (it may be a collective). A consumer that
    has not taken a bucket `timeout_s` after it was offered is left out. `settle` runs before
    each bucket is let go: work the senders queued on it (GPU copies) must land."""
    feeds: dict[_Key, _Feed[_Result]] = {key: _Feed() for key in consumers}
    threads = [
        threading.Thread(target=feeds[key].run, args=(consume,), name="relayrl-push", daemon=True)
        for key, consume in consumers.items()
    ]
    for thread in threads:
        thread.start()
    try:
        for bucket in buckets:
            live = [feed for feed in feeds.values() if feed.live]
            for feed in live:
                feed.offer(bucket)
            # Each bucket gets its own bound: one stuck sender must not eat the others' time.
            deadline = time.monotonic() + timeout_s
            for feed in live:
                if not feed.wait_taken(deadline - time.monotonic()) and feed.live:
                    feed.leave_out()
            settle()
    finally:
        for feed in feeds.values():
            feed.close()
    deadline = time.monotonic() + timeout_s
    for feed in feeds.values():
        if feed.live and not feed.ended.wait(max(deadline - time.monotonic(), 0.0)):
            feed.leave_out()
    return {key: _outcome(feed) for key, feed in feeds.items()}


def _outcome(feed: _Feed[_Result]) -> _Result | BaseException:
    return feed.outcome[0] if feed.outcome else FellBehind("ended without an outcome")

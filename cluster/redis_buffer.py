"""The trajectory buffer on a Redis Stream with a consumer group (see docs/architecture.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from relayrl.buffer import BufferEntry, BufferStats
from relayrl.trajectory import Trajectory, TrajectoryDecodeError, decode, encode

log = logging.getLogger(__name__)

PAYLOAD_FIELD = b"traj"
ID_FIELD = b"id"

T = TypeVar("T")

_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class BufferUnavailableError(RuntimeError):
    """Redis stayed unreachable for longer than the buffer's reconnect window."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStreamBuffer:
    """Producer and consumer view of one stream. Picklable: each process opens its own
    connection on first use, so the same object can be handed to Ray actors."""

    def __init__(
        self,
        url: str,
        stream: str,
        group: str = "learner",
        consumer: str = "learner-0",
        maxlen: int = 1_000_000,
        socket_timeout_s: float = 30.0,
        trim_acknowledged: bool = True,
        reconnect_window_s: float = 120.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.maxlen = maxlen
        self.socket_timeout_s = socket_timeout_s
        self.trim_acknowledged = trim_acknowledged
        self.reconnect_window_s = reconnect_window_s
        self._redis: redis.Redis | None = None
        # A consumer first re-reads what it was given before a restart, then new entries.
        self._replay_cursor: str | None = "0"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_redis"] = None
        return state

    def with_consumer(self, consumer: str) -> RedisStreamBuffer:
        return RedisStreamBuffer(
            self.url,
            self.stream,
            self.group,
            consumer,
            self.maxlen,
            self.socket_timeout_s,
            self.trim_acknowledged,
            self.reconnect_window_s,
        )

    @property
    def client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=10,
                health_check_interval=30,
                retry_on_timeout=True,
            )
        return self._redis

    def _retrying(
        self, operation: Callable[[], T], on_reconnect: Callable[[], None] | None = None
    ) -> T:
        """Run `operation`, riding out a Redis restart for up to the reconnect window."""
        deadline = time.monotonic() + self.reconnect_window_s
        delay = 0.1
        while True:
            try:
                return operation()
            except _RETRYABLE as exc:
                if time.monotonic() > deadline:
                    raise BufferUnavailableError(
                        f"redis unreachable for {self.reconnect_window_s:.0f}s: {exc}"
                    ) from exc
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                if on_reconnect is not None:
                    on_reconnect()

    def ensure_group(self) -> None:
        def create() -> None:
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._retrying(create)

    def push(self, trajectories: Sequence[Trajectory]) -> list[str]:
        """Append a group atomically (MULTI/EXEC): a producer that dies mid-push leaves all
        of it or none of it, never a group the learner would wait on forever."""
        payloads = [
            {ID_FIELD: trajectory.id.encode(), PAYLOAD_FIELD: encode(trajectory)}
            for trajectory in trajectories
        ]

        def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            for fields in payloads:
                pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            return pipe.execute()

        # A retry after a lost reply may add the group twice; the learner drops duplicates by
        # trajectory id, so a retry never trains twice on one episode.
        return [_text(entry_id) for entry_id in self._retrying(send)]

    def _dead_letter(self, entry_id: str, reason: str, fields: dict[bytes, bytes] | None) -> None:
        record = {b"source_id": entry_id.encode(), b"reason": reason.encode()}
        if fields and PAYLOAD_FIELD in fields:
            record[b"payload"] = fields[PAYLOAD_FIELD]
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, record)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        log.warning("dead-lettered buffer entry %s: %s", entry_id, reason)

    def _decode_entries(self, raw_entries: list[tuple[bytes, Any]]) -> list[BufferEntry]:
        entries = []
        for raw_id, fields in raw_entries:
            entry_id = _text(raw_id)
            if not fields:
                self._dead_letter(
                    entry_id, "entry was trimmed or deleted before it was acked", None
                )
                continue
            payload = fields.get(PAYLOAD_FIELD)
            if payload is None:
                self._dead_letter(entry_id, f"no {PAYLOAD_FIELD.decode()!r} field", fields)
                continue
            try:
                trajectory = decode(payload)
            except TrajectoryDecodeError as exc:
                self._dead_letter(entry_id, str(exc), fields)
                continue
            entries.append(BufferEntry(entry_id, trajectory))
        return entries

    def read(self, max_count: int, block_ms: int) -> list[BufferEntry]:
        def replay_own_pending() -> None:
            # Entries delivered in a reply that was lost are pending for us: read them again.
            self._replay_cursor = "0"

        return self._retrying(lambda: self._read_once(max_count, block_ms), replay_own_pending)

    def _read_once(self, max_count: int, block_ms: int) -> list[BufferEntry]:
        if self._replay_cursor is not None:
            response = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._replay_cursor}, count=max_count
            )
            raw = response[0][1] if response else []
            if raw:
                self._replay_cursor = _text(raw[-1][0])
                return self._decode_entries(raw)
            self._replay_cursor = None
        response = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=max_count, block=block_ms
        )
        return self._decode_entries(response[0][1] if response else [])

    def ack(self, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        acked = int(self._retrying(lambda: self.client.xack(self.stream, self.group, *entry_ids)))
        if self.trim_acknowledged:
            self._retrying(self._trim_consumed)
        return acked

    def _trim_consumed(self) -> None:
        """Drop entries every consumer has acknowledged; never an undelivered or pending one."""
        summary = self.client.xpending(self.stream, self.group)
        if summary["pending"]:
            floor = _text(summary["min"])
        else:
            groups = {_text(g["name"]): g for g in self.client.xinfo_groups(self.stream)}
            floor = _text(groups[self.group]["last-delivered-id"])
        self.client.xtrim(self.stream, minid=floor, approximate=False)

    def claim_abandoned(self, min_idle_ms: int) -> int:
        """Take over entries a dead consumer was given but never acknowledged."""
        return self._retrying(lambda: self._claim_once(min_idle_ms))

    def _claim_once(self, min_idle_ms: int) -> int:
        claimed = 0
        cursor = "0-0"
        while True:
            cursor, entries, *_ = self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, cursor, count=100
            )
            claimed += len(entries)
            if _text(cursor) == "0-0":
                break
        if claimed:
            self._replay_cursor = "0"
        return claimed

    def stats(self) -> BufferStats:
        return self._retrying(self._stats_once)

    def _stats_once(self) -> BufferStats:
        length = int(self.client.xlen(self.stream))
        pending = int(self.client.xpending(self.stream, self.group)["pending"])
        groups = {_text(g["name"]): g for g in self.client.xinfo_groups(self.stream)}
        last = _text(groups[self.group]["last-delivered-id"])
        undelivered = len(self.client.xrange(self.stream, min=f"({last}", max="+"))
        dead = int(self.client.xlen(self.dead_letter_stream))
        return BufferStats(
            length=length, pending=pending, undelivered=undelivered, dead_letters=dead
        )

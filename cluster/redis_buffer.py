"""The trajectory buffer on a Redis Stream with a consumer group (see docs/architecture.md)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relayrl.buffer import BufferEntry, BufferStats
from relayrl.cluster.redis_password import RedisPassword
from relayrl.faults import fault_point
from relayrl.trajectory import Trajectory, TrajectoryDecodeError, decode, encode

log = logging.getLogger(__name__)

PAYLOAD_FIELD = b"traj"
ID_FIELD = b"id"
# Beside the payload, so a member that cannot be decoded still names its group.
GROUP_FIELD = b"group"

# Dead letters kept for inspection; their total lives in a counter, so trimming loses no count.
DEAD_LETTER_MAXLEN = 10_000
# A payload larger than this is refused before msgpack allocates anything for it.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

# Quarantine an entry only if it is still pending: a retried script never books it twice.
_DEAD_LETTER_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local record = {'source_id', ARGV[2], 'reason', ARGV[3]}
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if entry[1] then
  local fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'traj' then
      record[#record + 1] = 'payload'
      record[#record + 1] = fields[i + 1]
    end
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(record))
redis.call('INCR', KEYS[3])
return 1
"""

# Entries admission must still count, read in one atomic step: delivered and unacknowledged
# plus never delivered, less those the learner has booked but not yet acknowledged.
_BACKLOG_SCRIPT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])[1]
local last, lag = '0-0', false
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered, behind = nil, nil, false
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
    if group[i] == 'lag' then behind = group[i + 1] end
  end
  if name == ARGV[1] then last, lag = delivered, behind end
end
-- Redis 7 keeps the lag (nil when it cannot tell); 6.2 needs the entries counted.
local undelivered = lag or #redis.call('XRANGE', KEYS[1], '(' .. last, '+')
local booked = tonumber(redis.call('GET', KEYS[2]) or '0')
return {pending, undelivered, booked}
"""

# A retry after a lost reply must not count twice: each call carries a token, and the script
# runs its effect only the first time it sees the token (then answers what it did).
ONCE_TTL_S = 3600
_BOOK_ONCE_SCRIPT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('INCRBY', KEYS[2], ARGV[1])
end
return 1
"""
_ACK_ONCE_SCRIPT = """
local done = redis.call('GET', KEYS[1])
if done then return tonumber(done) end
local acked = redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, 4))
redis.call('DECRBY', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], acked, 'EX', ARGV[3])
return acked
"""

T = TypeVar("T")

_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class BufferUnavailableError(RuntimeError):
    """Redis stayed unreachable for longer than the buffer's reconnect window."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _next_id(entry_id: str) -> str:
    millis, sequence = _id_order(entry_id)
    return f"{millis}-{sequence + 1}"


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
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        password: RedisPassword | None = None,
    ) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        # Acknowledged entries kept when trim_acknowledged is off; never an unacknowledged one.
        self.maxlen = maxlen
        self.socket_timeout_s = socket_timeout_s
        self.trim_acknowledged = trim_acknowledged
        self.reconnect_window_s = reconnect_window_s
        self.max_payload_bytes = max_payload_bytes
        # Where the password is read, never the password: this object is pickled to actors.
        self.password = password
        self._redis: redis.Redis | None = None
        # A consumer first re-reads what it was given before a restart, then new entries.
        self._replay_cursor: str | None = "0"
        # Groups with a member dead-lettered since the consumer last asked.
        self._broken_groups: set[str] = set()

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"

    @property
    def added_key(self) -> str:
        """How many entries were ever added to the stream (trimming never lowers it)."""
        return f"{self.stream}:added"

    @property
    def dead_letter_count_key(self) -> str:
        return f"{self.stream}:dead:count"

    @property
    def booked_key(self) -> str:
        """Entries the learner booked (trained or discarded) and has not acknowledged yet."""
        return f"{self.stream}:booked"

    def _once_key(self) -> str:
        return f"{self.stream}:once:{uuid.uuid4().hex}"

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
            self.max_payload_bytes,
            self.password,
        )

    @property
    def client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.url,
                password=self.password.read() if self.password else None,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=10,
                health_check_interval=30,
                # redis-py's own silent retry would re-send a read whose reply was lost, and
                # the entries it delivered would stay pending unseen; `_retrying` replays them.
                retry=Retry(NoBackoff(), 0),
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
            {
                ID_FIELD: trajectory.id.encode(),
                GROUP_FIELD: trajectory.group_id.encode(),
                PAYLOAD_FIELD: encode(trajectory),
            }
            for trajectory in trajectories
        ]

        def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            for fields in payloads:
                # No MAXLEN here: it would evict unread or trained-but-uncommitted entries.
                pipe.xadd(self.stream, fields)
            pipe.incrby(self.added_key, len(payloads))
            return pipe.execute()[: len(payloads)]

        # A retry after a lost reply may add the group twice; the learner books the copies as
        # duplicates by trajectory id, so a retry never trains twice on one episode.
        return [_text(entry_id) for entry_id in self._retrying(send)]

    def dead_letter(self, entry_id: str, reason: str) -> bool:
        """Quarantine a pending entry with its reason (acknowledged in the same atomic step);
        False when it was no longer pending, so nothing is booked twice."""
        moved = self._retrying(
            lambda: self.client.eval(
                _DEAD_LETTER_SCRIPT,
                3,
                self.stream,
                self.dead_letter_stream,
                self.dead_letter_count_key,
                self.group,
                entry_id,
                reason,
                DEAD_LETTER_MAXLEN,
            )
        )
        if moved:
            log.warning("dead-lettered buffer entry %s: %s", entry_id, reason)
        return bool(moved)

    def _decode_entries(self, raw_entries: list[tuple[bytes, Any]]) -> list[BufferEntry]:
        entries = []
        for raw_id, fields in raw_entries:
            entry_id = _text(raw_id)
            if not fields:
                self.dead_letter(entry_id, "entry was trimmed or deleted before it was acked")
                continue
            problem, trajectory = self._decode_fields(fields)
            if trajectory is None:
                self.dead_letter(entry_id, problem)
                if GROUP_FIELD in fields:
                    self._broken_groups.add(_text(fields[GROUP_FIELD]))
                continue
            entries.append(BufferEntry(entry_id, trajectory))
        return entries

    def _decode_fields(self, fields: dict[bytes, bytes]) -> tuple[str, Trajectory | None]:
        """The entry's trajectory, or why there is none."""
        payload = fields.get(PAYLOAD_FIELD)
        if payload is None:
            return f"no {PAYLOAD_FIELD.decode()!r} field", None
        if len(payload) > self.max_payload_bytes:
            return f"payload of {len(payload)} bytes over {self.max_payload_bytes}", None
        try:
            return "", decode(payload)
        except TrajectoryDecodeError as exc:
            return str(exc), None

    def take_broken_groups(self) -> set[str]:
        """Groups a member of which was dead-lettered while reading, since the last call."""
        broken, self._broken_groups = self._broken_groups, set()
        return broken

    def read(self, max_count: int, block_ms: int) -> list[BufferEntry]:
        def replay_own_pending() -> None:
            # Entries delivered in a reply that was lost are pending for us: read them again.
            self._replay_cursor = "0"

        return self._retrying(lambda: self._read_once(max_count, block_ms), replay_own_pending)

    def _read_once(self, max_count: int, block_ms: int) -> list[BufferEntry]:
        fault_point("mid_batch_read")
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

    def book(self, count: int) -> None:
        """The learner booked `count` entries it will acknowledge at its next commit."""
        if count:
            token = self._once_key()
            self._retrying(
                lambda: self.client.eval(
                    _BOOK_ONCE_SCRIPT, 2, token, self.booked_key, count, ONCE_TTL_S
                )
            )

    def reset_booked(self) -> None:
        """A learner (re)starts holding nothing: what a lost one booked is pending again."""
        self._retrying(lambda: self.client.delete(self.booked_key))

    def ack(self, entry_ids: Sequence[str], booked: int = 0) -> int:
        """Acknowledge committed entries, `booked` of which `book` counted, in one step."""
        if not entry_ids:
            return 0

        token = self._once_key()
        acked = int(
            self._retrying(
                lambda: self.client.eval(
                    _ACK_ONCE_SCRIPT,
                    3,
                    token,
                    self.stream,
                    self.booked_key,
                    self.group,
                    booked,
                    ONCE_TTL_S,
                    *entry_ids,
                )
            )
        )
        self.trim()
        return acked

    def backlog(self) -> int:
        """Entries admission still counts: in the stream, not yet booked by the learner."""
        pending, undelivered, booked = self._retrying(
            lambda: self.client.eval(_BACKLOG_SCRIPT, 2, self.stream, self.booked_key, self.group)
        )
        return int(pending) + int(undelivered) - int(booked)

    def trim(self) -> None:
        """Drop acknowledged entries (all of them, or beyond `maxlen` when the history is
        kept); never an undelivered or pending one, whatever the commit cadence."""
        self._retrying(self._trim_consumed)

    def _trim_consumed(self) -> None:
        summary = self.client.xpending(self.stream, self.group)
        if summary["pending"]:
            floor = _text(summary["min"])
        else:
            groups = {_text(g["name"]): g for g in self.client.xinfo_groups(self.stream)}
            floor = _text(groups[self.group]["last-delivered-id"])
            # MINID keeps ids >= floor; the last delivered one is acknowledged too.
            floor = _next_id(floor)
        if not self.trim_acknowledged:
            excess = int(self.client.xlen(self.stream)) - self.maxlen
            if excess <= 0:
                return
            first_kept = self.client.xrange(self.stream, count=excess + 1)[-1][0]
            floor = min(floor, _text(first_kept), key=_id_order)
        self.client.xtrim(self.stream, minid=floor, approximate=False)

    def memory_bytes(self) -> int:
        """What the stream takes in Redis (sampled, as MEMORY USAGE does)."""
        return int(self._retrying(lambda: self.client.memory_usage(self.stream) or 0))

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
        # The counter, not the trimmed dead-letter stream's length, is the total.
        counted = self.client.get(self.dead_letter_count_key)
        if counted is None:  # a stream dead-lettered into before the counter existed
            counted = self.client.xlen(self.dead_letter_stream)
        dead = int(counted)
        return BufferStats(
            length=length, pending=pending, undelivered=undelivered, dead_letters=dead
        )


# In a job's output folder: where its stream lives, so `relayrl audit` finds a live run.
BUFFER_LOCATION_FILE = "buffer.json"


def write_buffer_location(output_dir: Path, embedded_url: str | None, stream: str) -> None:
    """Record the stream's name and, for an embedded Redis, its loopback URL (its password is
    made per run; the file is readable by its owner only). An external Redis is found from
    config.yaml and its password source."""
    path = output_dir / BUFFER_LOCATION_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"stream": stream, "embedded_url": embedded_url}, handle)


def read_buffer_location(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / BUFFER_LOCATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None

"""`relayrl audit OUTPUT_DIR`: check a run, live or finished, against the accounting invariant
(docs/exactly-once.md). Every entry ever added to the job's stream is exactly one of: trained
by a committed step, discarded with a reason (both in the ledger), dead-lettered with a reason,
or still pending or undelivered; no trajectory is trained twice.

Redis is read first, in one transaction, then the ledger: a step committed in between (the
ledger and `latest` come before its acknowledgements) shows as booked and still pending,
"awaiting ack", never as missing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from relayrl.cluster.redis_buffer import RedisStreamBuffer, read_buffer_location
from relayrl.errors import JobConfigError
from relayrl.learner.checkpoint import committed_ledger
from relayrl.learner.discard import DiscardReason

log = logging.getLogger(__name__)

GROUP = "learner"
_KNOWN_REASONS = {reason.value for reason in DiscardReason}


@dataclass
class AuditReport:
    stream: str
    added: int | None  # entries ever added (None: a stream older than the counter)
    trained: int = 0
    discarded: dict[DiscardReason, int] = field(default_factory=dict)
    dead_lettered: int = 0
    pending: int = 0  # delivered, not booked by a committed step
    undelivered: int = 0
    awaiting_ack: int = 0  # booked by a committed step, acknowledgement not yet done
    duplicates: list[str] = field(default_factory=list)  # ids in more than one state or step
    unaccounted: list[str] = field(default_factory=list)  # entries in the stream in no state
    # Entries a ledger discards under a reason no DiscardReason names: booked, but not known why.
    unknown_reasons: dict[str, int] = field(default_factory=dict)
    missing: int = 0  # entries added but in no state (trimmed before being booked)

    @property
    def accounted(self) -> int:
        discarded = sum(self.discarded.values()) + sum(self.unknown_reasons.values())
        booked = self.trained + discarded
        return booked + self.dead_lettered + self.pending + self.undelivered

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.unaccounted or self.missing or self.unknown_reasons)

    def lines(self) -> list[str]:
        discarded = ", ".join(f"{k} {v}" for k, v in sorted(self.discarded.items())) or "none"
        added = "unknown" if self.added is None else str(self.added)
        return [
            f"stream {self.stream}: {added} entries added, {self.accounted} accounted",
            f"  trained        {self.trained}",
            f"  discarded      {sum(self.discarded.values())} ({discarded})",
            f"  dead-lettered  {self.dead_lettered}",
            f"  pending        {self.pending}",
            f"  undelivered    {self.undelivered}",
            f"  awaiting ack   {self.awaiting_ack}",
            f"  duplicates     {len(self.duplicates)}" + _sample(self.duplicates),
            f"  unaccounted    {len(self.unaccounted) + self.missing}" + _sample(self.unaccounted),
            *(f"  unknown reason {k!r}: {n}" for k, n in sorted(self.unknown_reasons.items())),
            "invariant holds" if self.ok else "INVARIANT VIOLATED",
        ]


def _sample(ids: list[str]) -> str:
    return f": {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}" if ids else ""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_snapshot(client: redis.Redis, buffer: RedisStreamBuffer) -> dict[str, Any]:
    """Everything the audit needs from Redis, read atomically."""
    if not client.exists(buffer.stream):
        return {"ids": [], "pending": [], "last": "0-0", "dead": [], "dead_count": 0, "added": 0}
    pipe = client.pipeline(transaction=True)
    pipe.xrange(buffer.stream)
    pipe.xpending_range(buffer.stream, GROUP, min="-", max="+", count=1 << 30)
    pipe.xinfo_groups(buffer.stream)
    pipe.xrange(buffer.dead_letter_stream)
    pipe.get(buffer.dead_letter_count_key)
    pipe.get(buffer.added_key)
    entries, pending, groups, dead, dead_count, added = pipe.execute()
    group = next((g for g in groups if _text(g["name"]) == GROUP), None)
    return {
        "ids": [_text(entry_id) for entry_id, _ in entries],
        "pending": [_text(p["message_id"]) for p in pending],
        "last": _text(group["last-delivered-id"]) if group else "0-0",
        "dead": [_text(fields[b"source_id"]) for _, fields in dead],
        "dead_count": int(dead_count) if dead_count is not None else len(dead),
        "added": int(added) if added is not None else None,
    }


def _id_order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def audit_stream(client: redis.Redis, stream: str, checkpoints: Path) -> AuditReport:
    buffer = RedisStreamBuffer("redis://unused", stream, group=GROUP)
    snapshot = _stream_snapshot(client, buffer)
    ledger = committed_ledger(checkpoints)
    report = AuditReport(stream=stream, added=snapshot["added"])

    state: dict[str, str] = {}  # entry id -> where it is booked
    duplicates: list[str] = []

    def book(entry_id: str, where: str) -> None:
        if entry_id in state:
            duplicates.append(entry_id)
        state[entry_id] = where

    trained_trajectories: Counter[str] = Counter()
    for record in ledger:
        discarded_entries = record.get("discarded_entry_ids")
        if discarded_entries is None:  # a ledger written before entries were named by reason
            trained_entries = record["entry_ids"][: len(record["trajectory_ids"])]
            discarded_entries = {DiscardReason.UNNAMED: record["entry_ids"][len(trained_entries) :]}
        else:
            named = {e for ids in discarded_entries.values() for e in ids}
            trained_entries = [e for e in record["entry_ids"] if e not in named]
        for entry_id in trained_entries:
            book(entry_id, "trained")
        for raw_reason, ids in discarded_entries.items():
            for entry_id in ids:
                book(entry_id, f"discarded:{raw_reason}")
            if raw_reason in _KNOWN_REASONS:
                reason = DiscardReason(raw_reason)
                report.discarded[reason] = report.discarded.get(reason, 0) + len(ids)
            else:
                unknown = report.unknown_reasons
                unknown[raw_reason] = unknown.get(raw_reason, 0) + len(ids)
        report.trained += len(trained_entries)
        trained_trajectories.update(record["trajectory_ids"])
    duplicates += [t for t, n in trained_trajectories.items() if n > 1]
    for entry_id in snapshot["dead"]:
        book(entry_id, "dead")
    report.dead_lettered = snapshot["dead_count"]

    last = _id_order(snapshot["last"])
    pending = set(snapshot["pending"])
    for entry_id in pending:
        if entry_id in state:
            report.awaiting_ack += 1  # committed; its acknowledgement has not happened yet
            if state[entry_id] == "dead":
                duplicates.append(entry_id)
        else:
            report.pending += 1
    suspects = []  # acknowledged, yet booked nowhere
    for entry_id in snapshot["ids"]:
        if entry_id in pending or entry_id in state:
            continue
        if _id_order(entry_id) > last:
            report.undelivered += 1
        else:
            suspects.append(entry_id)
    # A dead letter whose record was trimmed away is counted, but no longer named.
    trimmed_dead_letters = snapshot["dead_count"] - len(snapshot["dead"])
    if len(suspects) > trimmed_dead_letters:
        report.unaccounted = suspects
    report.duplicates = sorted(set(duplicates))
    if report.added is not None:
        # Added but in no state and no longer in the stream: trimmed before it was booked.
        # (Entries written around `push` are not counted as added, hence the floor.)
        report.missing = max(0, report.added - report.accounted - len(report.unaccounted))
    return report


def _run_settings(output_dir: Path) -> tuple[dict[str, Any], str]:
    config_path = output_dir / "config.yaml"
    if not config_path.is_file():
        raise JobConfigError(f"{output_dir} holds no config.yaml: not a relayrl run's output")
    raw = yaml.safe_load(config_path.read_text()) or {}
    location = read_buffer_location(output_dir)
    stream = (location or {}).get("stream") or (raw.get("buffer") or {}).get("stream")
    if not stream:
        stream = f"relayrl:{raw['name']}:trajectories"
    return raw, stream


@contextmanager
def run_redis(output_dir: Path) -> Iterator[tuple[redis.Redis, str]]:
    """The run's Redis: its external one, its embedded one if it is live, or the embedded one
    started on the run's data for as long as the audit takes."""
    raw, stream = _run_settings(output_dir)
    buffer_config = raw.get("buffer") or {}
    if buffer_config.get("url"):
        from relayrl.cluster.redis_password import RedisPassword

        source = RedisPassword(
            env=buffer_config.get("password_env"), file=buffer_config.get("password_file")
        )
        password = source.read() if source.env or source.file else None
        yield redis.Redis.from_url(buffer_config["url"], password=password), stream
        return
    url = (read_buffer_location(output_dir) or {}).get("embedded_url")
    if url:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
        except (redis.ConnectionError, redis.AuthenticationError, redis.TimeoutError):
            client = None
        if client is not None:
            yield client, stream
            return
    from relayrl.cluster.embedded_redis import EmbeddedRedis

    data_dir = output_dir / "redis"
    if not data_dir.is_dir():
        raise JobConfigError(f"{output_dir} has no embedded Redis data ({data_dir})")
    with EmbeddedRedis(data_dir) as server:
        yield redis.Redis.from_url(server.url), stream


def audit_run(output_dir: str | Path) -> AuditReport:
    output_dir = Path(output_dir)
    try:
        with run_redis(output_dir) as (client, stream):
            return audit_stream(client, stream, output_dir / "checkpoints")
    except redis.RedisError as exc:
        raise JobConfigError(f"cannot read the Redis of the run in {output_dir}: {exc}") from exc

from __future__ import annotations

import redis

from relayrl.cluster.redis_buffer import PAYLOAD_FIELD, RedisStreamBuffer
from relayrl.trajectory import Trajectory
from tests.trajectories import trajectory


def traj(group: str = "g") -> Trajectory:
    return trajectory(group, prompt_len=2, reward=1.0)


def make_buffer(url: str, **kwargs) -> RedisStreamBuffer:
    buffer = RedisStreamBuffer(url, "test:stream", **kwargs)
    buffer.ensure_group()
    buffer.ensure_group()  # idempotent
    return buffer


def test_push_read_ack_and_stats(redis_server) -> None:
    buffer = make_buffer(redis_server.url, trim_acknowledged=False)
    pushed = [traj() for _ in range(5)]
    ids = buffer.push(pushed)
    assert len(ids) == 5
    entries = buffer.read(3, block_ms=10)
    assert [e.trajectory.id for e in entries] == [t.id for t in pushed[:3]]
    stats = buffer.stats()
    assert (stats.length, stats.pending, stats.undelivered) == (5, 3, 2)
    assert buffer.ack([e.entry_id for e in entries]) == 3
    assert buffer.ack([e.entry_id for e in entries]) == 0  # acking twice changes nothing
    stats = buffer.stats()
    assert (stats.pending, stats.undelivered) == (0, 2)


def test_restarted_consumer_rereads_its_unacked_entries_first(redis_server) -> None:
    buffer = make_buffer(redis_server.url)
    pushed = [traj() for _ in range(4)]
    buffer.push(pushed)
    first = buffer.read(2, block_ms=10)
    # A new consumer object with the same name: what a restarted learner builds.
    restarted = make_buffer(redis_server.url)
    again = restarted.read(10, block_ms=10)
    assert [e.entry_id for e in again] == [e.entry_id for e in first]
    rest = restarted.read(10, block_ms=10)
    assert [e.trajectory.id for e in rest] == [t.id for t in pushed[2:]]
    assert restarted.read(10, block_ms=10) == []


def test_corrupt_entry_goes_to_dead_letters_and_reading_continues(redis_server) -> None:
    buffer = make_buffer(redis_server.url)
    good = traj()
    buffer.push([good])
    client = redis.Redis.from_url(redis_server.url)
    bad_id = client.xadd("test:stream", {PAYLOAD_FIELD: b"\x93not-a-trajectory"}).decode()
    client.xadd("test:stream", {b"other": b"x"})
    buffer.push([traj()])
    entries = buffer.read(10, block_ms=10)
    assert len(entries) == 2 and entries[0].trajectory.id == good.id
    dead = client.xrange(buffer.dead_letter_stream)
    assert len(dead) == 2
    assert dead[0][1][b"source_id"].decode() == bad_id
    assert dead[0][1][b"payload"] == b"\x93not-a-trajectory"
    assert b"msgpack" in dead[0][1][b"reason"] or b"payload" in dead[0][1][b"reason"]
    # Dead-lettered entries are acknowledged, so they never block the group.
    assert buffer.stats().pending == 2 and buffer.stats().dead_letters == 2


def test_trimming_keeps_pending_and_undelivered_entries(redis_server) -> None:
    buffer = make_buffer(redis_server.url)
    buffer.push([traj() for _ in range(6)])
    entries = buffer.read(4, block_ms=10)
    buffer.ack([entries[0].entry_id, entries[2].entry_id])
    # entry 1 is pending, 4 and 5 undelivered: only entry 0 may go.
    stats = buffer.stats()
    assert stats.length == 5 and stats.pending == 2 and stats.undelivered == 2


def test_abandoned_entries_are_claimed_by_another_consumer(redis_server) -> None:
    dead = make_buffer(redis_server.url, consumer="learner-dead")
    dead.push([traj() for _ in range(3)])
    taken = dead.read(3, block_ms=10)
    survivor = make_buffer(redis_server.url, consumer="learner-1")
    assert survivor.claim_abandoned(min_idle_ms=0) == 3
    claimed = survivor.read(10, block_ms=10)
    assert sorted(e.entry_id for e in claimed) == sorted(e.entry_id for e in taken)


def test_buffer_pickles_without_its_connection(redis_server) -> None:
    import pickle

    buffer = make_buffer(redis_server.url)
    buffer.push([traj()])
    clone = pickle.loads(pickle.dumps(buffer))
    assert clone._redis is None
    assert len(clone.read(5, block_ms=10)) == 1

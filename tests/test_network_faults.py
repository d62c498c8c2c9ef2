"""The buffer's producer and the learner's reader ride out a reset, a lost reply, a stall
and a black hole between them and a real Redis; the stream's contents are the oracle."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from relayrl.cluster.redis_buffer import ID_FIELD, RedisStreamBuffer
from relayrl.learner.intake import BatchIntake
from relayrl.trajectory import Trajectory
from tests.fault_proxy import FaultProxy

STREAM = "faults:stream"
GROUP_SIZE = 2


def group(name: str) -> list[Trajectory]:
    return [
        Trajectory(
            group_id=name,
            tokens=np.arange(5),
            prompt_len=2,
            loss_mask=[0, 0, 1, 1, 1],
            logprobs=[0, 0, -1, -1, -1],
            versions=[-1, -1, 0, 0, 0],
            reward=float(index),
        )
        for index in range(GROUP_SIZE)
    ]


@pytest.fixture
def proxy(redis_server) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as running:
        yield running


def through(proxy: FaultProxy, url: str) -> RedisStreamBuffer:
    buffer = RedisStreamBuffer(
        proxy.url_for(url), STREAM, socket_timeout_s=1.0, reconnect_window_s=60.0
    )
    buffer.ensure_group()
    return buffer


def stream_ids(url: str) -> list[str]:
    """Trajectory ids in stream order, read straight from Redis."""
    client = redis.Redis.from_url(url)
    return [fields[ID_FIELD].decode() for _, fields in client.xrange(STREAM)]


def test_a_push_whose_reply_is_lost_is_retried_as_whole_copies(redis_server, proxy):
    producer = through(proxy, redis_server.url)
    pushed = group("g0")
    proxy.cut_reply_after(b"EXEC")
    producer.push(pushed)
    assert proxy.cuts == 1
    ids = [t.id for t in pushed]
    # The cut EXEC ran and the retry ran: two whole copies, never part of a group.
    assert stream_ids(redis_server.url) == ids + ids
    producer.push(group("g1"))  # the producer is healthy afterwards
    assert Counter(stream_ids(redis_server.url)) == Counter(
        {**{i: 2 for i in ids}, **{i: 1 for i in stream_ids(redis_server.url)[-GROUP_SIZE:]}}
    )


def test_a_push_outlives_a_reset_of_every_connection(redis_server, proxy):
    producer = through(proxy, redis_server.url)
    producer.push(group("g0"))
    assert proxy.reset() >= 1
    second = group("g1")
    producer.push(second)
    assert stream_ids(redis_server.url)[-GROUP_SIZE:] == [t.id for t in second]
    assert len(stream_ids(redis_server.url)) == 2 * GROUP_SIZE


def test_a_push_outlives_a_stall_and_a_black_hole(redis_server, proxy):
    producer = through(proxy, redis_server.url)
    for fault in (proxy.stall, proxy.blackhole):
        seen = proxy.connections
        proxy.new_connection.clear()
        fault()
        pushed = group(fault.__name__)
        done = threading.Event()
        worker = threading.Thread(
            target=lambda batch=pushed, finished=done: (producer.push(batch), finished.set())
        )
        worker.start()
        # The producer timed out and dialled again: the fault held, then it lifts.
        assert proxy.new_connection.wait(30)
        assert proxy.connections > seen
        assert not done.is_set()
        proxy.resume()
        worker.join(60)
        assert done.is_set()
        copies = Counter(stream_ids(redis_server.url))
        # A stalled request may still land after the retry; a black-holed one never does.
        assert {copies[t.id] for t in pushed} <= ({1, 2} if fault == proxy.stall else {1})
        assert len({copies[t.id] for t in pushed}) == 1  # whole groups only


def intake(buffer: RedisStreamBuffer, prompts_per_step: int) -> BatchIntake:
    return BatchIntake(
        buffer,
        group_size=GROUP_SIZE,
        prompts_per_step=prompts_per_step,
        max_staleness=None,
        batch_timeout_s=60.0,
        read_block_ms=200,
    )


def test_the_reader_loses_and_repeats_nothing_when_a_reply_is_cut_mid_batch(redis_server, proxy):
    direct = RedisStreamBuffer(redis_server.url, STREAM)
    direct.ensure_group()
    reader = through(proxy, redis_server.url)
    pushed = [t for name in ("a", "b", "c", "d") for t in group(name)]
    direct.push(pushed[: 2 * GROUP_SIZE])
    learner = intake(reader, prompts_per_step=4)
    # The first read takes two groups into the batch; the next read's reply is lost.
    delivered = threading.Event()
    original_read = reader.read

    def read_then_cut(max_count: int, block_ms: int):
        entries = original_read(max_count, block_ms)
        if entries and not delivered.is_set():
            delivered.set()
            direct.push(pushed[2 * GROUP_SIZE :])
            proxy.cut_reply_after(b"XREADGROUP")
        return entries

    reader.read = read_then_cut  # type: ignore[method-assign]
    batch = learner.next_batch(version=0)
    assert proxy.cuts == 1
    assert sorted(e.trajectory.id for e in batch) == sorted(t.id for t in pushed)
    assert len({e.entry_id for e in batch}) == len(pushed)
    assert sorted(stream_ids(redis_server.url)) == sorted(t.id for t in pushed)
    client = redis.Redis.from_url(redis_server.url)
    assert client.xpending(STREAM, "learner")["pending"] == len(pushed)


def test_the_reader_rides_out_a_stall_and_a_reset(redis_server, proxy):
    direct = RedisStreamBuffer(redis_server.url, STREAM)
    direct.ensure_group()
    reader = through(proxy, redis_server.url)
    pushed = [t for name in ("a", "b", "c") for t in group(name)]
    direct.push(pushed[:GROUP_SIZE])
    learner = intake(reader, prompts_per_step=3)
    first = learner.next_batch
    proxy.reset()
    proxy.stall()
    proxy.new_connection.clear()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(first(version=0)))
    worker.start()
    assert proxy.new_connection.wait(30)
    direct.push(pushed[GROUP_SIZE:])
    proxy.resume()
    proxy.reset()
    worker.join(90)
    assert result, "the batch never filled"
    assert sorted(e.trajectory.id for e in result[0]) == sorted(t.id for t in pushed)
    assert len(stream_ids(redis_server.url)) == len(pushed)


def test_booking_and_acknowledging_count_once_when_their_reply_is_lost(redis_server, proxy):
    direct = RedisStreamBuffer(redis_server.url, STREAM)
    direct.ensure_group()
    learner = through(proxy, redis_server.url)
    direct.push(group("a"))
    entries = learner.read(GROUP_SIZE, block_ms=100)
    client = redis.Redis.from_url(redis_server.url)
    proxy.cut_reply_after(b"INCRBY")
    learner.book(len(entries))
    assert proxy.cuts == 1
    assert int(client.get(learner.booked_key)) == GROUP_SIZE
    assert learner.backlog() == 0
    proxy.cut_reply_after(b"XACK")
    assert learner.ack([e.entry_id for e in entries], booked=len(entries)) == GROUP_SIZE
    assert proxy.cuts == 2
    # A retried acknowledgement neither frees the booking twice nor grows the backlog.
    assert int(client.get(learner.booked_key)) == 0
    assert client.xpending(STREAM, "learner")["pending"] == 0
    assert learner.backlog() == 0

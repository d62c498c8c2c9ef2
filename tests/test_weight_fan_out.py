"""One bucket stream fanned out to several senders (cluster/weights/fan_out.py) and the bucket
plan every weight path shares (relayrl/weight_buckets.py): pure Python, no Ray, no GPU."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

from relayrl.cluster.weights.fan_out import FellBehind, Pair, fan_out
from relayrl.weight_buckets import StateBuckets, plan_buckets, state_metadata


def _tensor(num_floats: int) -> torch.Tensor:
    return torch.arange(num_floats, dtype=torch.float32)


class LoggedStream:
    """A single-pass stream that logs when each bucket is produced and let go."""

    def __init__(self, buckets: int) -> None:
        self.log: list[str] = []
        self._buckets = buckets

    def __iter__(self) -> Iterator[list[Pair]]:
        for index in range(self._buckets):
            self.log.append(f"gather {index}")
            yield [(f"b{index}.x", _tensor(2)), (f"b{index}.y", _tensor(3))]
            self.log.append(f"release {index}")


def test_buckets_keep_state_order_and_stay_under_the_limit() -> None:
    state = {"a": _tensor(10), "b": _tensor(10), "c": _tensor(30), "d": _tensor(5)}
    metadata = state_metadata(state)

    assert plan_buckets(metadata, bucket_bytes=80) == [["a", "b"], ["c"], ["d"]]
    assert plan_buckets(metadata, bucket_bytes=1 << 20) == [["a", "b", "c", "d"]]
    assert [meta.num_bytes for meta in metadata] == [40, 40, 120, 20]


def test_state_buckets_can_be_sent_again() -> None:
    state = {"a": _tensor(10), "b": _tensor(10), "c": _tensor(30)}
    buckets = StateBuckets(state, bucket_bytes=80)
    first = [[name for name, _ in bucket] for bucket in buckets]
    assert first == [["a", "b"], ["c"]] == [[name for name, _ in bucket] for bucket in buckets]
    assert all(tensor is state[name] for bucket in buckets for name, tensor in bucket)


def test_every_sender_gets_the_whole_stream_and_each_bucket_is_produced_once() -> None:
    stream = LoggedStream(3)
    settled: list[int] = []

    def collect(tensors: Iterator[Pair]) -> list[str]:
        return [name for name, _ in tensors]

    outcomes = fan_out(
        stream, {"a": collect, "b": collect}, timeout_s=30, settle=lambda: settled.append(1)
    )

    names = ["b0.x", "b0.y", "b1.x", "b1.y", "b2.x", "b2.y"]
    assert outcomes == {"a": names, "b": names}
    assert stream.log == [f"{step} {i}" for i in range(3) for step in ("gather", "release")]
    assert len(settled) == 3, "device work settles before every bucket is let go"


def test_a_bucket_is_let_go_only_after_every_sender_took_it() -> None:
    stream = LoggedStream(2)
    slow_may_go = threading.Event()

    def fast(tensors: Iterator[Pair]) -> int:
        return sum(1 for _ in tensors)

    def slow(tensors: Iterator[Pair]) -> int:
        count = 0
        for _ in tensors:
            count += 1
            if count == 2:  # the last tensor of bucket 0: hold on to it for a while
                slow_may_go.wait(5)
        return count

    def release_slow_when_fast_waits() -> None:
        while "gather 0" not in stream.log:
            pass
        slow_may_go.set()
        assert "release 0" not in stream.log, "bucket 0 was let go while slow still held it"

    watcher = threading.Thread(target=release_slow_when_fast_waits)
    watcher.start()
    outcomes = fan_out(stream, {"fast": fast, "slow": slow}, timeout_s=30, settle=lambda: None)
    watcher.join()
    assert outcomes == {"fast": 4, "slow": 4}


def test_a_failing_or_stuck_sender_is_left_out_and_the_stream_still_ends() -> None:
    stream = LoggedStream(3)
    stuck = threading.Event()

    def healthy(tensors: Iterator[Pair]) -> int:
        return sum(1 for _ in tensors)

    def failing(tensors: Iterator[Pair]) -> int:
        next(tensors)
        raise RuntimeError("NCCL broadcast failed")

    def hanging(tensors: Iterator[Pair]) -> int:
        next(tensors)
        stuck.wait(30)  # a peer that never answers
        return 0

    outcomes = fan_out(
        stream,
        {"healthy": healthy, "failing": failing, "hanging": hanging},
        timeout_s=1.0,
        settle=lambda: None,
    )
    stuck.set()

    assert outcomes["healthy"] == 6
    assert isinstance(outcomes["failing"], RuntimeError)
    assert isinstance(outcomes["hanging"], FellBehind)
    assert stream.log[-1] == "release 2", "the stream is iterated to its end (a collective)"


def test_with_no_sender_the_stream_is_still_iterated_to_its_end() -> None:
    stream = LoggedStream(2)
    assert fan_out(stream, {}, timeout_s=1.0, settle=lambda: None) == {}
    assert stream.log == ["gather 0", "release 0", "gather 1", "release 1"]

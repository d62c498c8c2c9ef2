from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayrl.trajectory import (
    SCHEMA_VERSION,
    Trajectory,
    TrajectoryDecodeError,
    Turn,
    decode,
    encode,
)


def make_trajectory(prompt_len: int = 3, sampled: int = 4, version: int = 2) -> Trajectory:
    total = prompt_len + sampled
    return Trajectory(
        group_id="g1",
        tokens=np.arange(total),
        prompt_len=prompt_len,
        loss_mask=[0] * prompt_len + [1] * sampled,
        logprobs=[0.0] * prompt_len + [-0.5] * sampled,
        versions=[-1] * prompt_len + [version] * sampled,
        reward=1.5,
        reward_channels={"correct": 1.0, "format": 0.5},
        task={"id": "t", "answer": 7},
        turns=[Turn(start=prompt_len, end=total, tool="python", tool_status="ok", reward=1.5)],
        finish_reason="stop",
        timings={"generate_s": 0.25},
    )


def test_round_trip_preserves_every_field() -> None:
    original = make_trajectory()
    restored = decode(encode(original))
    assert restored.id == original.id
    assert restored.group_id == "g1"
    np.testing.assert_array_equal(restored.tokens, original.tokens)
    assert restored.tokens.dtype == np.int32
    np.testing.assert_array_equal(restored.loss_mask, original.loss_mask)
    np.testing.assert_array_equal(restored.logprobs, original.logprobs)
    np.testing.assert_array_equal(restored.versions, original.versions)
    assert restored.reward_channels == {"correct": 1.0, "format": 0.5}
    assert restored.turns[0].tool == "python" and restored.turns[0].end == 7
    assert restored.task == {"id": "t", "answer": 7}
    assert restored.sampled_versions().tolist() == [2, 2, 2, 2]


def test_payload_is_msgpack_not_pickle() -> None:
    payload = msgpack.unpackb(encode(make_trajectory()), raw=False)
    assert payload["schema"] == SCHEMA_VERSION
    assert isinstance(payload["tokens"], bytes)


def _tamper(**changes: object) -> bytes:
    payload = msgpack.unpackb(encode(make_trajectory()), raw=False)
    payload.update(changes)
    return msgpack.packb(payload, use_bin_type=True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema": 99}, "schema version"),
        ({"tokens": b"\x00\x01\x02"}, "multiple"),
        ({"loss_mask": b"\x01"}, "shape"),
        ({"prompt_len": 50}, "prompt_len"),
        ({"reward": "high"}, "reward"),
        ({"reward": float("nan")}, "not finite"),
        ({"id": 5}, "'id'"),
        ({"turns": ["x"]}, "turn"),
    ],
)
def test_malformed_payloads_raise_a_typed_error(changes: dict, message: str) -> None:
    with pytest.raises(TrajectoryDecodeError, match=message):
        decode(_tamper(**changes))


def test_missing_field_is_named() -> None:
    payload = msgpack.unpackb(encode(make_trajectory()), raw=False)
    del payload["versions"]
    with pytest.raises(TrajectoryDecodeError, match="versions"):
        decode(msgpack.packb(payload, use_bin_type=True))


def test_sampled_tokens_in_prompt_are_rejected() -> None:
    with pytest.raises(TrajectoryDecodeError, match="prompt tokens"):
        Trajectory(
            group_id="g",
            tokens=[1, 2, 3],
            prompt_len=2,
            loss_mask=[1, 0, 1],
            logprobs=[0, 0, 0],
            versions=[0, -1, 0],
            reward=0.0,
        )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_another_exception(data: bytes) -> None:
    with contextlib.suppress(TrajectoryDecodeError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzzed_field_values_are_rejected_or_valid(data: st.DataObject) -> None:
    payload = msgpack.unpackb(encode(make_trajectory()), raw=False)
    key = data.draw(st.sampled_from(sorted(payload)))
    payload[key] = data.draw(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(),
            st.text(),
            st.binary(),
            st.lists(st.integers(-(2**31), 2**31 - 1)),
        )
    )
    with contextlib.suppress(TrajectoryDecodeError):
        decode(msgpack.packb(payload, use_bin_type=True))

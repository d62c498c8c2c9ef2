"""The Trajectory record and its wire codec (msgpack + raw little-endian numpy bytes).

The buffer is a network boundary, so payloads are never pickled: decoding validates the
schema version, every field's type and every array's length before anything trusts it.
Optional fields added since version 1 (`error`) are read when present, so payloads of either
age decode on either side.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1
# In `versions`, the entry of every token no policy sampled (prompt, observations).
NO_VERSION = -1


class EpisodeEnd(StrEnum):
    """How an episode ended; on the wire as its value, so payloads of every age decode.
    The first three are also how one generation call ends (`Completion.finish_reason`)."""

    STOP = "stop"  # the last turn ended at a stop token or string, or the env said done
    LENGTH = "length"  # the token cap (a turn's or the episode's) cut it short
    ABORT = "abort"  # the engine aborted the last turn's request
    MAX_TURNS = "max_turns"  # the turn cap
    VOID_TURN = "void_turn"  # a turn neither called a tool nor answered: masked from the loss
    ERROR = "error"  # the environment failed (cause in `Trajectory.error`): masked from the loss

    @property
    def masked(self) -> bool:
        """Kept in its group (for the baseline) but trains no token."""
        return self in (EpisodeEnd.VOID_TURN, EpisodeEnd.ERROR)


_ARRAY_DTYPES: dict[str, np.dtype] = {
    "tokens": np.dtype("<i4"),
    "loss_mask": np.dtype("u1"),
    "logprobs": np.dtype("<f4"),
    "versions": np.dtype("<i4"),
}


class TrajectoryDecodeError(ValueError):
    """A buffer entry that is not a valid trajectory payload."""


@dataclass
class Turn:
    """One model turn and what the environment did with it."""

    start: int  # first token index of the model's span in `tokens`
    end: int  # one past the last token of the model's span
    tool: str | None = None
    tool_status: str | None = None
    duration_s: float = 0.0
    reward: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "tool": self.tool,
            "tool_status": self.tool_status,
            "duration_s": self.duration_s,
            "reward": self.reward,
        }


@dataclass
class Trajectory:
    """One episode, token-faithful: `tokens` are exactly what the model saw and sampled."""

    group_id: str
    tokens: np.ndarray  # int32[T]: prompt + every turn
    prompt_len: int
    loss_mask: np.ndarray  # uint8[T]: 1 only on tokens the policy sampled
    logprobs: np.ndarray  # float32[T]: behaviour log-probs of sampled tokens, 0 elsewhere
    versions: np.ndarray  # int32[T]: policy version per sampled token, NO_VERSION elsewhere
    reward: float
    reward_channels: dict[str, float] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)
    finish_reason: EpisodeEnd = EpisodeEnd.STOP
    timings: dict[str, float] = field(default_factory=dict)
    # finish_reason ERROR: what failed (an exception's class name, or a short typed cause).
    error: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self.tokens = np.ascontiguousarray(self.tokens, dtype=_ARRAY_DTYPES["tokens"])
        self.loss_mask = np.ascontiguousarray(self.loss_mask, dtype=_ARRAY_DTYPES["loss_mask"])
        self.logprobs = np.ascontiguousarray(self.logprobs, dtype=_ARRAY_DTYPES["logprobs"])
        self.versions = np.ascontiguousarray(self.versions, dtype=_ARRAY_DTYPES["versions"])
        self.finish_reason = _episode_end(self.finish_reason)
        _check_consistent(self)

    @property
    def num_sampled_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def sampled_versions(self) -> np.ndarray:
        return self.versions[self.loss_mask.astype(bool)]

    def staleness(self, version: int) -> np.ndarray:
        """How many versions before policy `version` each sampled token was generated."""
        return version - self.sampled_versions()


def _episode_end(value: Any) -> EpisodeEnd:
    try:
        return EpisodeEnd(value)
    except ValueError:
        raise TrajectoryDecodeError(f"finish_reason {value!r} is no EpisodeEnd") from None


def _check_consistent(traj: Trajectory) -> None:
    length = traj.tokens.shape[0]
    for name in ("loss_mask", "logprobs", "versions"):
        array = getattr(traj, name)
        if array.ndim != 1 or array.shape[0] != length:
            raise TrajectoryDecodeError(f"{name} has shape {array.shape}, expected ({length},)")
    if not 0 <= traj.prompt_len <= length:
        raise TrajectoryDecodeError(f"prompt_len {traj.prompt_len} outside [0, {length}]")
    if traj.loss_mask[: traj.prompt_len].any():
        raise TrajectoryDecodeError("loss_mask marks prompt tokens as sampled")
    if not np.isfinite(traj.logprobs).all():
        raise TrajectoryDecodeError("logprobs contain NaN or infinity")
    if not np.isfinite(traj.reward):
        raise TrajectoryDecodeError(f"reward {traj.reward} is not finite")
    if not all(np.isfinite(value) for value in traj.reward_channels.values()):
        raise TrajectoryDecodeError(f"reward channels {traj.reward_channels} are not finite")


def encode(traj: Trajectory) -> bytes:
    payload = {
        "schema": SCHEMA_VERSION,
        "id": traj.id,
        "group_id": traj.group_id,
        "task": traj.task,
        "prompt_len": traj.prompt_len,
        "reward": float(traj.reward),
        "reward_channels": {k: float(v) for k, v in traj.reward_channels.items()},
        "turns": [turn.to_wire() for turn in traj.turns],
        "finish_reason": traj.finish_reason.value,
        "timings": {k: float(v) for k, v in traj.timings.items()},
        "error": traj.error,
        **{name: getattr(traj, name).tobytes() for name in _ARRAY_DTYPES},
    }
    return msgpack.packb(payload, use_bin_type=True, default=_plain)


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays in task metadata travel as the Python values they hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} in a trajectory")


def _check_wire_values(traj: Trajectory) -> None:
    """Values a producer never writes: a payload holding them is corrupt or hostile."""
    if traj.tokens.size and traj.tokens.min() < 0:
        raise TrajectoryDecodeError(f"negative token id {int(traj.tokens.min())}")
    if traj.loss_mask.size and traj.loss_mask.max() > 1:
        raise TrajectoryDecodeError("loss_mask holds values other than 0 and 1")
    if traj.versions.size and traj.versions.min() < NO_VERSION:
        raise TrajectoryDecodeError(
            f"policy version {int(traj.versions.min())} below NO_VERSION ({NO_VERSION})"
        )


def _field(payload: dict[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    if name not in payload:
        raise TrajectoryDecodeError(f"missing field {name!r}")
    value = payload[name]
    # bool is an int subclass in Python, but no field of the schema is a flag
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TrajectoryDecodeError(f"field {name!r} has type {type(value).__name__}")
    return value


def _array(payload: dict[str, Any], name: str) -> np.ndarray:
    raw = _field(payload, name, bytes)
    dtype = _ARRAY_DTYPES[name]
    if len(raw) % dtype.itemsize:
        raise TrajectoryDecodeError(f"{name} byte length {len(raw)} not a multiple of {dtype}")
    return np.frombuffer(raw, dtype=dtype).copy()


def _turn(raw: Any) -> Turn:
    if not isinstance(raw, dict):
        raise TrajectoryDecodeError("turn record is not a map")
    return Turn(
        start=int(_field(raw, "start", int)),
        end=int(_field(raw, "end", int)),
        tool=raw.get("tool") if isinstance(raw.get("tool"), str) else None,
        tool_status=raw.get("tool_status") if isinstance(raw.get("tool_status"), str) else None,
        duration_s=float(_field(raw, "duration_s", (int, float))),
        reward=float(_field(raw, "reward", (int, float))),
    )


def decode(data: bytes) -> Trajectory:
    """Decode and validate one payload; raises TrajectoryDecodeError on anything malformed."""
    try:
        # Task metadata may key maps by integers; every schema field is still checked below.
        payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (
        ValueError,
        TypeError,  # a map keyed by a list or a map, which Python cannot hash
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise TrajectoryDecodeError(f"not a msgpack payload: {exc}") from exc
    if not isinstance(payload, dict):
        raise TrajectoryDecodeError("payload is not a map")
    schema = payload.get("schema")
    if schema != SCHEMA_VERSION:
        raise TrajectoryDecodeError(f"schema version {schema!r}, expected {SCHEMA_VERSION}")
    channels = _field(payload, "reward_channels", dict)
    timings = _field(payload, "timings", dict)
    error = payload.get("error")
    if error is not None and not isinstance(error, str):
        raise TrajectoryDecodeError(f"field 'error' has type {type(error).__name__}")
    try:
        trajectory = Trajectory(
            id=_field(payload, "id", str),
            group_id=_field(payload, "group_id", str),
            task=_field(payload, "task", dict),
            tokens=_array(payload, "tokens"),
            prompt_len=_field(payload, "prompt_len", int),
            loss_mask=_array(payload, "loss_mask"),
            logprobs=_array(payload, "logprobs"),
            versions=_array(payload, "versions"),
            reward=float(_field(payload, "reward", (int, float))),
            reward_channels={str(k): float(v) for k, v in channels.items()},
            turns=[_turn(t) for t in _field(payload, "turns", list)],
            finish_reason=_field(payload, "finish_reason", str),
            timings={str(k): float(v) for k, v in timings.items()},
            error=error,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, TrajectoryDecodeError):
            raise
        raise TrajectoryDecodeError(f"invalid field value: {exc}") from exc
    _check_wire_values(trajectory)
    return trajectory

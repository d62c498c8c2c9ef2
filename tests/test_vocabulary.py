"""One name per concept: how an episode ended (`EpisodeEnd`) on the wire and in the metrics, why
the learner discarded an entry (`DiscardReason`) in the ledger and the audit, and the metric
keys, including the one alias kept for a release."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from relayrl import metric_keys as keys
from relayrl.actors.engine import Completion
from relayrl.cluster.audit import audit_stream
from relayrl.learner import checkpoint
from relayrl.learner.batch_metrics import batch_metrics
from relayrl.learner.discard import DiscardReason, discard_metrics
from relayrl.trajectory import (
    NO_VERSION,
    EpisodeEnd,
    Trajectory,
    TrajectoryDecodeError,
    decode,
    encode,
)

STREAM = "vocabulary:trajectories"


def episode(end: EpisodeEnd | str, version: int = 3) -> Trajectory:
    return Trajectory(
        group_id="g",
        tokens=np.arange(5),
        prompt_len=2,
        loss_mask=[0, 0, 1, 1, 1],
        logprobs=[0.0, 0.0, -0.1, -0.2, -0.3],
        versions=[NO_VERSION, NO_VERSION, version, version, version],
        reward=1.0,
        finish_reason=end,
    )


def test_every_episode_end_round_trips_as_its_plain_string_value() -> None:
    for end in EpisodeEnd:
        payload = msgpack.unpackb(encode(episode(end)), raw=False)
        assert payload["finish_reason"] == end.value and type(payload["finish_reason"]) is str
        assert decode(encode(episode(end))).finish_reason is end


def test_entries_written_before_the_enum_decode_and_an_unknown_end_is_a_decode_error() -> None:
    """Producers wrote `finish_reason` as a bare string under the same schema version."""
    payload = msgpack.unpackb(encode(episode(EpisodeEnd.MAX_TURNS)), raw=False)
    payload["finish_reason"] = "max_turns"
    del payload["error"]  # entries from before `error` existed
    assert decode(msgpack.packb(payload, use_bin_type=True)).finish_reason is EpisodeEnd.MAX_TURNS
    payload["finish_reason"] = "exploded"
    with pytest.raises(TrajectoryDecodeError, match="finish_reason"):
        decode(msgpack.packb(payload, use_bin_type=True))


def test_masked_ends_train_no_token_and_a_generation_ends_only_as_an_engine_can() -> None:
    assert {end for end in EpisodeEnd if end.masked} == {EpisodeEnd.VOID_TURN, EpisodeEnd.ERROR}
    assert Completion([1], [-0.5], "stop").finish_reason is EpisodeEnd.STOP
    with pytest.raises(ValueError, match="cannot end"):
        Completion([1], [-0.5], EpisodeEnd.MAX_TURNS)


def test_staleness_is_the_lag_of_each_sampled_token_and_feeds_the_metrics() -> None:
    old, new = episode(EpisodeEnd.STOP, version=1), episode(EpisodeEnd.LENGTH, version=3)
    assert old.staleness(4).tolist() == [3, 3, 3]
    metrics = batch_metrics([old, new], version=4)
    assert metrics[keys.STALENESS_MAX] == 3 and metrics[keys.BATCH_MIN_TOKEN_VERSION] == 1
    assert metrics[keys.staleness_hist(1)] == 3 and metrics[keys.staleness_hist(3)] == 3
    assert metrics[keys.episode_end(EpisodeEnd.LENGTH)] == 0.5
    assert metrics[keys.RESPONSE_TRUNCATED_FRACTION] == 0.5


def test_discard_metrics_keep_the_pre_0_2_filter_name_beside_the_new_one() -> None:
    metrics = discard_metrics({DiscardReason.ZERO_VARIANCE: 2, DiscardReason.STALE: 4}, 7)
    assert metrics == {
        keys.STALENESS_DISCARDED_OLDEST_VERSION: 7,
        "discarded/dynamic_sampling": 2,
        "discarded/stale": 4,
        keys.DISCARDED_TOTAL: 6,
        keys.FILTER_DISCARDED: 2,
        "filter/dropped_trajectories": 2,
    }


def _commit_ledger(root: Path, records: list[dict]) -> None:
    checkpoint.append_ledger(root, records)
    folder = checkpoint.step_dir(root, len(records))
    folder.mkdir(parents=True)
    checkpoint.write_state(folder, {"step": len(records), "version": len(records)})
    checkpoint.mark_latest(root, folder)


def test_the_audit_reads_reasons_as_discard_reasons_and_flags_one_it_does_not_know(
    redis_server, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    legacy = {"step": 1, "entry_ids": ["1-0", "1-1"], "trajectory_ids": ["a"], "discarded": {}}
    named = {
        "step": 2,
        "entry_ids": ["2-0", "2-1"],
        "trajectory_ids": [],
        "discarded": {"stale": ["b"], "dynamic_sampling": ["c"]},
        "discarded_entry_ids": {"stale": ["2-0"], "dynamic_sampling": ["2-1"]},
    }
    _commit_ledger(tmp_path, [legacy, named])
    report = audit_stream(client, STREAM, tmp_path)
    assert report.discarded == {
        DiscardReason.UNNAMED: 1,
        DiscardReason.STALE: 1,
        DiscardReason.ZERO_VARIANCE: 1,
    }
    assert report.ok and report.trained == 1

    unknown = {
        "step": 3,
        "entry_ids": ["3-0"],
        "trajectory_ids": [],
        "discarded": {"cosmic_ray": ["d"]},
        "discarded_entry_ids": {"cosmic_ray": ["3-0"]},
    }
    _commit_ledger(tmp_path / "other", [legacy, named, unknown])
    flagged = audit_stream(client, STREAM, tmp_path / "other")
    assert not flagged.ok and flagged.unknown_reasons == {"cosmic_ray": 1}
    assert any("cosmic_ray" in line for line in flagged.lines())

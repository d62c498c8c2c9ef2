"""Each window of issue 12 reproduced against the real Redis and the real learner intake, then
checked with the audit: every entry trained once, discarded or dead-lettered with a reason, or
still pending; no trajectory trained twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from relayrl import faults
from relayrl.cli import main as cli_main
from relayrl.cluster.audit import audit_stream
from relayrl.cluster.redis_buffer import (
    GROUP_FIELD,
    ID_FIELD,
    PAYLOAD_FIELD,
    RedisStreamBuffer,
    write_buffer_location,
)
from relayrl.learner import checkpoint
from relayrl.learner.intake import IN_FLIGHT_FILE, MAX_STEP_ATTEMPTS, BatchIntake
from relayrl.trajectory import Trajectory, encode
from tests.fault_proxy import FaultProxy
from tests.trajectories import trajectory

STREAM = "once:stream"


def traj(group: str, traj_id: str, version: int = 0, tokens: list[int] | None = None):
    return trajectory(
        group,
        version=version,
        tokens=tokens or [1, 2, 3, 4],
        reward=float(len(traj_id)),
        traj_id=traj_id,
    )


def group(name: str, version: int = 0) -> list[Trajectory]:
    return [traj(name, f"{name}1", version), traj(name, f"{name}2", version)]


class CountingRefill:
    """The SampleRefill seam, counting what the intake reports."""

    def __init__(self) -> None:
        self.total = 0

    def booked(self, count: int) -> None:
        self.total += count


def make(url: str, root: Path, prompts: int = 1, on_idle=None, **kwargs):
    buffer = RedisStreamBuffer(url, STREAM, trim_acknowledged=False)
    buffer.ensure_group()
    refill = CountingRefill()
    intake = BatchIntake(
        buffer,
        2,
        prompts,
        kwargs.pop("max_staleness", None),
        kwargs.pop("timeout", 3.0),
        read_block_ms=50,
        refill=refill,
        on_idle=on_idle,
        root=root,
        **kwargs,
    )
    return buffer, intake, refill


def commit(intake: BatchIntake, root: Path, step: int) -> None:
    folder = checkpoint.step_dir(root, step)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.write_state(folder, {"step": step, "version": step})
    intake.commit(folder)


def client_of(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def assert_invariant(url: str, root: Path, **expected: int) -> None:
    report = audit_stream(client_of(url), STREAM, root)
    assert report.ok, "\n".join(report.lines())
    for name, value in expected.items():
        assert getattr(report, name) == value, "\n".join(report.lines())


def test_reconnect_mid_batch_replays_nothing_twice(redis_server, tmp_path, caplog):
    """A read whose reply is lost makes the buffer reconnect and re-read this consumer's
    pending entries from "0": the group already in the batch must not be appended again."""
    calls = []
    with FaultProxy(redis_server.port) as proxy:
        url = proxy.url_for(redis_server.url)

        def on_idle() -> None:
            calls.append(1)
            if len(calls) == 2:  # group a is in the batch being built
                buffer.push(group("b"))
                proxy.cut_reply_after(b"XREADGROUP")

        buffer, intake, _ = make(url, tmp_path, prompts=2, on_idle=on_idle)
        buffer.push(group("a"))
        batch = intake.next_batch(0)
        assert proxy.cut_done.is_set()
        assert [e.trajectory.id for e in batch] == ["a1", "a2", "b1", "b2"]
        assert "redis unavailable" in caplog.text  # the read did go through a reconnect
        assert intake.record_step(1, batch) == {}
        commit(intake, tmp_path, 1)
    assert_invariant(redis_server.url, tmp_path, trained=4, pending=0)


def test_retried_push_arriving_while_the_batch_fills_is_booked_as_duplicate(redis_server, tmp_path):
    holder: dict[str, RedisStreamBuffer] = {}
    calls = []

    def on_idle() -> None:
        calls.append(1)
        if len(calls) == 2:
            holder["buffer"].push(group("a"))  # the copy of a push whose EXEC reply was lost
            holder["buffer"].push(group("b"))

    buffer, intake, refill = make(redis_server.url, tmp_path, prompts=2, on_idle=on_idle)
    holder["buffer"] = buffer
    buffer.push(group("a"))
    batch = intake.next_batch(0)
    assert [e.trajectory.id for e in batch] == ["a1", "a2", "b1", "b2"]
    assert intake.record_step(1, batch) == {"duplicate": 2}
    assert buffer.backlog() == 0  # copies and trained entries are booked: no slot leaks
    assert refill.total == 6
    commit(intake, tmp_path, 1)
    assert_invariant(redis_server.url, tmp_path, trained=4, discarded={"duplicate": 2}, pending=0)


def test_duplicate_meeting_its_original_in_the_assembler_is_booked_and_acked(
    redis_server, tmp_path
):
    buffer, intake, _ = make(redis_server.url, tmp_path)
    first, second = group("a")
    buffer.push([first])
    buffer.push([first])  # the retry of the first push, while the group is incomplete
    buffer.push([second])
    batch = intake.next_batch(0)
    assert [e.trajectory.id for e in batch] == ["a1", "a2"]
    assert intake.record_step(1, batch) == {"duplicate": 1}
    commit(intake, tmp_path, 1)
    assert buffer.stats().pending == 0  # nothing pinned: the stream can be trimmed
    assert_invariant(redis_server.url, tmp_path, trained=2, pending=0)


def test_commit_interrupted_before_the_acks_is_not_booked_twice(redis_server, tmp_path):
    buffer, intake, _ = make(redis_server.url, tmp_path)
    buffer.push(group("a"))
    intake.record_step(1, intake.next_batch(0))
    faults.arm("after_latest_before_acks:raise")
    try:
        with pytest.raises(faults.FaultInjected):
            commit(intake, tmp_path, 1)
    finally:
        faults.arm("")
    assert buffer.stats().pending == 2
    assert_invariant(redis_server.url, tmp_path, trained=2, awaiting_ack=2, pending=0)

    buffer, resumed, _ = make(redis_server.url, tmp_path)
    buffer.push(group("b"))
    batch = resumed.next_batch(1)
    assert [e.trajectory.id for e in batch] == ["b1", "b2"]
    assert buffer.stats().pending == 2  # a's entries were acknowledged, not booked again
    resumed.record_step(2, batch)
    commit(resumed, tmp_path, 2)
    ledger = checkpoint.read_ledger(tmp_path)
    assert [r["trajectory_ids"] for r in ledger] == [["a1", "a2"], ["b1", "b2"]]
    assert all(not r["discarded"] for r in ledger)
    assert_invariant(redis_server.url, tmp_path, trained=4, pending=0, awaiting_ack=0)


def test_crash_after_the_ledger_before_latest_retrains_the_step(redis_server, tmp_path):
    buffer, intake, _ = make(redis_server.url, tmp_path)
    buffer.push(group("a"))
    intake.record_step(1, intake.next_batch(0))
    faults.arm("after_ledger_before_latest:raise")
    try:
        with pytest.raises(faults.FaultInjected):
            commit(intake, tmp_path, 1)
    finally:
        faults.arm("")
    assert_invariant(redis_server.url, tmp_path, trained=0, pending=2)
    _, resumed, _ = make(redis_server.url, tmp_path)
    batch = resumed.next_batch(0)  # no checkpoint: the ledger is truncated, a is trained again
    assert [e.trajectory.id for e in batch] == ["a1", "a2"]
    assert checkpoint.read_ledger(tmp_path) == []
    resumed.record_step(1, batch)
    commit(resumed, tmp_path, 1)
    assert_invariant(redis_server.url, tmp_path, trained=2, pending=0)


def test_torn_last_ledger_line_is_dropped(tmp_path):
    checkpoint.append_ledger(tmp_path, [{"step": 1, "entry_ids": [], "trajectory_ids": []}])
    with (tmp_path / checkpoint.LEDGER_FILE).open("a") as ledger:
        ledger.write('{"step": 2, "entry_ids": ["1-')
    assert [r["step"] for r in checkpoint.read_ledger(tmp_path)] == [1]
    folder = checkpoint.step_dir(tmp_path, 1)
    folder.mkdir()
    checkpoint.write_state(folder, {"step": 1, "version": 1})
    checkpoint.mark_latest(tmp_path, folder)
    assert checkpoint.truncate_ledger(tmp_path, 1) == checkpoint.read_ledger(tmp_path)
    assert (tmp_path / checkpoint.LEDGER_FILE).read_text().count("\n") == 1
    assert checkpoint.latest_checkpoint(tmp_path) == folder
    assert not list(tmp_path.glob(".*.tmp"))


def test_groups_from_a_lost_timeline_are_discarded_with_a_reason(redis_server, tmp_path):
    buffer, intake, _ = make(redis_server.url, tmp_path)
    buffer.push(group("future", version=5))  # sampled by a policy a crash threw away
    buffer.push(group("now", version=2))
    batch = intake.next_batch(2)
    assert [e.trajectory.id for e in batch] == ["now1", "now2"]
    assert intake.record_step(3, batch) == {"lost_timeline": 2}
    commit(intake, tmp_path, 3)
    assert_invariant(redis_server.url, tmp_path, trained=2, discarded={"lost_timeline": 2})


def train_beside_a_broken_group(buffer, intake, url: str, root: Path) -> None:
    """Group "p" has one member dead-lettered and one sound: train on group "a" pushed next,
    and check that the sound member of "p" is discarded (it can never be complete, so it must
    neither wait for ever nor keep an admission slot) and everything is accounted."""
    buffer.push(group("a"))
    batch = intake.next_batch(0)
    assert [e.trajectory.id for e in batch] == ["a1", "a2"]
    assert intake.record_step(1, batch) == {"incomplete_group": 1}
    assert buffer.backlog() == 0
    commit(intake, root, 1)
    assert_invariant(
        url, root, trained=2, dead_lettered=1, pending=0, discarded={"incomplete_group": 1}
    )


def test_token_ids_outside_the_vocabulary_are_dead_lettered(redis_server, tmp_path):
    buffer, intake, _ = make(redis_server.url, tmp_path, vocab_size=10)
    poison = [traj("p", "p1", tokens=[1, 2, 99, 3]), traj("p", "p2")]
    buffer.push(poison)
    train_beside_a_broken_group(buffer, intake, redis_server.url, tmp_path)
    dead = client_of(redis_server.url).xrange(buffer.dead_letter_stream)
    assert [f[b"reason"] for _, f in dead] == [
        b"token ids span [1, 99], outside the vocabulary of 10"
    ]


def test_a_member_that_cannot_be_decoded_still_breaks_its_group(redis_server, tmp_path):
    buffer, intake, _ = make(redis_server.url, tmp_path)
    buffer.push([traj("p", "p1")])
    # A payload nothing can decode, under the fields a producer writes.
    client_of(redis_server.url).xadd(
        STREAM, {ID_FIELD: b"p2", GROUP_FIELD: b"p", PAYLOAD_FIELD: b"\xc1 not msgpack"}
    )
    train_beside_a_broken_group(buffer, intake, redis_server.url, tmp_path)


def test_a_batch_that_keeps_crashing_the_step_is_quarantined(redis_server, tmp_path):
    buffer, _, _ = make(redis_server.url, tmp_path)
    buffer.push(group("poison"))
    for _ in range(MAX_STEP_ATTEMPTS):
        _, crashing, _ = make(redis_server.url, tmp_path)
        assert [e.trajectory.id for e in crashing.next_batch(0)] == ["poison1", "poison2"]
        # the step dies here (an exception, a device assert, OOM): nothing is recorded
    saved = json.loads((tmp_path / IN_FLIGHT_FILE).read_text())
    assert len(saved["batch"]) == 2
    buffer.push(group("a"))
    _, intake, _ = make(redis_server.url, tmp_path)
    batch = intake.next_batch(0)
    assert [e.trajectory.id for e in batch] == ["a1", "a2"]
    reasons = {f[b"reason"] for _, f in client_of(redis_server.url).xrange(f"{STREAM}:dead")}
    assert reasons == {b"quarantined: in a batch whose training step failed 3 times"}
    intake.record_step(1, batch)
    commit(intake, tmp_path, 1)
    assert_invariant(redis_server.url, tmp_path, trained=2, dead_lettered=2, pending=0)


def test_dead_letters_leave_the_backlog_and_are_counted_once(redis_server, tmp_path):
    buffer, intake, _ = make(redis_server.url, tmp_path)
    client = client_of(redis_server.url)
    client.xadd(STREAM, {PAYLOAD_FIELD: b"\x93garbage"})
    client.incr(buffer.added_key)  # as push counts what it adds
    buffer.push(group("a"))
    assert buffer.backlog() == 3
    batch = intake.next_batch(0)
    assert buffer.backlog() == 2  # the dead letter gave its slot back at once
    intake.record_step(1, batch)
    assert buffer.backlog() == 0
    commit(intake, tmp_path, 1)
    assert buffer.dead_letter(batch[0].entry_id, "again") is False  # no longer pending
    report = audit_stream(client, STREAM, tmp_path)
    assert report.dead_lettered == 1 and report.added == 3


def test_retention_never_evicts_unread_or_uncommitted_entries(redis_server, tmp_path):
    buffer = RedisStreamBuffer(redis_server.url, STREAM, maxlen=3, trim_acknowledged=False)
    buffer.ensure_group()
    pushed = [buffer.push(group(f"g{i}")) for i in range(5)]  # 10 entries, over maxlen
    assert client_of(redis_server.url).xlen(STREAM) == 10  # XADD evicts nothing
    entries = buffer.read(4, block_ms=10)
    buffer.ack([e.entry_id for e in entries[:2]])
    # maxlen asks for 3 kept, but 8 are pending or unread: only the acknowledged 2 go.
    assert client_of(redis_server.url).xlen(STREAM) == 8
    buffer.ack([e.entry_id for e in entries[2:]])
    assert client_of(redis_server.url).xlen(STREAM) == 6
    assert pushed[2][0] == client_of(redis_server.url).xrange(STREAM, count=1)[0][0].decode()


def test_acknowledged_entries_are_trimmed_whatever_the_commit_cadence(redis_server, tmp_path):
    buffer = RedisStreamBuffer(redis_server.url, STREAM)
    buffer.ensure_group()
    intake = BatchIntake(buffer, 2, 1, None, 3.0, read_block_ms=50, root=tmp_path)
    for step in range(1, 4):
        buffer.push(group(f"g{step}"))
        intake.record_step(step, intake.next_batch(step - 1))
    commit(intake, tmp_path, 3)
    assert client_of(redis_server.url).xlen(STREAM) == 0
    assert_invariant(redis_server.url, tmp_path, trained=6, pending=0, undelivered=0)


def test_audit_finds_an_entry_acknowledged_without_a_ledger_record(redis_server, tmp_path):
    buffer, _, _ = make(redis_server.url, tmp_path)
    buffer.push(group("a"))
    entries = buffer.read(10, block_ms=10)
    buffer.ack([entries[0].entry_id])  # acknowledged, booked nowhere: lost
    report = audit_stream(client_of(redis_server.url), STREAM, tmp_path)
    assert not report.ok and report.unaccounted == [entries[0].entry_id]
    assert report.pending == 1


def test_relayrl_audit_command_exit_status(redis_server, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("name: once\n")
    write_buffer_location(out, redis_server.url, STREAM)
    buffer, intake, _ = make(redis_server.url, out / "checkpoints")
    buffer.push(group("a"))
    intake.record_step(1, intake.next_batch(0))
    commit(intake, out / "checkpoints", 1)
    assert cli_main(["audit", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained        2" in printed and "invariant holds" in printed
    # An entry acknowledged by hand, never booked, breaks the invariant.
    buffer.push(group("b"))
    entry = buffer.read(10, block_ms=10)[0]
    buffer.ack([entry.entry_id])
    assert cli_main(["audit", str(out)]) == 1
    assert "INVARIANT VIOLATED" in capsys.readouterr().out


def test_fault_point_kill_ends_the_process(tmp_path):
    code = "from relayrl.faults import fault_point; fault_point('mid_publish'); print('alive')"
    env = {"RELAYRL_FAULT": "mid_publish:kill", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert done.returncode == -9 and b"alive" not in done.stdout
    env["RELAYRL_FAULT"] = "mid_publish:raise@2"
    code = "from relayrl.faults import fault_point as f\nf('mid_publish')\nprint(1)\n" * 2
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert done.stdout == b"1\n" and b"FaultInjected" in done.stderr
    with pytest.raises(ValueError, match="unknown fault"):
        faults.arm("no_such_point:kill")


def test_codec_round_trips_numpy_scalars_and_integer_keys() -> None:
    from relayrl.trajectory import decode

    trajectory = traj("m", "m1")
    trajectory.task = {"answer": np.int64(7), "scores": {1: np.float32(0.5)}, "v": np.arange(2)}
    back = decode(encode(trajectory))
    assert back.task == {"answer": 7, "scores": {1: 0.5}, "v": [0, 1]}


def test_decode_refuses_values_no_producer_writes() -> None:
    from relayrl.trajectory import TrajectoryDecodeError, decode

    bad_mask = traj("m", "m1")
    bad_mask.loss_mask[1] = 2
    with pytest.raises(TrajectoryDecodeError, match="loss_mask"):
        decode(encode(bad_mask))
    negative = traj("m", "m2")
    negative.tokens[0] = -4
    with pytest.raises(TrajectoryDecodeError, match="negative token"):
        decode(encode(negative))


def test_dead_letter_stream_is_trimmed_and_its_count_kept(redis_server, tmp_path, monkeypatch):
    from relayrl.cluster import redis_buffer

    monkeypatch.setattr(redis_buffer, "DEAD_LETTER_MAXLEN", 10)
    buffer = RedisStreamBuffer(redis_server.url, STREAM)
    buffer.ensure_group()
    client = client_of(redis_server.url)
    for _ in range(300):
        client.xadd(STREAM, {PAYLOAD_FIELD: b"\x93junk"})
    client.incrby(buffer.added_key, 300)
    while buffer.read(100, block_ms=10) or buffer.stats().undelivered:
        pass
    assert client.xlen(buffer.dead_letter_stream) < 300  # trimmed (approximately) to its bound
    assert_invariant(redis_server.url, tmp_path, dead_lettered=300, pending=0, undelivered=0)


def test_stream_memory_is_measured_for_the_budget(redis_server) -> None:
    buffer = RedisStreamBuffer(redis_server.url, STREAM)
    buffer.ensure_group()
    empty = buffer.memory_bytes()
    for i in range(20):
        buffer.push(group(f"m{i}"))
    assert buffer.memory_bytes() > empty

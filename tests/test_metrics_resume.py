"""metrics.jsonl across a resume: one record per step."""

from __future__ import annotations

from pathlib import Path

from relayrl.metrics import MetricsWriter, read_metrics


def steps_of(folder: Path) -> list[int]:
    return [record["step"] for record in read_metrics(folder / "metrics.jsonl")]


def test_records_of_steps_past_the_resume_point_are_dropped(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 6):
        writer.write(step, {"reward": float(step)})
    writer.close()
    # The run crashed after step 5's record; its last checkpoint was step 3.
    resumed = MetricsWriter(tmp_path, tensorboard=False, after_step=3)
    for step in (4, 5, 6):
        resumed.write(step, {"reward": 10.0 * step})
    resumed.close()
    assert steps_of(tmp_path) == [1, 2, 3, 4, 5, 6]
    rewards = [r["reward"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert rewards == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]


def test_a_torn_last_record_is_dropped_on_resume(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write(1, {"reward": 1.0})
    writer.close()
    with (tmp_path / "metrics.jsonl").open("a") as jsonl:
        jsonl.write('{"step": 2, "rew')
    resumed = MetricsWriter(tmp_path, tensorboard=False, after_step=1)
    resumed.write(2, {"reward": 2.0})
    resumed.close()
    assert steps_of(tmp_path) == [1, 2]


def test_without_a_resume_point_records_are_appended(tmp_path: Path) -> None:
    for step in (1, 2):
        writer = MetricsWriter(tmp_path, tensorboard=False)
        writer.write(step, {})
        writer.close()
    assert steps_of(tmp_path) == [1, 2]

"""Per-step training metrics as JSON lines, TensorBoard events when enabled, and the
experiment trackers of `output.loggers` (W&B, MLflow) when configured."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relayrl.trackers import Tracker


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among `metrics`: what a chart can draw."""
    return {
        key: value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _kept_lines(path: Path, after_step: int) -> list[str]:
    """The complete records of steps up to `after_step`; a torn line (a crash mid-write) goes."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= after_step:
            kept.append(line + "\n")
    return kept


class MetricsWriter:
    """`after_step`: the step a run resumes after. Records of later steps were written before
    a crash that lost those steps; they are trained again, so their old records are dropped
    and every step has one record."""

    def __init__(
        self,
        folder: Path,
        tensorboard: bool,
        trackers: Sequence[Tracker] = (),
        after_step: int | None = None,
    ) -> None:
        self._trackers = list(trackers)
        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = folder / "metrics.jsonl"
        if after_step is not None and self.jsonl_path.is_file():
            kept = _kept_lines(self.jsonl_path, after_step)
            scratch = self.jsonl_path.with_name(".metrics.jsonl.tmp")
            scratch.write_text("".join(kept))
            scratch.replace(self.jsonl_path)
        self._jsonl = self.jsonl_path.open("a")
        self._tb = None
        if tensorboard:
            from relayrl.tensorboard_events import ScalarEventWriter

            self.tensorboard_dir = folder / "tensorboard"
            self._tb = ScalarEventWriter(str(self.tensorboard_dir))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        self._jsonl.flush()
        charted = numeric(metrics)
        if self._tb is not None:
            for key, value in charted.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        for tracker in self._trackers:
            tracker.log(step, charted)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        for tracker in self._trackers:
            tracker.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records

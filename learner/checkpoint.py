"""Checkpoint folders: Hugging Face weights (loadable by transformers as is), the DeepSpeed
engine state for resuming, and a small JSON of the learner's own position.

Everything the commit depends on is durable before the next step of the commit: files are
written to a temporary name, fsynced, renamed, and their folder fsynced (a rename is only
durable once the directory entry is), so a power cut leaves the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from relayrl.errors import JobConfigError

log = logging.getLogger(__name__)

STATE_FILE = "learner_state.json"
# The state key of the ZeRO stage the engine state was saved at.
ZERO_STAGE_KEY = "zero_stage"
# DeepSpeed's engine state in a checkpoint folder (its save tag is "engine").
ENGINE_DIR = Path("deepspeed") / "engine"
LATEST_FILE = "latest"
LEDGER_FILE = "ledger.jsonl"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    scratch = path.parent / f".{path.name}.tmp"
    with scratch.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)
    fsync_dir(path.parent)


def sync_tree(folder: Path) -> None:
    """Make files written by others (transformers, DeepSpeed) durable before `latest`."""
    for current, _, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(current) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(current))
    fsync_dir(folder.parent)


def write_state(folder: Path, state: dict[str, Any]) -> None:
    write_atomically(folder / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


def mark_latest(root: Path, folder: Path) -> None:
    """Point `latest` at a folder only after everything in it is durable."""
    sync_tree(folder)
    write_atomically(root / LATEST_FILE, folder.name)


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / LATEST_FILE
    if not marker.is_file():
        return None
    folder = root / marker.read_text().strip()
    return folder if (folder / STATE_FILE).is_file() else None


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_FILE).read_text())


class ZeroStageMismatchError(JobConfigError):
    """A checkpoint's engine state was saved at a ZeRO stage this job cannot load it at."""


def checkpoint_format(zero_stage: int) -> str:
    """DeepSpeed's engine-state layout of a stage: ZeRO-1 and ZeRO-2 share one optimizer and its
    files (each loads the other's), ZeRO-0 keeps the optimizer with the model, ZeRO-3 shards
    the parameters too."""
    return {0: "unpartitioned", 1: "partitioned optimizer", 2: "partitioned optimizer"}.get(
        zero_stage, "partitioned parameters"
    )


def _saved_stage(folder: Path, state: dict[str, Any]) -> tuple[int, str] | None:
    """The stage the engine state was saved at, and how to name it: recorded in the state,
    else read from DeepSpeed's file names (checkpoints from before stages were recorded,
    where ZeRO-1 and ZeRO-2 look alike)."""
    recorded = state.get(ZERO_STAGE_KEY)
    if recorded is not None:
        return int(recorded), str(recorded)
    names = {path.name for path in (folder / ENGINE_DIR).glob("*.pt")}
    if any(name.startswith("zero_pp_rank_") and "model_states" in name for name in names):
        return 3, "3"
    if any(name.startswith("zero_pp_rank_") for name in names):
        return 2, "1 or 2"
    return (0, "0") if names else None


def check_zero_stage(folder: Path, state: dict[str, Any], zero_stage: int) -> None:
    """Refuse to resume `folder` at `zero_stage` when DeepSpeed cannot load its engine state
    there (DeepSpeed itself fails deep in its optimizer, naming nothing)."""
    saved = _saved_stage(folder, state)
    if saved is None or checkpoint_format(saved[0]) == checkpoint_format(zero_stage):
        return
    stage, named = saved
    raise ZeroStageMismatchError(
        f"learner.zero_stage: the checkpoint {folder} was saved at ZeRO stage {named} and "
        f"this job runs at stage {zero_stage}, which cannot load it; resume with "
        f"learner.zero_stage={stage}"
    )


def check_resumable(root: Path, zero_stage: int) -> None:
    """check_zero_stage on the checkpoint `latest` under `root` names, if any: the driver's
    check before it starts anything."""
    latest = latest_checkpoint(root)
    if latest is not None:
        check_zero_stage(latest, read_state(latest), zero_stage)


def committed_step(root: Path) -> int:
    """The step of the checkpoint `latest` names; 0 when there is none."""
    latest = latest_checkpoint(root)
    return int(read_state(latest)["step"]) if latest is not None else 0


def prune(root: Path, keep: int) -> None:
    latest = latest_checkpoint(root)
    folders = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in folders[:-keep] if keep else folders:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def append_ledger(root: Path, records: list[dict[str, Any]]) -> None:
    """Record which trajectory ids each committed step trained on, durably, before the
    buffer entries are acknowledged: the audit trail that nothing was lost or used twice."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LEDGER_FILE
    created = not path.exists()
    with path.open("a") as ledger:
        for record in records:
            ledger.write(json.dumps(record, sort_keys=True) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())
    if created:
        fsync_dir(root)


def read_ledger(root: Path) -> list[dict[str, Any]]:
    """Every complete record. A torn last line (a crash mid-append) was never committed:
    `latest` is written after the ledger, so it is dropped, never an error."""
    path = root / LEDGER_FILE
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise
            log.warning("dropping the torn last line of %s (a crash mid-append)", path)
    return records


def committed_ledger(root: Path) -> list[dict[str, Any]]:
    """The ledger records `latest` covers: later ones belong to a step that was lost."""
    step = committed_step(root)
    return [record for record in read_ledger(root) if record["step"] <= step]


def truncate_ledger(root: Path, step: int) -> list[dict[str, Any]]:
    """Keep only records of steps up to `step` (those a restored checkpoint contains)."""
    kept = [record for record in read_ledger(root) if record["step"] <= step]
    root.mkdir(parents=True, exist_ok=True)
    write_atomically(
        root / LEDGER_FILE, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept)
    )
    return kept

"""Checkpoint folders: Hugging Face weights (loadable by transformers as is), the DeepSpeed
engine state for resuming, and a small JSON of the learner's own position."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "learner_state.json"
LATEST_FILE = "latest"
LEDGER_FILE = "ledger.jsonl"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def write_state(folder: Path, state: dict[str, Any]) -> None:
    scratch = folder / f".{STATE_FILE}.tmp"
    scratch.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(scratch, folder / STATE_FILE)


def mark_latest(root: Path, folder: Path) -> None:
    """Point `latest` at a folder only after everything in it is written."""
    scratch = root / f".{LATEST_FILE}.tmp"
    scratch.write_text(folder.name)
    os.replace(scratch, root / LATEST_FILE)


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / LATEST_FILE
    if not marker.is_file():
        return None
    folder = root / marker.read_text().strip()
    return folder if (folder / STATE_FILE).is_file() else None


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_FILE).read_text())


def prune(root: Path, keep: int) -> None:
    latest = latest_checkpoint(root)
    folders = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in folders[:-keep] if keep else folders:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def append_ledger(root: Path, records: list[dict[str, Any]]) -> None:
    """Record which trajectory ids each committed step trained on, durably, before the
    buffer entries are acknowledged: the audit trail that nothing was lost or used twice."""
    with (root / LEDGER_FILE).open("a") as ledger:
        for record in records:
            ledger.write(json.dumps(record, sort_keys=True) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())


def read_ledger(root: Path) -> list[dict[str, Any]]:
    path = root / LEDGER_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_ledger(root: Path, step: int) -> list[dict[str, Any]]:
    """Keep only records of steps up to `step` (those a restored checkpoint contains)."""
    kept = [record for record in read_ledger(root) if record["step"] <= step]
    scratch = root / f".{LEDGER_FILE}.tmp"
    with scratch.open("w") as ledger:
        for record in kept:
            ledger.write(json.dumps(record, sort_keys=True) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())
    os.replace(scratch, root / LEDGER_FILE)
    return kept

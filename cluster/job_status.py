"""A job's status snapshot (what `relayrl status` shows): built by the driver after every step,
held by its job control actor while it runs, and kept in `OUTPUT/status.json` once it ends."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from relayrl import metric_keys as keys
from relayrl.learner.checkpoint import latest_checkpoint, read_ledger
from relayrl.metrics import read_metrics

STATUS_FILE = "status.json"


def status_from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures of one step's metrics record that the status shows."""
    return {
        "step": metrics[keys.STEP],
        "version": metrics[keys.VERSION],
        "buffer": {
            "queue_depth": metrics.get(keys.BUFFER_QUEUE_DEPTH),
            "pending": metrics.get(keys.BUFFER_PENDING),
            "dead_letters": metrics.get(keys.BUFFER_DEAD_LETTERS),
        },
        "tokens_per_s": {
            "generated": metrics.get(keys.PIPELINE_ROLLOUT_TOKENS_PER_S),
            "trained": metrics.get(keys.PIPELINE_LEARNER_TOKENS_PER_S),
        },
        "staleness": {
            "max": metrics.get(keys.STALENESS_MAX),
            "mean": metrics.get(keys.STALENESS_MEAN),
        },
        "idle_fraction": {
            "workers": metrics.get(keys.PIPELINE_WORKER_IDLE_FRACTION),
            "learner": metrics.get(keys.PIPELINE_LEARNER_IDLE_FRACTION),
        },
    }


def with_engine_versions(
    roster: list[dict[str, Any]], reports: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The fleet's roster, each worker with the policy version its engine holds."""
    versions = {r["worker_id"]: r.get("engine_version") for r in reports}
    return [{**w, "engine_version": versions.get(w["worker_id"])} for w in roster]


def write_status_file(output_dir: Path, status: dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    path = output_dir / STATUS_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({**status, "updated_at": time.time()}, indent=1))
    os.replace(partial, path)


def status_from_output(output_dir: Path) -> dict[str, Any]:
    """A job that is not running, from what it left: status.json, the last metrics record,
    the latest checkpoint and the ledger."""
    status: dict[str, Any] = {"state": "not started"}
    metrics_path = output_dir / "metrics.jsonl"
    if metrics_path.is_file() and (records := read_metrics(metrics_path)):
        status |= status_from_metrics(records[-1])
    path = output_dir / STATUS_FILE
    if path.is_file():
        # The driver's own last word wins: it saw the buffer after the final checkpoint.
        status |= json.loads(path.read_text())
        # A driver killed outright never wrote its end; one on a cluster this host cannot
        # reach looks the same from here.
        if status.get("state") in ("starting", "running", "stopping"):
            status["state"] = f"unreachable (last reported {status['state']})"
    checkpoints = output_dir / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    status["checkpoint"] = str(latest) if latest else None
    if steps := read_ledger(checkpoints):
        status["ledger"] = {
            "steps": len(steps),
            "trained": sum(len(s["trajectory_ids"]) for s in steps),
        }
    return status


def _figure(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_status(status: dict[str, Any]) -> list[str]:
    """The snapshot as lines for a terminal."""
    total = status.get("total")
    lines = [
        f"{status.get('job', '?')}: {status['state']}, step {status.get('step', 0)}"
        + (f"/{total}" if total else "")
        + f", policy version {status.get('version', 0)}",
    ]
    if status.get("checkpoint"):
        lines.append(f"  checkpoint: {status['checkpoint']}")
    buffer = status.get("buffer", {})
    lines.append(
        f"  buffer: queue depth {_figure(buffer.get('queue_depth'))}, pending "
        f"{_figure(buffer.get('pending'))}, dead letters {_figure(buffer.get('dead_letters'))}"
    )
    tokens = status.get("tokens_per_s", {})
    idle = status.get("idle_fraction", {})
    staleness = status.get("staleness", {})
    lines.append(
        f"  tokens/s: generated {_figure(tokens.get('generated'))}, trained "
        f"{_figure(tokens.get('trained'))}; staleness max {_figure(staleness.get('max'))} "
        f"mean {_figure(staleness.get('mean'), 2)}; idle: workers "
        f"{_figure(idle.get('workers'), 2)}, learner {_figure(idle.get('learner'), 2)}"
    )
    if "ledger" in status:
        ledger = status["ledger"]
        lines.append(f"  ledger: {ledger['steps']} steps, {ledger['trained']} trajectories")
    workers = status.get("workers", [])
    desired = status.get("desired_workers")
    lines.append(f"  workers: {len(workers)}" + (f" (target {desired})" if desired else ""))
    for worker in workers:
        lines.append(
            f"    {worker['worker_id']}: {worker['state']}, engine version "
            f"{_figure(worker.get('engine_version'))}, restarts {worker['restarts']}"
        )
    errors = status.get("errors", [])
    if errors:
        lines.append("  last errors:")
        lines.extend(f"    {e['worker_id']}: {e['error']}" for e in errors)
    return lines

"""The end-of-run report: one self-contained HTML page (PNG charts embedded as data URIs)
with reward and eval, throughput, staleness, idle fractions and workers over wall time."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from relayrl.metrics import read_metrics
from relayrl.plot import draw_rewards, pyplot

# (chart title, y label, metric keys): every chart after the reward one.
CHARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "Throughput",
        "tokens / s",
        ("pipeline/rollout_tokens_per_s", "pipeline/learner_tokens_per_s"),
    ),
    ("Trajectories generated", "trajectories / s", ("pipeline/rollout_trajectories_per_s",)),
    ("Staleness of trained tokens", "policy versions", ("staleness/max", "staleness/mean")),
    (
        "Idle fractions",
        "share of wall time",
        ("pipeline/learner_idle_fraction", "pipeline/worker_idle_fraction"),
    ),
    ("Rollout workers", "workers", ("rollout/workers",)),
)


def elapsed_minutes(records: list[dict[str, Any]]) -> list[float]:
    """Wall time at the end of each step, from the steps' own durations (a resumed run's
    records continue where the last one ended)."""
    total = 0.0
    xs = []
    for record in records:
        total += float(record.get("time/step_s", 0.0))
        xs.append(total / 60.0)
    return xs


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode()


def _chart(title: str, ylabel: str, xs: list[float], draw: Any) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    draw(ax)
    ax.set_title(title)
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    encoded = _png(fig)
    plt.close(fig)
    name = html.escape(title)
    return f'<h2>{name}</h2>\n<img alt="{name}" src="data:image/png;base64,{encoded}">'


def _lines(xs: list[float], records: list[dict[str, Any]], keys: tuple[str, ...]) -> Any:
    def draw(ax: Any) -> None:
        for key in keys:
            values = [r.get(key, math.nan) for r in records]
            # A fleet size holds until it changes: draw it as steps, not slopes.
            style = {"drawstyle": "steps-post"} if key == "rollout/workers" else {}
            ax.plot(xs, values, label=key, linewidth=1.5, **style)

    return draw


def _summary(records: list[dict[str, Any]], xs: list[float]) -> str:
    last = records[-1]
    rewards = [r["reward/mean"] for r in records if "reward/mean" in r]
    rows = [
        ("steps", f"{last['step']}"),
        ("wall time", f"{xs[-1]:.1f} min"),
        ("final reward/mean", f"{rewards[-1]:.4f}" if rewards else "-"),
        ("best reward/mean", f"{max(rewards):.4f}" if rewards else "-"),
    ]
    rows += [(k, f"{v:.4f}") for k, v in sorted(last.items()) if k.startswith("eval/")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def write_report(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Write the run report for `metrics_path` to `out_path` (HTML) and return its path."""
    records = [r for r in read_metrics(metrics_path) if "step" in r]
    if not records:
        raise ValueError(f"{metrics_path} holds no step records")
    xs = elapsed_minutes(records)
    sections = [_chart("Reward", "reward", xs, lambda ax: draw_rewards(ax, xs, records))]
    evals = sorted({k for r in records for k in r if k.startswith("eval/")})
    if evals:
        sections.append(_chart("Evaluation", "score", xs, _lines(xs, records, tuple(evals))))
    for chart_title, ylabel, keys in CHARTS:
        present = tuple(k for k in keys if any(k in r for r in records))
        if present:
            sections.append(_chart(chart_title, ylabel, xs, _lines(xs, records, present)))
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "th{text-align:left;padding-right:1em}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{_summary(records, xs)}\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    out_path.write_text(page)
    return out_path

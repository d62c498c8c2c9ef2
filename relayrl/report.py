"""The end-of-run report: one self-contained HTML page (PNG charts embedded as data URIs)
with reward and eval, throughput, staleness, idle fractions and workers over wall time."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from relayrl import metric_keys as keys
from relayrl.metrics import read_metrics
from relayrl.plot import draw_rewards, pyplot

# (chart title, y label, metric keys): every chart after the reward one.
CHARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "Throughput",
        "tokens / s",
        (keys.PIPELINE_ROLLOUT_TOKENS_PER_S, keys.PIPELINE_LEARNER_TOKENS_PER_S),
    ),
    ("Trajectories generated", "trajectories / s", (keys.PIPELINE_ROLLOUT_TRAJECTORIES_PER_S,)),
    ("Staleness of trained tokens", "policy versions", (keys.STALENESS_MAX, keys.STALENESS_MEAN)),
    (
        "Idle fractions",
        "share of wall time",
        (keys.PIPELINE_LEARNER_IDLE_FRACTION, keys.PIPELINE_WORKER_IDLE_FRACTION),
    ),
    ("Rollout workers", "workers", (keys.ROLLOUT_WORKERS,)),
)


# eval/* keys that say which round it was, not how it scored.
EVAL_BOOKKEEPING = frozenset({"eval/step", "eval/policy_version"})


def elapsed_minutes(records: list[dict[str, Any]]) -> list[float]:
    """Wall time at the end of each step, from the steps' own durations (a resumed run's
    records continue where the last one ended)."""
    total = 0.0
    xs = []
    for record in records:
        total += float(record.get(keys.TIME_STEP_S, 0.0))
        xs.append(total / 60.0)
    return xs


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


def _lines(xs: list[float], records: list[dict[str, Any]], series: tuple[str, ...]) -> Any:
    def draw(ax: Any) -> None:
        for key in series:
            values = [r.get(key, math.nan) for r in records]
            # A fleet size holds until it changes: draw it as steps, not slopes.
            style = {"drawstyle": "steps-post"} if key == keys.ROLLOUT_WORKERS else {}
            ax.plot(xs, values, label=key, linewidth=1.5, **style)

    return draw


def _points(xs: list[float], records: list[dict[str, Any]], keys: tuple[str, ...]) -> Any:
    """Figures only some steps carry (an evaluation round), as marked points."""

    def draw(ax: Any) -> None:
        for key in keys:
            found = [(x, r[key]) for x, r in zip(xs, records, strict=True) if key in r]
            ax.plot(*zip(*found, strict=True), marker="o", label=key, linewidth=1.5)

    return draw


def _summary(records: list[dict[str, Any]], xs: list[float]) -> str:
    last = records[-1]
    rewards = [r[keys.REWARD_MEAN] for r in records if keys.REWARD_MEAN in r]
    rows = [
        ("steps", f"{last['step']}"),
        ("wall time", f"{xs[-1]:.1f} min"),
        ("final reward/mean", f"{rewards[-1]:.4f}" if rewards else "-"),
        ("best reward/mean", f"{max(rewards):.4f}" if rewards else "-"),
    ]
    last_eval = next((r for r in reversed(records) if any(k.startswith("eval/") for k in r)), {})
    rows += [
        (k, f"{v:.4f}")
        for k, v in sorted(last_eval.items())
        if k.startswith("eval/") and k not in EVAL_BOOKKEEPING and _is_number(v)
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def write_report(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Write the run report for `metrics_path` to `out_path` (HTML) and return its path."""
    records = [r for r in read_metrics(metrics_path) if "step" in r]
    xs = elapsed_minutes(records)
    if not records:
        sections = ["<p>No learner step was recorded.</p>"]
    else:
        sections = [
            _summary(records, xs),
            _chart("Reward", "reward", xs, lambda ax: draw_rewards(ax, xs, records)),
        ]
    evals = sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k.startswith("eval/") and k not in EVAL_BOOKKEEPING and _is_number(v)
        }
    )
    if evals:
        sections.append(_chart("Evaluation", "score", xs, _points(xs, records, tuple(evals))))
    for chart_title, ylabel, chart_keys in CHARTS:
        present = tuple(k for k in chart_keys if any(k in r for r in records))
        if present:
            sections.append(_chart(chart_title, ylabel, xs, _lines(xs, records, present)))
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "th{text-align:left;padding-right:1em}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    out_path.write_text(page)
    return out_path

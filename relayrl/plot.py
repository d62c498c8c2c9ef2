"""Charts from metrics.jsonl: the reward curve as a PNG, and the drawing the run report
(relayrl/report.py) shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relayrl import metric_keys as keys
from relayrl.metrics import read_metrics


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend: drivers run without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reward_keys(records: list[dict[str, Any]]) -> list[str]:
    return sorted(
        {k for r in records for k in r if k.startswith("reward/") and k != keys.REWARD_STD}
    )


def draw_rewards(ax: Any, xs: list[float], records: list[dict[str, Any]]) -> None:
    """Every reward channel, reward/mean bold, plus a rolling mean once there are points
    enough to smooth."""
    for key in reward_keys(records):
        values = [r.get(key, float("nan")) for r in records]
        style = {"linewidth": 2.0} if key == keys.REWARD_MEAN else {"linewidth": 1.0, "alpha": 0.6}
        ax.plot(xs, values, label=key.removeprefix("reward/"), **style)
    if len(records) >= 4:
        window = max(2, len(records) // 5)
        means = [r[keys.REWARD_MEAN] for r in records]
        smooth = [
            sum(means[max(0, i - window + 1) : i + 1]) / len(means[max(0, i - window + 1) : i + 1])
            for i in range(len(means))
        ]
        ax.plot(xs, smooth, "k--", linewidth=1.5, label=f"mean, rolling {window}")
    ax.set_ylabel("reward")


# Held-out figures drawn over the training reward, when the run evaluated.
EVAL_CURVES = {"eval/accuracy": "eval accuracy", "eval/sampled/pass@1": "eval sampled pass@1"}


def draw_eval(ax: Any, records: list[dict[str, Any]]) -> None:
    """Held-out accuracy at the steps it evaluated (`eval/step`), with markers."""
    for key, label in EVAL_CURVES.items():
        points = [(r.get("eval/step", r["step"]), r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", linewidth=2.0, label=label)
            ax.set_ylabel("reward, eval accuracy")


def plot_rewards(metrics_path: Path, out_path: Path, title: str) -> Path:
    plt = pyplot()
    records = [r for r in read_metrics(metrics_path) if keys.REWARD_MEAN in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    draw_rewards(ax, [r["step"] for r in records], records)
    draw_eval(ax, records)
    ax.set_xlabel("learner step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path

"""A PNG of the reward curve from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from relayrl.metrics import read_metrics


def plot_rewards(metrics_path: Path, out_path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if "reward/mean" in r]
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    channels = sorted(
        {k for r in records for k in r if k.startswith("reward/") and k != "reward/std"}
    )
    for key in channels:
        values = [r.get(key, float("nan")) for r in records]
        style = {"linewidth": 2.0} if key == "reward/mean" else {"linewidth": 1.0, "alpha": 0.6}
        ax.plot(steps, values, label=key.removeprefix("reward/"), **style)
    if len(records) >= 4:
        window = max(2, len(records) // 5)
        means = [r["reward/mean"] for r in records]
        smooth = [
            sum(means[max(0, i - window + 1) : i + 1]) / len(means[max(0, i - window + 1) : i + 1])
            for i in range(len(means))
        ]
        ax.plot(steps, smooth, "k--", linewidth=1.5, label=f"mean, rolling {window}")
    ax.set_xlabel("learner step")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path

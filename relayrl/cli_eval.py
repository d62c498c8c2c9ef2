"""`relayrl eval CONFIG [--checkpoint DIR]`: the config's held-out evaluation of a checkpoint
(or of the base model) in this process, as a JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from relayrl.cli_args import add_overrides
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError

# The headline figures printed after the run, when the evaluation played them.
SHOWN = ("accuracy", "greedy/pass@1", "sampled/pass@1", "greedy/tool_call_rate")


def checkpoint_model(folder: Path) -> Path:
    """The Hugging Face folder of a checkpoint: the folder itself, or its `hf` subfolder."""
    if (folder / "hf" / "config.json").is_file():
        return folder / "hf"
    if (folder / "config.json").is_file():
        return folder
    raise JobConfigError(f"--checkpoint {folder}: no Hugging Face model (config.json) there")


def report_label(checkpoint: Path | None) -> str:
    if checkpoint is None:
        return "base"
    return checkpoint.parent.name if checkpoint.name == "hf" else checkpoint.name


def _eval(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from relayrl.actors.eval_setup import evaluate_model
    from relayrl.models import resolve_model

    if args.checkpoint is None:
        model_path, label = resolve_model(config.model.path), "base"
    else:
        model_path = str(checkpoint_model(Path(args.checkpoint)))
        label = report_label(Path(model_path))
    report = evaluate_model(config, model_path, label)
    out = Path(args.out or Path(config.output_dir) / "eval" / f"{label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(summary_line(label, report["metrics"]))
    print(f"  report: {out}")
    return 0


def summary_line(label: str, metrics: dict[str, Any]) -> str:
    shown = [f"{name}={metrics[f'eval/{name}']:.3f}" for name in SHOWN if f"eval/{name}" in metrics]
    k_keys = sorted(
        k for k in metrics if k.startswith("eval/sampled/pass@") and k != "eval/sampled/pass@1"
    )
    shown += [f"{k.removeprefix('eval/')}={metrics[k]:.3f}" for k in k_keys]
    return f"{label}: {int(metrics['eval/tasks'])} tasks " + " ".join(shown)


def add_eval_command(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate a checkpoint (or the base model) on the config's held-out tasks "
        "and write a JSON report",
    )
    parser.add_argument("config", help="job config (YAML); its eval section says what to play")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint folder (or its hf/ subfolder); omitted: the config's base model",
    )
    parser.add_argument(
        "--out", default=None, help="report path; default OUTPUT_DIR/eval/<checkpoint>.json"
    )
    add_overrides(parser, "override one config field (repeatable), e.g. --set eval.samples=8")
    parser.set_defaults(handler=_eval)

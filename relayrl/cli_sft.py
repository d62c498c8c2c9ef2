"""`relayrl demos` (write verified demonstrations for a config's environment) and `relayrl sft`
(run a config's trainer.sft stage alone, on one learner rank in this process)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from relayrl.cli_args import add_overrides
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="job config (YAML)")
    add_overrides(parser)


def _demos(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from relayrl.demos import write_demos
    from relayrl.envs.demos import NoDemoBuilderError, build_demos

    held_out: frozenset[str] = frozenset()
    if config.eval is not None:
        from relayrl.actors.eval_setup import eval_plan, held_out_items

        held_out = frozenset(item.task.id for item in held_out_items(config, eval_plan(config)))
    try:
        report = asyncio.run(
            build_demos(config.env.name, config.env.params, args.n, args.seed, held_out)
        )
    except NoDemoBuilderError as exc:
        print(f"relayrl: {exc}", file=sys.stderr)
        return 2
    if not report.demos:
        print(
            f"relayrl: no demonstration of {config.env.name} passed its env ({report.tried} "
            f"tasks: {report.no_template} without a template, {report.rejected} graded wrong)",
            file=sys.stderr,
        )
        return 1
    write_demos(args.out, report.demos)
    print(
        f"wrote {len(report.demos)} demonstrations of {config.env.name} to {args.out}, each "
        f"graded correct by the env ({report.tried} distinct tasks tried: "
        f"{report.no_template} without a template, {report.rejected} graded wrong)"
    )
    if held_out:
        print(f"  none of them on the {len(held_out)} held-out tasks of the config's eval section")
    if len(report.demos) < args.n:
        print(f"  fewer than --n {args.n}: the env ran out of distinct tasks it has templates for")
    return 0


def _sft(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if config.trainer.sft is None:
        raise JobConfigError("trainer.sft: the config has no SFT stage")
    if config.learner.num_ranks != 1:
        raise JobConfigError(
            "learner.num_ranks: relayrl sft runs one rank in this process; set it to 1, or "
            "run the stage inside relayrl train"
        )
    from relayrl.cluster.sft_stage import InProcessLearner, check_sft_data, run_sft_stage

    check_sft_data(config)
    from relayrl.learner.deepspeed_learner import DeepSpeedLearner
    from relayrl.models import resolve_model
    from relayrl.ports import free_port

    model_path = resolve_model(config.model.path)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    learner = DeepSpeedLearner(config, model_path, 0, None, None)
    learner.setup("127.0.0.1", free_port())
    folder = run_sft_stage(config, InProcessLearner(learner), args.resume, rl_restored=None)
    print(f"SFT done; checkpoint (Hugging Face format): {folder}")
    print("  continue with RL from it: relayrl train CONFIG --resume (same config and output.dir)")
    return 0


def add_sft_commands(commands: Any) -> None:
    demos = commands.add_parser(
        "demos",
        help="write templated demonstrations for the config's environment, each verified by "
        "playing it through the real env (math-python, countdown, text-to-sql)",
    )
    _overrides(demos)
    demos.add_argument("--n", type=int, default=200, help="demonstrations to write")
    demos.add_argument("--out", required=True, help="the JSONL file to write")
    demos.add_argument("--seed", type=int, default=0, help="seed of the tasks sampled")
    demos.set_defaults(handler=_demos)
    sft = commands.add_parser(
        "sft", help="run the config's trainer.sft stage alone (one learner rank, no Ray)"
    )
    _overrides(sft)
    sft.add_argument(
        "--resume",
        action="store_true",
        help="continue the SFT checkpoints in output.dir (only loads them when it had finished)",
    )
    sft.set_defaults(handler=_sft)

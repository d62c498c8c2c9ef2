"""`relayrl` command line. This is the composition root: subcommands import the parts they
run lazily, so `relayrl --help` and config errors stay fast."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from relayrl import interrupts
from relayrl.cli_args import add_overrides
from relayrl.cli_config import add_config_command
from relayrl.cli_eval import add_eval_command
from relayrl.cli_sft import add_sft_commands
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError, UserError

EXIT_USER_ERROR = 2


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from relayrl.cluster.preflight import preflight

    # Before the job's heavy imports (Ray, DeepSpeed): a bad config fails in about a second.
    preflight(config)
    from relayrl.cluster.job import run_job

    # SIGTERM (and SIGINT, which shells ignore in background jobs) unwind the job, so the
    # Ray instance, the embedded Redis and the workers it started are stopped.
    interrupts.install()
    try:
        result = run_job(config, resume=args.resume)
    except KeyboardInterrupt as exc:
        print(f"relayrl: stopped ({exc or 'interrupted'}); resume with --resume", file=sys.stderr)
        return 130
    if result.stopped:
        print(f"stopped on request after step {result.steps}; resume with --resume")
    print(f"trained {result.steps} steps; outputs in {result.output_dir}")
    print(f"  checkpoint (Hugging Face format): {result.checkpoint}")
    print(f"  metrics (JSON lines):             {result.metrics}")
    if result.plot:
        print(f"  reward curve:                     {result.plot}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from relayrl.cluster.scale import scale_job

    previous = scale_job(config, args.workers)
    print(f"{config.name}: rollout workers {previous} -> {args.workers}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from relayrl.cluster.job_commands import job_status, job_target
    from relayrl.cluster.job_status import render_status

    status = job_status(job_target(args.job, args.overrides))
    print(json.dumps(status, indent=1) if args.json else "\n".join(render_status(status)))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from relayrl.cluster.job_commands import has_ended, job_target, stop_job
    from relayrl.cluster.job_control import StopMode

    target = job_target(args.job, args.overrides)
    mode = StopMode.NOW if args.now else StopMode.GRACEFUL
    status = stop_job(target, mode, args.timeout_s)
    if not has_ended(status):
        print(f"relayrl: {target.name} did not stop within {args.timeout_s:g}s", file=sys.stderr)
        return 1
    print(
        f"{target.name}: {status['state']} at step {status.get('step', 0)}; "
        f"checkpoint {status.get('checkpoint')}; resume with relayrl train --resume"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    from relayrl.cluster.audit import audit_run

    report = audit_run(args.output_dir)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _sandbox(args: argparse.Namespace) -> int:
    from relayrl.envs.sandbox.cli import main as sandbox_main

    return sandbox_main(args.sandbox_args)


def _add_job_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the job's config (YAML) or its output folder")
    add_overrides(parser, "the same overrides the job was started with (with a config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayrl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a training job from a YAML config")
    train.add_argument("config", help="job config (YAML)")
    add_overrides(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output.dir from its latest checkpoint and buffer position",
    )
    train.set_defaults(handler=_train)
    scale = commands.add_parser("scale", help="change the rollout workers of a running job")
    scale.add_argument("config", help="the running job's config (YAML)")
    scale.add_argument("workers", type=int, help="target number of rollout workers")
    add_overrides(scale, "the same overrides the job was started with")
    scale.set_defaults(handler=_scale)
    status = commands.add_parser(
        "status", help="show a job: live through Ray while it runs, else from its output folder"
    )
    _add_job_argument(status)
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    status.set_defaults(handler=_status)
    stop = commands.add_parser(
        "stop",
        help="stop a running job: it finishes its step, checkpoints and shuts its fleet down "
        "(resume with train --resume)",
    )
    _add_job_argument(stop)
    stop.add_argument(
        "--now",
        action="store_true",
        help="interrupt at once; a resume starts from the last periodic checkpoint",
    )
    stop.add_argument(
        "--timeout-s",
        type=float,
        default=3600.0,
        help="how long to wait for the job to say it stopped (exit 1 if it did not)",
    )
    stop.set_defaults(handler=_stop)
    audit = commands.add_parser(
        "audit",
        help="check a run (live or finished) against its stream and ledger: every entry "
        "trained once, discarded or dead-lettered with a reason, or still pending; exit 1 if not",
    )
    audit.add_argument("output_dir", help="the run's output.dir")
    audit.set_defaults(handler=_audit)
    sandbox = commands.add_parser(
        "sandbox", help="run untrusted Python in the sandbox (run), or list its confinement (check)"
    )
    sandbox.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    sandbox.set_defaults(handler=_sandbox)
    add_eval_command(commands)
    add_sft_commands(commands)
    add_config_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UserError as exc:
        kind = "config error: " if isinstance(exc, JobConfigError) else ""
        print(f"relayrl: {kind}{exc}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""`relayrl sandbox run FILE.py`: run one program confined and print its result as JSON.
`relayrl sandbox check`: print which confinements this host gives sandboxed programs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from relayrl.envs.sandbox.confinement import host_confinements
from relayrl.envs.sandbox.host import check_host
from relayrl.envs.sandbox.limits import SandboxLimits
from relayrl.envs.sandbox.runner import DEFAULT_LIMITS, run_python
from relayrl.envs.sandbox.tools import SandboxUnavailable

EXIT_HOST_UNAVAILABLE = 3
EXIT_CONFINEMENT_MISSING = 1


def main(argv: list[str]) -> int:
    """`run`: exit 0 once a result is printed (the program's own outcome is in it), 3 if no
    sandbox. `check`: exit 0 when every confinement is active, else 1."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check()
    try:
        code = args.file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        print(f"relayrl sandbox: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    try:
        check_host()
    except SandboxUnavailable as error:
        print(f"relayrl sandbox: {error}", file=sys.stderr)
        return EXIT_HOST_UNAVAILABLE
    limits = SandboxLimits(
        wall_s=args.timeout, cpu_s=math.ceil(args.timeout), memory_mb=args.memory_mb
    )
    print(json.dumps(run_python(code, limits).to_dict()))
    return 0


def _check() -> int:
    confinements = host_confinements()
    for confinement in confinements:
        state = "active " if confinement.active else "MISSING"
        print(f"{state} {confinement.name}: {confinement.detail}")
    missing = [confinement.name for confinement in confinements if not confinement.active]
    if missing:
        print(f"relayrl sandbox: missing {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFINEMENT_MISSING
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayrl sandbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run FILE.py with no network, a read-only host and caps")
    run.add_argument(
        "--timeout", type=_positive(float), default=DEFAULT_LIMITS.wall_s, help="seconds"
    )
    run.add_argument("--memory-mb", type=_positive(int), default=DEFAULT_LIMITS.memory_mb)
    run.add_argument("file", type=Path, metavar="FILE.py")
    commands.add_parser("check", help="print which confinements are active on this host")
    return parser


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Arguments several `relayrl` subcommands share."""

from __future__ import annotations

import argparse

OVERRIDE_HELP = "override one config field (repeatable), e.g. --set trainer.steps=5"


def add_overrides(parser: argparse.ArgumentParser, help: str = OVERRIDE_HELP) -> None:
    """`--set KEY.SUB=VALUE`, repeatable, collected in `args.overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.SUB=VALUE",
        help=help,
    )

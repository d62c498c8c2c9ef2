"""`relayrl config`: the config schema with every field's description, or a config resolved
with its defaults, so a user can read what a job will run with before starting it."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from relayrl.cli_args import add_overrides
from relayrl.config import JobConfig
from relayrl.config_loader import load_config
from relayrl.errors import UserError


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a job config: types, bounds, defaults and descriptions."""
    return JobConfig.model_json_schema()


def resolved_config(path: str, overrides: list[str]) -> str:
    """The config at `path` with `overrides` applied and every default filled in, as YAML."""
    config = load_config(path, overrides)
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _config(args: argparse.Namespace) -> int:
    if args.schema:
        if args.show is not None or args.overrides:
            raise UserError("config --schema takes no config and no --set")
        print(json.dumps(config_schema(), indent=2))
        return 0
    if args.show is None:
        raise UserError("config: give --schema, or --show CONFIG")
    print(resolved_config(args.show, args.overrides), end="")
    return 0


def add_config_command(commands: Any) -> None:
    parser = commands.add_parser(
        "config",
        help="print the config schema (--schema) or a config resolved with its defaults (--show)",
    )
    parser.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of a job config"
    )
    parser.add_argument(
        "--show",
        metavar="CONFIG",
        default=None,
        help="print this job config (YAML) with the overrides applied and every default filled in",
    )
    add_overrides(parser)
    parser.set_defaults(handler=_config)

"""Job configs for tests, built from dotted field paths through the real schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relayrl.config import JobConfig


def job_config(fields: Mapping[str, Any]) -> JobConfig:
    """A validated JobConfig with `fields` ({"rollout.group_size": 2, ...}) set, defaults
    elsewhere."""
    tree: dict[str, Any] = {}
    for path, value in fields.items():
        *sections, name = path.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return JobConfig.model_validate(tree)

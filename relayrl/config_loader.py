"""Load a JobConfig from YAML plus dotted `key.sub=value` overrides, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from relayrl.config import JobConfig
from relayrl.errors import JobConfigError


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as a YAML scalar or list."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise JobConfigError(f"override {assignment!r}: expected key.sub=value")
    parts = key.strip().split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise JobConfigError(f"override {assignment!r}: {where} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "parse error"
        raise JobConfigError(
            f"override {assignment!r}: value is not valid YAML ({problem}); quote it"
        ) from None


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "value_error":
        # A check across fields names its fields itself.
        message = message.removeprefix("Value error, ")
        if not location:
            return message
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif "input" in error and error["type"] != "value_error":
        message = f"{message} (got {error['input']!r})"
    return f"{location or '<root>'}: {message}"


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise JobConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "parse error"
            raise JobConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise JobConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded or {}
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise JobConfigError("; ".join(lines)) from None

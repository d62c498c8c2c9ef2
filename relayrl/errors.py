"""Errors the CLI turns into exit status 2 with one line: the user must fix the job."""

from __future__ import annotations


class JobConfigError(ValueError):
    """A config that passes the schema but cannot run; the message names the field."""

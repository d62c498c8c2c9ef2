"""relayrl's error base, and the one kind of error the user must fix.

The CLI turns a `UserError` into one line on stderr and exit status 2, with no traceback;
anything else is a bug or a failure of the run, and keeps its traceback.
"""

from __future__ import annotations


class RelayrlError(Exception):
    """Base of the errors relayrl raises on purpose."""


class UserError(RelayrlError, ValueError):
    """Something the user must change (config, command-line argument, host setup, input
    file); the message names what and, where it can, how."""


class JobConfigError(UserError):
    """The job's config (its file, its overrides, or something it names) cannot be loaded or
    cannot run; the message names the field."""

"""Binding a test's server to a free port when another process may take the port first."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from relayrl.ports import free_port

_T = TypeVar("_T")


def on_a_free_port(bind: Callable[[int], _T], attempts: int = 5) -> _T:
    """`bind(port)` on a port `free_port` picked; when another process took that port between
    the pick and the bind ("address already in use"), pick again."""
    for _ in range(attempts - 1):
        try:
            return bind(free_port())
        except (OSError, RuntimeError) as error:
            if "in use" not in str(error).lower():
                raise
    return bind(free_port())

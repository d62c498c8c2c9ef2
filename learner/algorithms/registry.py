"""Named loss factories, and resolution of a user's "module:attribute" target.

A loss factory is called with keyword arguments (a built-in loss's config fields, or a custom
loss's `params`) and returns a PolicyLoss.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from relayrl.learner.algorithms.types import PolicyLoss

LossFactory = Callable[..., PolicyLoss]
FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])

_LOSS_FACTORIES: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[FactoryT], FactoryT]:
    """Decorator: make a loss factory (often the loss class itself) available as `name`."""

    def register(factory: FactoryT) -> FactoryT:
        if name in _LOSS_FACTORIES:
            raise ValueError(f"a loss named {name!r} is already registered")
        _LOSS_FACTORIES[name] = factory
        return factory

    return register


def registered_losses() -> list[str]:
    return sorted(_LOSS_FACTORIES)


def resolve_loss_factory(target: str) -> LossFactory:
    """A registered name, or "module:attribute" (importing the module runs its registrations)."""
    if ":" not in target:
        if target not in _LOSS_FACTORIES:
            raise ValueError(
                f"loss target {target!r} is neither a registered loss "
                f"({', '.join(registered_losses())}) nor of the form 'module:attribute'"
            )
        return _LOSS_FACTORIES[target]
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"loss target {target!r}: cannot import module {module_name!r} ({error})"
        ) from error
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ValueError(f"loss target {target!r}: module {module_name!r} has no {attribute!r}")
    if not callable(factory):
        raise ValueError(f"loss target {target!r} is not callable")
    return factory

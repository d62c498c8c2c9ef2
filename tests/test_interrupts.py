"""Stop signals during a step's commit: held until it ends, a second one interrupts at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from relayrl import interrupts


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    interrupts.install()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_outside_a_commit_interrupts_at_once(handlers: None) -> None:
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_during_a_commit_waits_for_its_end(handlers: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt, match="signal 15"), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("checkpoint")
        done.append("metrics record")
    assert done == ["checkpoint", "metrics record"]
    # Nothing is left held for the next commit.
    with interrupts.deferred():
        done.append("next")
    assert done[-1] == "next"


def test_a_second_signal_interrupts_a_commit(handlers: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt, match="signal 2"), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("checkpoint")
        os.kill(os.getpid(), signal.SIGINT)
        done.append("never")
    assert done == ["checkpoint"]

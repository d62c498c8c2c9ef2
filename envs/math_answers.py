"""Final answers in \\boxed{...}, checked against the reference with math-verify."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import weakref

from relayrl.envs.math_verify_child import READY
from relayrl.envs.tags import last_balanced

log = logging.getLogger(__name__)

_BOXED = "\\boxed{"
_START_TIMEOUT_S = 120.0
# The child bounds each parse and comparison itself; this only catches a wedged child.
_CALL_TIMEOUT_S = 30.0
_MAX_ANSWER_CHARS = 200


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} with balanced braces, or None."""
    return last_balanced(text, _BOXED)


class MathVerifier:
    """A math-verify child process, started on first use and restarted if it wedges."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _child(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relayrl.envs.math_verify_child",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT_S)
            if line.decode().strip() != READY:
                raise RuntimeError(f"math-verify child failed to start (exit {process.returncode})")
            self._process = process
        return self._process

    async def equivalent(self, gold: str, answer: str) -> bool:
        if len(answer) > _MAX_ANSWER_CHARS:
            return False
        async with self._lock:
            process = await self._child()
            assert process.stdin is not None and process.stdout is not None
            request = json.dumps({"gold": gold, "answer": answer}).encode() + b"\n"
            try:
                process.stdin.write(request)
                await process.stdin.drain()
                line = await asyncio.wait_for(process.stdout.readline(), _CALL_TIMEOUT_S)
            except (TimeoutError, ConnectionError):
                line = b""
            if not line:
                # Wedged, or died on this answer (e.g. out of memory): it counts as wrong.
                log.warning("math-verify child failed on an answer; restarting it")
                self._process = None
                if process.returncode is None:
                    process.kill()
                await process.wait()
                return False
        return line.strip() == b"1"


_VERIFIERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MathVerifier] = (
    weakref.WeakKeyDictionary()
)


def shared_verifier() -> MathVerifier:
    """One child per event loop: subprocess pipes belong to the loop that opened them."""
    return _VERIFIERS.setdefault(asyncio.get_running_loop(), MathVerifier())

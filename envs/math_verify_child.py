"""The math-verify child process: one JSON request per stdin line, "1" or "0" per stdout line.

math-verify bounds parsing and comparison with SIGALRM, which only works in a main thread,
so it runs here rather than on a rollout worker's event-loop thread."""

from __future__ import annotations

import json
import sys

from math_verify import parse, verify

READY = "ready"
_TIMEOUT_S = 5


def answers_match(gold: str, answer: str) -> bool:
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=_TIMEOUT_S)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=_TIMEOUT_S)
    if not gold_parsed or not answer_parsed:
        return False
    return verify(gold_parsed, answer_parsed, timeout_seconds=_TIMEOUT_S)


def main() -> None:
    print(READY, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            matched = answers_match(request["gold"], request["answer"])
        except Exception:  # an answer math-verify cannot handle is wrong, not a dead child
            matched = False
        print(int(matched), flush=True)


if __name__ == "__main__":
    main()

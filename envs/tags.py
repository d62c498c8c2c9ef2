"""Text between tags, found in linear time: model output may be megabytes of unclosed tags,
on which a lazy regular expression backtracks quadratically."""

from __future__ import annotations

import re


def tagged(text: str, opening: str, closing: str) -> list[str]:
    """What `re.findall(opening + "(.*?)" + closing, text, re.DOTALL)` finds: each opening
    tag up to the next closing tag, the search going on after that closing tag."""
    found = []
    position = 0
    while (start := text.find(opening, position)) != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break  # no later opening tag can be closed either
        found.append(text[start + len(opening) : end])
        position = end + len(closing)
    return found


def last_balanced(text: str, opening: str) -> str | None:
    """Contents of the last `opening` (which ends with "{") whose braces balance, or None."""
    # Per open brace: where its contents start, and whether it is an `opening`'s brace.
    stack: list[tuple[int, bool]] = []
    best: tuple[int, int] | None = None
    for match in re.finditer(re.escape(opening) + "|[{}]", text):
        if match.group() != "}":
            stack.append((match.end(), match.group() == opening))
        elif stack:
            start, is_opening = stack.pop()
            if is_opening and (best is None or start > best[0]):
                best = (start, match.start())
    return None if best is None else text[best[0] : best[1]].strip()

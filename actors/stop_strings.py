"""Stop strings: a row stops once its new text contains one.

The token that completes a stop string is kept as sampled (its text may run past the stop
string), and nothing after it."""

from __future__ import annotations

from typing import Any


class StopStrings:
    def __init__(self, tokenizer: Any, stop_strings: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        # Every token decodes to at least one byte, so a match ends within this many tokens.
        self.window = max(len(s.encode()) for s in stop_strings) + 1

    def matched(self, new_tokens: list[int]) -> bool:
        """Whether the text of `new_tokens` (a row's sampled tokens so far) has a stop string
        that its last token completed or earlier tokens already held."""
        tail = self.tokenizer.decode(new_tokens[-self.window :])
        return any(stop in tail for stop in self.stop_strings)

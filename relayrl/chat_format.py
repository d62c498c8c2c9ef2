"""Chat-template token ids: the prompt, and the environment's messages between turns. It sits
in the spine because the agent loop (rollout) and SFT (learner) must frame turns the same way.

The observation frame (what the template writes after an assistant turn, around the next
message, and before the next assistant turn) is found by rendering the template once around
sentinels, so any template works without a hand-written formatter."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

_TURN = "RELAYRL_ASSISTANT_TURN"
_OBSERVATION = "RELAYRL_OBSERVATION"


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return [int(token) for token in ids]


class ObservationFormatter:
    """Token ids that carry an environment message into the next assistant turn, e.g.
    `<|im_end|>\\n<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`."""

    def __init__(
        self, tokenizer: Any, role: str, max_chars: int = 8192, max_tokens: int = 1024
    ) -> None:
        self._tokenizer = tokenizer
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        try:
            rendered = tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": "?"},
                    {"role": "assistant", "content": _TURN},
                    {"role": role, "content": _OBSERVATION},
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
        except TemplateError as exc:
            raise ValueError(f"the chat template cannot render a {role!r} message: {exc}") from exc
        if rendered.count(_TURN) != 1 or rendered.count(_OBSERVATION) != 1:
            raise ValueError(f"the chat template does not render a {role!r} message after a turn")
        after_turn = rendered.split(_TURN)[1]
        before, after = after_turn.split(_OBSERVATION)
        self.before_ids = self._encode(before)
        self.after_ids = self._encode(after)
        # The template's end-of-turn token, which the model may already have sampled.
        first = self.before_ids[0] if self.before_ids else None
        self._turn_end = first if first in set(tokenizer.all_special_ids) else None

    def _encode(self, text: str, literal: bool = False) -> list[int]:
        # literal: text such as tool output never becomes control tokens like <|im_start|>.
        encoded = self._tokenizer(text, add_special_tokens=False, split_special_tokens=literal)
        return [int(token) for token in encoded["input_ids"]]

    def message_ids(self, observation: str) -> list[int]:
        """The observation's own ids, capped in characters (before tokenizing, so a huge
        output costs nothing) and in tokens, each cut marked where it happened."""
        text = valid_text(observation)
        if len(text) > self.max_chars:
            cut = len(text) - self.max_chars
            text = f"{text[: self.max_chars]}\n[... {cut} more characters cut]"
        ids = self._encode(text, literal=True)
        if len(ids) > self.max_tokens:
            marker = self._encode(f"\n[... cut at {self.max_tokens} tokens]", literal=True)
            ids = ids[: max(0, self.max_tokens - len(marker))] + marker
        return ids

    def token_ids(self, observation: str, last_sampled: int | None) -> list[int]:
        before = self.before_ids
        if self._turn_end is not None and last_sampled == self._turn_end:
            before = before[1:]  # the model ended its turn itself; keep its token as sampled
        return before + self.message_ids(observation) + self.after_ids


def valid_text(text: str) -> str:
    """`text` with lone surrogates (which no tokenizer encodes) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text

"""Demonstrations: chat conversations in JSON lines, the data of the SFT stage.

One conversation per line:

    {"env": "math-python", "task_id": "...", "reward": 1.1,
     "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...```python\\nprint(6 * 7)\\n```\\n"},
                  {"role": "tool", "content": "```output\\n42\\n```"},
                  {"role": "assistant", "content": "The answer is \\\\boxed{42}."}]}

The prompt is every message before the first assistant one (system and user only). After it,
assistant turns alternate with environment messages (role "tool" or "user": tool results,
feedback), and the conversation ends with an assistant turn. A tool call is written inside the
assistant's text, in the format the environment parses (a ```python block, a <tool_call> JSON
object), exactly as the model would write it at rollout time. `env`, `task_id` and `reward`
are provenance; only `messages` is trained on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayrl.errors import UserError

PROMPT_ROLES = frozenset({"system", "user"})
ENVIRONMENT_ROLES = frozenset({"tool", "user"})


class DemoFormatError(UserError):
    """A demonstration file line that is not a valid conversation; the message says where."""


@dataclass(frozen=True)
class Demonstration:
    messages: list[dict[str, str]]
    env: str = ""
    task_id: str = ""
    reward: float | None = None

    def __post_init__(self) -> None:
        problem = conversation_problem(self.messages)
        if problem is not None:
            raise DemoFormatError(problem)

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The messages before the first assistant turn."""
        first = next(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:first]

    def to_json(self) -> str:
        record = {
            "env": self.env,
            "task_id": self.task_id,
            "reward": self.reward,
            "messages": self.messages,
        }
        return json.dumps(record, ensure_ascii=False)

    @classmethod
    def from_record(cls, record: Any) -> Demonstration:
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise DemoFormatError('expected an object with a "messages" list')
        reward = record.get("reward")
        if reward is not None and not isinstance(reward, int | float):
            raise DemoFormatError('"reward" must be a number or null')
        return cls(
            messages=record["messages"],
            env=str(record.get("env", "")),
            task_id=str(record.get("task_id", "")),
            reward=None if reward is None else float(reward),
        )


def conversation_problem(messages: Any) -> str | None:
    """Why `messages` is not a trainable conversation, or None when it is."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or not isinstance(message["content"], str)
        ):
            return f'message {index} must be {{"role": ..., "content": "<text>"}} and no more'
    roles = [message["role"] for message in messages]
    if any(m["role"] == "assistant" and not m["content"] for m in messages):
        return "an assistant message is empty (a turn samples at least one token)"
    if "assistant" not in roles:
        return "there is no assistant message"
    first = roles.index("assistant")
    if first == 0 or any(role not in PROMPT_ROLES for role in roles[:first]):
        return "the prompt (messages before the first assistant one) must be system/user only"
    for offset, role in enumerate(roles[first:]):
        expected = {"assistant"} if offset % 2 == 0 else ENVIRONMENT_ROLES
        if role not in expected:
            wanted = " or ".join(sorted(expected))
            return f"message {first + offset} is {role!r}; expected {wanted} (turns alternate)"
    if roles[-1] != "assistant":
        return "the conversation must end with an assistant message"
    return None


def read_demos(path: str | Path) -> list[Demonstration]:
    """Every conversation of a JSONL file; a bad line raises with its line number."""
    demos = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            demos.append(Demonstration.from_record(json.loads(line)))
        except (json.JSONDecodeError, DemoFormatError) as exc:
            raise DemoFormatError(f"{path}:{number}: {exc}") from None
    if not demos:
        raise DemoFormatError(f"{path} holds no demonstrations")
    return demos


def write_demos(path: str | Path, demos: list[Demonstration]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(demo.to_json() + "\n" for demo in demos))

"""A user-style Env class for the whole-job isolation test: every turn but the last is run
as a SQL query, whatever it says, so a random model's garbage reaches SQLite each turn; and
every other episode's environment fails on its first step, as a buggy tool would."""

from __future__ import annotations

import itertools

from relayrl.envs.base import Message, StepResult, Task
from relayrl.envs.text_to_sql import TextToSqlEnv, TextToSqlParams, TextToSqlTasks
from relayrl.envs.tool_calls import HermesFormat, ToolCall

_BUILT = itertools.count()


class EveryTurnIsSql(HermesFormat):
    stop_strings = ()

    def __init__(self, sql_turns: int) -> None:
        self.remaining = sql_turns

    def parse(self, text: str) -> ToolCall | None:
        if self.remaining == 0:
            return None
        self.remaining -= 1
        return ToolCall("run_sql", {"query": text})


class GarbageSql(TextToSqlEnv):
    params_model = TextToSqlParams

    @staticmethod
    def make_tasks(params: TextToSqlParams) -> TextToSqlTasks:
        return TextToSqlTasks(params)

    def __init__(self, params: TextToSqlParams) -> None:
        super().__init__(params)
        self.call_format = EveryTurnIsSql(sql_turns=2)
        self.fails = next(_BUILT) % 2 == 1

    def prompt(self, task: Task) -> list[Message]:
        return list(task.messages)  # no schema: keeps the tiny model's episodes short

    async def step(self, action: str) -> StepResult:
        if self.fails:
            raise ValueError("a buggy tool")
        return await super().step(action)

"""User-style environments with bugs. For the whole-job isolation test: every turn but the
last is run as a SQL query, whatever it says, so a random model's garbage reaches SQLite each
turn, and every other episode's environment fails on its first step, as a buggy tool would.
For the worker: environments whose construction or close fails."""

from __future__ import annotations

import itertools

from relayrl.envs.base import EnvSpec, Message, StepResult, Task
from relayrl.envs.text_to_sql import TextToSqlEnv, TextToSqlParams, TextToSqlTasks
from relayrl.envs.tool_calls import HermesFormat, ToolCall
from tests.plugin_envs import DigitEnv, DigitParams, DigitTasks

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


class _Counting:
    """A digit-share env whose setup is the user's buggy code: one build in five fails in the
    constructor (never the first, the worker's start-up check), and every close fails."""

    built = itertools.count()

    def __init__(self, params: DigitParams) -> None:
        if next(self.built) % 5 == 1:
            raise RuntimeError("a buggy environment constructor")
        self.inner = DigitEnv(params)

    async def reset(self, task: Task) -> list[Message]:
        return await self.inner.reset(task)

    async def step(self, action: str) -> StepResult:
        return await self.inner.step(action)

    async def close(self) -> None:
        raise OSError("a buggy close")


class _NeverBuilds(_Counting):
    built = itertools.count()

    def __init__(self, params: DigitParams) -> None:
        if next(self.built) > 0:
            raise RuntimeError("this environment cannot be built")
        self.inner = DigitEnv(params)


FLAKY_SETUP = EnvSpec(params_model=DigitParams, make_tasks=DigitTasks, make_env=_Counting)
NEVER_BUILDS = EnvSpec(params_model=DigitParams, make_tasks=DigitTasks, make_env=_NeverBuilds)

"""Text-to-SQL over a small SQLite database built on the fly: the model may explore it with a
`run_sql` tool (Hermes-style calls), then answers with a ```sql block, checked by running it
and comparing its rows with the gold query's."""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from relayrl.envs.base import EnvSpec, Message, StepResult, Task
from relayrl.envs.registry import register_env
from relayrl.envs.sql_database import QueryError, SqlDatabase, same_result
from relayrl.envs.sql_fixture import QUESTIONS, SCHEMA
from relayrl.envs.tool_calls import HermesFormat
from relayrl.envs.tool_env import ToolEnv
from relayrl.envs.tools import ToolResult, clip_output

_SQL_OPENING = re.compile(r"```sql\s*\n", re.IGNORECASE)
_GOLD_ROWS = 10_000


class TextToSqlParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    query_timeout_s: float = Field(1.0, gt=0)
    max_rows_shown: int = Field(20, ge=1)
    max_output_chars: int = Field(
        2000, ge=100, description="Longest run_sql output shown to the model, in characters."
    )
    system_prompt: str = (
        "Answer the question by writing one SQLite query over this database:\n{schema}\n"
        "Give the final query in a ```sql block."
    )
    # tool_success (share of run_sql calls that worked) is logged; weight it to reward it.
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"correct": 1.0, "format": 0.1}
    )


class TextToSqlTasks:
    def __init__(self, params: TextToSqlParams) -> None:
        self.params = params

    def sample(self, rng: random.Random) -> Task:
        index = rng.randrange(len(QUESTIONS))
        question, gold = QUESTIONS[index]
        return Task(
            id=f"sql-{index}", messages=[{"role": "user", "content": question}], answer=gold
        )


class RunSqlTool:
    name = "run_sql"
    description = "Run a read-only SQLite query on the database and return its rows."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "one SELECT statement"}},
        "required": ["query"],
    }

    def __init__(self, database: SqlDatabase, max_rows: int, max_chars: int) -> None:
        self.database = database
        self.max_rows = max_rows
        self.max_chars = max_chars

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return ToolResult("invalid", 'run_sql needs a string argument "query"')
        try:
            shown = self.database.query(query, self.max_rows).render()
            return ToolResult("ok", clip_output(shown, self.max_chars))
        except QueryError as exc:  # SQLite's message may quote the whole query back
            return ToolResult("error", clip_output(f"error: {exc}", self.max_chars))


class TextToSqlEnv(ToolEnv):
    def __init__(self, params: TextToSqlParams) -> None:
        self.database = SqlDatabase(params.query_timeout_s)
        tool = RunSqlTool(self.database, params.max_rows_shown, params.max_output_chars)
        super().__init__([tool], HermesFormat())
        self.params = params

    def prompt(self, task: Task) -> list[Message]:
        system = self.params.system_prompt.format(schema=SCHEMA)
        return self.instructed_prompt(system, task, separator="\n")

    def _grade(self, sql: str) -> tuple[bool, bool]:
        """(runs, correct): the query runs, and returns the gold query's rows (all of them:
        a result cut at the row or size bound is not the gold one)."""
        gold = str(self.task.answer)
        try:
            predicted = self.database.query(sql, _GOLD_ROWS)
        except QueryError:
            return False, False
        expected = self.database.query(gold, _GOLD_ROWS)
        ordered = "ORDER BY" in gold.upper()
        return True, not predicted.truncated and same_result(predicted, expected, ordered)

    async def finish(self, text: str) -> StepResult:
        blocks = sql_blocks(text)
        runs, correct = self._grade(blocks[-1]) if blocks else (False, False)
        return self.final_answer(
            correct=correct,
            well_formed=runs,
            answered=bool(blocks),
            weights=self.params.reward_weights,
        )

    async def close(self) -> None:
        self.database.close()
        await super().close()


def sql_blocks(text: str) -> list[str]:
    """The ```sql blocks of a turn, as `re.findall(r"```sql\\s*\\n(.*?)```")` finds them, in
    linear time however many blocks are left open."""
    found = []
    position = 0
    while (opening := _SQL_OPENING.search(text, position)) is not None:
        end = text.find("```", opening.end())
        if end == -1:
            break
        found.append(text[opening.end() : end])
        position = end + 3
    return found


def stop_strings(params: TextToSqlParams) -> tuple[str, ...]:
    return HermesFormat.stop_strings


SPEC = register_env(
    "text-to-sql",
    EnvSpec(
        params_model=TextToSqlParams,
        make_tasks=TextToSqlTasks,
        make_env=TextToSqlEnv,
        stop_strings=stop_strings,
    ),
)

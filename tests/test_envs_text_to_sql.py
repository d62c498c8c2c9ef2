"""Text-to-SQL: a read-only, time-bounded database, and execution-match grading."""

from __future__ import annotations

import asyncio
import random

import pytest

from relayrl.envs.registry import resolve_env
from relayrl.envs.sql_database import QueryError, SqlDatabase, same_result
from relayrl.envs.sql_fixture import QUESTIONS
from relayrl.envs.text_to_sql import TextToSqlParams


def test_every_gold_query_runs_and_returns_rows() -> None:
    database = SqlDatabase(timeout_s=1.0)
    for _, gold in QUESTIONS:
        assert database.query(gold, 100).rows


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DROP TABLE employees", "not authorized"),
        ("INSERT INTO departments VALUES (9, 'x', 'y', 1)", "not authorized"),
        ("ATTACH DATABASE '/tmp/relayrl-sql.db' AS other", "not authorized"),
        ("PRAGMA writable_schema = 1", "not authorized"),
        ("SELECT 1; SELECT 2", "one statement"),
        (
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
            "SELECT COUNT(*) FROM n",
            "longer than",
        ),
    ],
)
def test_the_database_is_read_only_and_time_bounded(sql: str, message: str) -> None:
    database = SqlDatabase(timeout_s=0.3)
    with pytest.raises(QueryError, match=message):
        database.query(sql, 10)
    assert database.query("SELECT COUNT(*) FROM employees", 10).rows == [(11,)]


def test_execution_match_ignores_row_order_unless_the_gold_orders() -> None:
    database = SqlDatabase(timeout_s=1.0)
    gold = database.query("SELECT name FROM employees ORDER BY salary DESC", 100)
    shuffled = database.query("SELECT name FROM employees ORDER BY name", 100)
    assert same_result(shuffled, gold, ordered=False)
    assert not same_result(shuffled, gold, ordered=True)
    average = database.query("SELECT AVG(salary) FROM employees WHERE department_id = 2", 10)
    assert same_result(average, database.query("SELECT 194000 / 3.0", 10), ordered=False)


def test_an_episode_explores_with_run_sql_then_answers() -> None:
    spec = resolve_env("text-to-sql")
    params = TextToSqlParams(max_rows_shown=2)
    task = spec.make_tasks(params).sample(random.Random(0))
    gold = task.answer
    env = spec.make_env(params)
    explore, broken = (
        f'<tool_call>{{"name": "run_sql", "arguments": {{"query": "{query}"}}}}</tool_call>'
        for query in ("SELECT name FROM employees", "SELEC")
    )

    async def go():
        prompt = await env.reset(task)
        steps = [await env.step(explore), await env.step(broken)]
        steps.append(await env.step(f"Final:\n```sql\n{gold}\n```"))
        await env.close()
        return prompt, steps

    prompt, (explored, failed, final) = asyncio.run(go())
    assert "CREATE TABLE employees" in prompt[0]["content"]
    assert explored.observation == (
        "<tool_response>\nname\nAda\nGrace\n... (only the first 2 rows are shown)\n</tool_response>"
    )
    assert failed.tool_status == "error" and "syntax error" in failed.observation
    assert final.done and final.reward_channels == {
        "correct": 1.0,
        "format": 1.0,
        "tool_success": 0.5,
    }

    wrong_env = spec.make_env(params)

    async def wrong():
        await wrong_env.reset(task)
        return await wrong_env.step("```sql\nSELECT 'nothing'\n```")

    result = asyncio.run(wrong())
    assert result.reward_channels["correct"] == 0.0 and result.reward_channels["format"] == 1.0

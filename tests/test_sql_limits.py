"""The text-to-SQL database bounds what one query may build and return: values, statements,
memory, rows and characters, for run_sql and for the graded final query alike. Each hostile
query ends on a bound (never on the time limit, which is set far away here) with a typed
observation."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import textwrap

import pytest

from relayrl.envs.sql_database import QueryError, SqlDatabase
from relayrl.envs.text_to_sql import TextToSqlEnv, TextToSqlParams, TextToSqlTasks

DOUBLING = (
    "WITH RECURSIVE b(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM b WHERE length(s) < 60000)"
)
# 100 001 rows of a 64 KiB string: about 6.5 GB if it were all held at once.
WIDE_ROWS = (
    DOUBLING + ", r(n, s) AS (SELECT 0, (SELECT max(s) FROM b) "
    "UNION ALL SELECT n + 1, s FROM r WHERE n < 100000)"
)
HOSTILE = {
    "SELECT zeroblob(999999999)": "not authorized to use function: zeroblob",
    "SELECT length(randomblob(999999999))": "not authorized to use function: randomblob",
    "SELECT printf('%.*c', 999999999, 'x')": "not authorized to use function: printf",
    "SELECT load_extension('/tmp/x.so')": "not authorized to use function: load_extension",
    "WITH RECURSIVE r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) SELECT max(length(s)) "
    "FROM r": "string or blob too big",
    DOUBLING + " SELECT group_concat(s) FROM b, employees": "string or blob too big",
    WIDE_ROWS + " SELECT n, s FROM r ORDER BY n DESC": "more memory than it may use",
    "SELECT " + "(" * 1000 + "1" + ")" * 1000: "parser stack overflow",
    "SELECT " + " + ".join(["1"] * 500): "too large (maximum depth 100)",
    "SELECT 1 " + "UNION SELECT 1 " * 50: "too many terms in compound SELECT",
    "SELECT '" + "y" * 30_000 + "'": "too large",
    "ATTACH ':memory:' AS other": "not authorized",
    "PRAGMA hard_heap_limit = 0": "not authorized",
    "SELECT '\ud800'": "lone surrogate",
    "SELECT 1\x00": "null character",
}


@pytest.mark.parametrize(("sql", "message"), list(HOSTILE.items()), ids=range(len(HOSTILE)))
def test_a_hostile_query_ends_on_a_bound_not_the_clock(sql: str, message: str) -> None:
    database = SqlDatabase(timeout_s=60.0)
    with pytest.raises(QueryError, match=re.escape(message)) as raised:
        database.query(sql, 20)
    assert "longer than" not in str(raised.value)
    # The connection is still good for the next query.
    assert database.query("SELECT COUNT(*) FROM employees", 10).rows == [(11,)]


def test_results_stop_at_the_row_and_character_bounds() -> None:
    database = SqlDatabase(timeout_s=60.0, max_result_chars=10_000)
    rows = database.query(WIDE_ROWS + " SELECT n, s FROM r", 10_000)
    assert rows.truncated and len(rows.rows) == 0  # one 64 KiB row is past 10 000 characters
    cross = database.query("SELECT * FROM employees a, employees b, employees c", 50)
    assert cross.truncated and len(cross.rows) == 50
    text = database.query("SELECT CAST(x'ff41' AS TEXT)", 10)
    assert text.rows == [("\ufffdA",)]


def run_sql_call(query: str) -> str:
    return (
        '<tool_call>{"name": "run_sql", "arguments": {"query": '
        + json.dumps(query)
        + "}}</tool_call>"
    )


def episode(turns: list[str], **params: object) -> list:
    env_params = TextToSqlParams(**params)
    task = TextToSqlTasks(env_params).sample(random.Random(3))
    env = TextToSqlEnv(env_params)

    async def go() -> list:
        await env.reset(task)
        steps = [await env.step(turn) for turn in turns]
        await env.close()
        return steps

    return asyncio.run(go())


def test_run_sql_answers_every_hostile_query_with_a_bounded_observation() -> None:
    turns = [run_sql_call(sql) for sql in HOSTILE]
    turns.append(run_sql_call(DOUBLING + " SELECT s FROM b"))  # 64 KiB values, shown clipped
    turns.append(run_sql_call("SELECT * FROM employees a, employees b"))
    steps = episode(turns, max_output_chars=1000)
    for step in steps[: len(HOSTILE)]:
        assert (step.tool, step.tool_status, step.done) == ("run_sql", "error", False)
        assert step.observation.startswith("<tool_response>\nerror: ")
    for step in steps[len(HOSTILE) :]:
        assert step.tool_status == "ok"
        assert len(step.observation) < 1200
        assert "characters cut" in step.observation


@pytest.mark.parametrize(
    "final",
    [
        "SELECT zeroblob(999999999)",
        WIDE_ROWS + " SELECT n, s FROM r ORDER BY n DESC",
        "SELECT '\ud800'",
    ],
)
def test_a_hostile_final_query_is_graded_as_not_running(final: str) -> None:
    [step] = episode([f"```sql\n{final}\n```"])
    assert step.done and step.reward_channels["format"] == 0.0
    assert step.reward_channels["correct"] == 0.0


def test_a_final_result_cut_at_the_row_bound_is_not_correct() -> None:
    # 11^4 rows: more than the grader fetches, so it cannot be the gold result.
    [step] = episode(
        ["```sql\nSELECT a.name FROM employees a, employees b, employees c, employees d\n```"]
    )
    assert step.reward_channels == {"correct": 0.0, "format": 1.0, "tool_success": 0.0}


def test_memory_stays_bounded_under_hostile_queries() -> None:
    """In a fresh process, so the peak resident size (VmHWM, which exec resets, unlike
    ru_maxrss) is this test's alone."""
    script = textwrap.dedent(
        f"""
        from relayrl.envs.sql_database import QueryError, SqlDatabase
        database = SqlDatabase(timeout_s=60.0)
        for sql in {list(HOSTILE)!r} + [{WIDE_ROWS + " SELECT s FROM r"!r}]:
            try:
                database.query(sql, 10_000)
            except QueryError:
                pass
        status = open("/proc/self/status").read()
        print(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stdout.strip().splitlines()[-1]) // 1024
    assert peak_mib < 400, f"peak resident size {peak_mib} MiB"

"""A private in-memory SQLite copy of the bundled database: read-only, time-bounded, and
bounded in what one query may build (values, statements, memory) and return (rows, text)."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from relayrl.envs.sql_fixture import DATA, SCHEMA

# What a read-only query may do; everything else (writes, PRAGMA, ATTACH) is refused.
_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
# The functions a query over this database needs; none of them makes a value of a size the
# query picks (zeroblob, randomblob, printf widths) or reaches outside (load_extension).
_ALLOWED_FUNCTIONS = frozenset(
    {
        *("count", "sum", "total", "avg", "min", "max", "group_concat", "string_agg"),
        *("abs", "round", "sign", "ceil", "ceiling", "floor", "trunc", "mod"),
        *("length", "lower", "upper", "substr", "substring", "trim", "ltrim", "rtrim"),
        *("replace", "instr", "like", "glob", "coalesce", "ifnull", "nullif", "iif", "typeof"),
        *("date", "time", "datetime", "julianday", "strftime", "unixepoch"),
        *("row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile"),
        *("lag", "lead", "first_value", "last_value", "nth_value"),
    }
)
# Far above anything the bundled database holds or a question needs.
_LIMITS = {
    sqlite3.SQLITE_LIMIT_LENGTH: 100_000,  # bytes of one string or blob value
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 20_000,  # bytes of one statement
    sqlite3.SQLITE_LIMIT_COLUMN: 64,
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 20,
    sqlite3.SQLITE_LIMIT_VDBE_OP: 50_000,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 8,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1_000,
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 0,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 1,
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,
}
# SQLite's heap limit is per process: every database of a rollout worker shares it, and
# queries run one at a time on the worker's event loop, so one cap bounds them all.
HEAP_LIMIT_BYTES = 64 * 2**20
_PROGRESS_EVERY = 1000  # SQLite virtual-machine steps between deadline checks
_CELL_CHARS = 200  # of one value when rendered for the model


class QueryError(ValueError):
    """The query failed; the message is SQLite's (or says which bound it ran into)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than were fetched, or they held too much text

    def render(self) -> str:
        lines = [" | ".join(self.columns)]
        lines += [" | ".join(map(_cell, row)) for row in self.rows]
        if self.truncated:
            lines.append(f"... (only the first {len(self.rows)} rows are shown)")
        return "\n".join(lines)


def _cell(value: Any) -> str:
    shown = str(value)
    if len(shown) <= _CELL_CHARS:
        return shown
    return f"{shown[:_CELL_CHARS]}... [{len(shown) - _CELL_CHARS} characters cut]"


def _size(row: tuple[Any, ...]) -> int:
    return sum(len(value) if isinstance(value, str | bytes) else 8 for value in row)


class SqlDatabase:
    def __init__(self, timeout_s: float, max_result_chars: int = 1_000_000) -> None:
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self._connection = sqlite3.connect(":memory:")
        self._connection.executescript(SCHEMA + DATA)
        self._connection.execute(f"PRAGMA hard_heap_limit = {HEAP_LIMIT_BYTES}")
        # Sorts and temporary tables in memory, under the heap limit, never in files.
        self._connection.execute("PRAGMA temp_store = MEMORY")
        for limit, value in _LIMITS.items():
            self._connection.setlimit(limit, value)
        # Text that is not UTF-8 (CAST(x'ff' AS TEXT)) shows as U+FFFD instead of failing.
        self._connection.text_factory = lambda raw: raw.decode("utf-8", "replace")
        self._connection.set_authorizer(_authorize)
        self._deadline = 0.0
        self._connection.set_progress_handler(self._out_of_time, _PROGRESS_EVERY)

    def _out_of_time(self) -> int:
        return int(time.monotonic() > self._deadline)

    def query(self, sql: str, max_rows: int) -> QueryResult:
        """At most `max_rows` rows, and no more rows once `max_result_chars` is reached."""
        self._deadline = time.monotonic() + self.timeout_s
        try:
            cursor = self._connection.execute(sql)
            rows, truncated = self._fetch(cursor, max_rows)
        except sqlite3.OperationalError as exc:
            if str(exc) == "interrupted":
                raise QueryError(f"the query ran longer than {self.timeout_s}s") from None
            raise QueryError(str(exc)) from None
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise QueryError(str(exc)) from None
        except MemoryError:  # SQLite's heap limit (SQLITE_NOMEM)
            raise QueryError("the query needs more memory than it may use") from None
        except UnicodeEncodeError:
            raise QueryError("the query is not valid text (it holds a lone surrogate)") from None
        columns = [column[0] for column in cursor.description or []]
        return QueryResult(columns, rows, truncated)

    def _fetch(self, cursor: sqlite3.Cursor, max_rows: int) -> tuple[list[tuple[Any, ...]], bool]:
        rows: list[tuple[Any, ...]] = []
        chars = 0
        for row in cursor:
            chars += _size(row)
            if len(rows) == max_rows or chars > self.max_result_chars:
                return rows, True
            rows.append(row)
        return rows, False

    def close(self) -> None:
        self._connection.close()


def _authorize(action: int, _first: str | None, second: str | None, *_: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION:  # the function's name comes second
        allowed = second is not None and second.lower() in _ALLOWED_FUNCTIONS
        return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _normalized(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def same_result(predicted: QueryResult, gold: QueryResult, ordered: bool) -> bool:
    """Execution match: the same rows (in order when the gold query orders them)."""
    mine, theirs = _normalized(predicted.rows), _normalized(gold.rows)
    if ordered:
        return mine == theirs
    return Counter(mine) == Counter(theirs)

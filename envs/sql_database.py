"""A private in-memory SQLite copy of the bundled database, read-only and time-bounded."""

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
_PROGRESS_EVERY = 1000  # SQLite virtual-machine steps between deadline checks


class QueryError(ValueError):
    """The query failed; the message is SQLite's (or says it ran out of time)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than were fetched

    def render(self) -> str:
        lines = [" | ".join(self.columns)]
        lines += [" | ".join(map(str, row)) for row in self.rows]
        if self.truncated:
            lines.append(f"... (only the first {len(self.rows)} rows are shown)")
        return "\n".join(lines)


class SqlDatabase:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._connection = sqlite3.connect(":memory:")
        self._connection.executescript(SCHEMA + DATA)
        self._connection.set_authorizer(_authorize)
        self._deadline = 0.0
        self._connection.set_progress_handler(self._out_of_time, _PROGRESS_EVERY)

    def _out_of_time(self) -> int:
        return int(time.monotonic() > self._deadline)

    def query(self, sql: str, max_rows: int) -> QueryResult:
        self._deadline = time.monotonic() + self.timeout_s
        try:
            cursor = self._connection.execute(sql)
            rows = cursor.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as exc:
            if str(exc) == "interrupted":
                raise QueryError(f"the query ran longer than {self.timeout_s}s") from None
            raise QueryError(str(exc)) from None
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise QueryError(str(exc)) from None
        columns = [column[0] for column in cursor.description or []]
        return QueryResult(columns, rows[:max_rows], truncated=len(rows) > max_rows)

    def close(self) -> None:
        self._connection.close()


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _normalized(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def same_result(predicted: QueryResult, gold: QueryResult, ordered: bool) -> bool:
    """Execution match: the same rows (in order when the gold query orders them)."""
    mine, theirs = _normalized(predicted.rows), _normalized(gold.rows)
    if ordered:
        return mine == theirs
    return Counter(mine) == Counter(theirs)

"""What hostile model output costs the environments: parse time of each turn parser on
pathological text of growing size (it should grow linearly), and time and peak memory of the
text-to-sql database on hostile queries (each should end on a bound, not the clock).

    .venv/bin/python benchmarks/hostile_outputs.py [--max-chars 1000000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from relayrl.envs.arithmetic import parse_answer
from relayrl.envs.math_answers import last_boxed
from relayrl.envs.sql_database import QueryError, SqlDatabase
from relayrl.envs.text_to_sql import sql_blocks
from relayrl.envs.tool_calls import CodeBlockFormat, HermesFormat

PARSERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "hermes": ("<tool_call></tool_call>x", HermesFormat().parse),
    "code block": ("```python\n", CodeBlockFormat().parse),
    "answer tag": ("<answer> ", parse_answer),
    "boxed": ("\\boxed{", last_boxed),
    "sql block": ("```sql\n", sql_blocks),
}
DOUBLING = (
    "WITH RECURSIVE b(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM b WHERE length(s) < 60000)"
)
QUERIES = {
    "zeroblob(999999999)": "SELECT zeroblob(999999999)",
    "doubling string CTE": "WITH RECURSIVE r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) "
    "SELECT max(length(s)) FROM r",
    "6.5 GB sort": DOUBLING + ", r(n, s) AS (SELECT 0, (SELECT max(s) FROM b) UNION ALL "
    "SELECT n + 1, s FROM r WHERE n < 100000) SELECT n, s FROM r ORDER BY n DESC",
    "cross join, 10k rows": "SELECT * FROM employees a, employees b, employees c, employees d",
}


def peak_rss_mib() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    args = parser.parse_args()
    sizes = [size for size in (10_000, 100_000, 1_000_000, 10_000_000) if size <= args.max_chars]
    print("parser       " + "".join(f"{size:>14,} ch" for size in sizes))
    for name, (piece, parse) in PARSERS.items():
        cells = []
        for size in sizes:
            text = piece * (size // len(piece))
            started = time.perf_counter()
            parse(text)
            cells.append(f"{(time.perf_counter() - started) * 1000:>14.2f} ms")
        print(f"{name:<13}" + "".join(cells))
    database = SqlDatabase(timeout_s=60.0)
    print(f"\nsql (time limit 60 s; peak resident before: {peak_rss_mib()} MiB)")
    for name, sql in QUERIES.items():
        started = time.perf_counter()
        try:
            outcome = f"{len(database.query(sql, 10_000).rows)} rows"
        except QueryError as exc:
            outcome = f"error: {exc}"
        elapsed = time.perf_counter() - started
        print(f"  {name:<22} {elapsed:6.2f} s  peak {peak_rss_mib():4d} MiB  {outcome}")


if __name__ == "__main__":
    main()

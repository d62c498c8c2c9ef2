"""The dataset env on real files: JSONL and Parquet through `datasets`, the column mapping,
the seeded train/eval split, bad rows reported by number, and each verifier (the unit tests
one in the real sandbox)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from relayrl.envs.base import StepResult
from relayrl.envs.dataset_env import DatasetError, DatasetParams, DatasetTasks
from relayrl.envs.registry import EnvConfigError, resolve_env, validate_env_params
from relayrl.envs.verifiers import parse_number

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data"
MATH = str(SAMPLE / "math_word_problems.jsonl")
CODE = str(SAMPLE / "python_functions.jsonl")


def params(**fields: Any) -> DatasetParams:
    return DatasetParams.model_validate(fields)


def answer(env_params: DatasetParams, task_index: int, response: str) -> StepResult:
    spec = resolve_env("dataset")
    task = spec.make_tasks(env_params).tasks()[task_index]
    env = spec.make_env(env_params)

    async def go() -> StepResult:
        await env.reset(task)
        result = await env.step(response)
        await env.close()
        return result

    return asyncio.run(go())


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_the_split_is_disjoint_complete_and_fixed_by_its_seed() -> None:
    columns = {"prompt": "question", "answer": "answer", "id": "id"}
    train = DatasetTasks(params(path=MATH, columns=columns, eval_size=8))
    held = DatasetTasks(params(path=MATH, columns=columns, eval_size=8, split="eval"))
    every = DatasetTasks(params(path=MATH, columns=columns, split="all"))
    train_ids = {t.id for t in train.tasks()}
    held_ids = [t.id for t in held.tasks()]
    assert len(held_ids) == 8 and len(train_ids) == 28 and not train_ids & set(held_ids)
    assert train_ids | set(held_ids) == {t.id for t in every.tasks()}
    again = DatasetTasks(params(path=MATH, columns=columns, eval_size=8, split="eval"))
    assert [t.id for t in again.tasks()] == held_ids
    reseeded = DatasetTasks(
        params(path=MATH, columns=columns, eval_size=8, split="eval", split_seed=1)
    )
    assert [t.id for t in reseeded.tasks()] != held_ids
    fraction = DatasetTasks(params(path=MATH, columns=columns, eval_fraction=0.25, split="eval"))
    assert len(fraction.tasks()) == 9
    task = held.tasks()[0]
    assert task.messages[0]["role"] == "system" and "\\boxed" in task.messages[0]["content"]
    assert task.messages[1]["role"] == "user" and task.metadata["row"] >= 1


def test_parquet_gives_the_same_tasks_as_jsonl(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in Path(MATH).read_text().splitlines()]
    parquet = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    columns = {"id": "id"}
    from_jsonl = DatasetTasks(params(path=MATH, columns=columns, split="all"))
    from_parquet = DatasetTasks(params(path=str(parquet), columns=columns, split="all"))
    assert from_parquet.tasks() == from_jsonl.tasks()


def test_bad_rows_are_reported_by_number_and_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"q": "1 + 1?", "a": "2"},
         {"q": "no answer here"},
         "this line is not JSON",
         {"q": "2 + 2?", "a": "four"},
         {"q": "", "a": "3"},
         {"q": "3 + 3?", "a": 6}],
    )  # fmt: skip
    fields = {"path": path, "columns": {"prompt": "q", "answer": "a"}, "verifier": "numeric"}
    with caplog.at_level(logging.WARNING):
        tasks = DatasetTasks(params(**fields, split="all"))
    assert [(bad.row, bad.problem) for bad in tasks.bad_rows] == [
        (2, "no 'a'"),
        (3, "not a JSON object"),
        (4, "the answer is not a number"),
        (5, "no 'q'"),
    ]
    assert "4 bad row(s) left out: row 2: no 'a'; row 3" in caplog.text
    assert sorted(t.answer for t in tasks.tasks()) == ["2", "6"]
    with pytest.raises(ValueError, match=r"4 bad row\(s\) and env.params.strict is on: row 2"):
        DatasetTasks(params(**fields, strict=True))
    with pytest.raises(ValueError, match=r"'question', 'answer' not in .*its columns: a, q"):
        DatasetTasks(params(path=path, verifier="numeric"))
    unparseable = write_jsonl(tmp_path / "m.jsonl", [{"question": "x", "answer": "}{"}])
    with pytest.raises(DatasetError, match="holds no valid rows"):
        DatasetTasks(params(path=unparseable))
    with pytest.raises(ValidationError, match=r"missing\.jsonl': no such file"):
        params(path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(EnvConfigError, match=r"env.params.path: .*missing.jsonl': no such file"):
        validate_env_params("dataset", {"path": str(tmp_path / "missing.jsonl")})


def test_math_verify_exact_match_and_numeric_verifiers(tmp_path: Path) -> None:
    math_params = params(path=MATH, columns={"id": "id"}, split="all")
    fraction = next(
        i for i, t in enumerate(DatasetTasks(math_params).tasks()) if t.answer == "11/12"
    )
    right = answer(math_params, fraction, "So the sum is \\boxed{\\frac{11}{12}}.")
    assert right.reward_channels == {"correct": 1.0, "format": 1.0}
    assert right.reward == pytest.approx(1.1)
    wrong = answer(math_params, fraction, "\\boxed{1/2}")
    assert wrong.reward_channels == {"correct": 0.0, "format": 1.0}
    unanswered = answer(math_params, fraction, "I do not know")
    assert unanswered.void and unanswered.reward == 0.0

    path = write_jsonl(
        tmp_path / "words.jsonl", [{"question": "Capital of France?", "answer": "Paris"}]
    )
    exact = params(path=path, verifier="exact_match", answer_format="answer_tag", split="all")
    assert answer(exact, 0, "<answer> paris </answer>").reward_channels["correct"] == 1.0
    cased = exact.model_copy(update={"case_sensitive": True})
    assert answer(cased, 0, "<answer>paris</answer>").reward_channels["correct"] == 0.0

    path = write_jsonl(tmp_path / "num.jsonl", [{"question": "Pi?", "answer": "3.14159"}])
    numeric = params(path=path, verifier="numeric", answer_format="text", rel_tol=1e-3, split="all")
    assert answer(numeric, 0, "3.1416").reward_channels["correct"] == 1.0
    assert answer(numeric, 0, "3.2").reward_channels["correct"] == 0.0
    assert parse_number("1,234.5") == 1234.5 and parse_number("3/4") == 0.75
    assert parse_number("1/0") is None and parse_number("abc") is None


def test_python_tests_run_in_the_sandbox() -> None:
    code = params(
        path=CODE,
        columns={"prompt": "prompt", "answer": "tests", "id": "id"},
        verifier="python_tests",
        split="all",
        sandbox={"wall_s": 2.0},
    )
    tasks = DatasetTasks(code).tasks()
    add = next(i for i, t in enumerate(tasks) if t.id == "fn-01")
    passing = answer(code, add, "Here:\n```python\ndef add(a, b):\n    return a + b\n```")
    assert passing.reward_channels == {"correct": 1.0, "format": 1.0}
    failing = answer(code, add, "```python\ndef add(a, b):\n    return a - b\n```")
    assert failing.reward_channels == {"correct": 0.0, "format": 1.0}
    looping = answer(code, add, "```python\ndef add(a, b):\n    while True: pass\n```")
    assert looping.reward_channels["correct"] == 0.0
    assert answer(code, add, "def add(a, b): return a + b").void
    assert "```python" in tasks[add].messages[0]["content"]

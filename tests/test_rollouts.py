"""Rollouts: validation, code extraction, stop sequences and the program each rollout becomes."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from codevalue.errors import DataError
from codevalue.problems import BUNDLED, Problem, load_problems
from codevalue.problems import TestCase as Case
from codevalue.rollouts import (
    CODEX_STOP,
    bundled_codegen_rollouts,
    evaluated_completion,
    extract_code,
    parse_stop,
    program_for,
    read_rollouts,
    truncate_at_stop,
)

FIXTURES = Path(__file__).parent / "fixtures"


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def rollout(rid, pid="HumanEval/0", completion="    return 1\n", **extra) -> dict:
    return {"problem_id": pid, "rollout_id": rid, "completion": completion, **extra}


# ---------------------------------------------------------------------------------------------------------
# read_rollouts


def test_read_rollouts_normalises_ids_and_keeps_records(tmp_path):
    records = [rollout(1, pid=5, temperature=0.8), rollout("r2", meta={"k": [1, 2]})]
    path = write_lines(tmp_path / "r.jsonl", records)
    got = list(read_rollouts(path))
    assert [(r.problem_id, r.rollout_id, r.completion) for r in got] == [
        ("5", "1", "    return 1\n"), ("HumanEval/0", "r2", "    return 1\n")]
    assert [r.record for r in got] == records  # the whole input line, unchanged (ids keep their type)


@pytest.mark.parametrize("field", ["problem_id", "rollout_id", "completion"])
def test_missing_field(tmp_path, field):
    bad = rollout("b")
    del bad[field]
    path = write_lines(tmp_path / "r.jsonl", [rollout("a"), bad])
    with pytest.raises(DataError) as e:
        list(read_rollouts(path))
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 2, field)
    assert str(e.value) == f"{path}, record 2, field '{field}': missing field"


def test_duplicate_rollout_id(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rollout(7)) + "\n\n" + json.dumps(rollout("x")) + "\n"
                    + json.dumps(rollout("7")))
    with pytest.raises(DataError) as e:
        list(read_rollouts(path))
    assert (e.value.line, e.value.field) == (4, "rollout_id")  # blank line 2 counted; 7 and "7" collide
    assert "duplicate rollout_id '7'" in str(e.value)


@pytest.mark.parametrize("completion,type_name", [(None, "NoneType"), (["a"], "list"), (3, "int")])
def test_non_string_completion(tmp_path, completion, type_name):
    path = write_lines(tmp_path / "r.jsonl", [rollout("a", completion=completion)])
    with pytest.raises(DataError) as e:
        list(read_rollouts(path))
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 1, "completion")
    assert f"expected a string, got {type_name}" in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# extract_code


@pytest.mark.parametrize("text,code", [
    ("n = int(input())\nprint(n)", "n = int(input())\nprint(n)"),  # no fence: the text itself
    # the last block
    ("First:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nDone.", "print(2)\n"),
    ("```python\nprint(1)\n```\nOutput:\n```text\n1\n```", "print(1)\n"),  # python-labelled preferred
    ("```cpp\nint main(){}\n```\n```py\nprint(3)\n```\n```bash\nls\n```", "print(3)\n"),
    ("```Python3\nprint(4)\n```", "print(4)\n"),  # label is case-insensitive
    ("```\nprint(5)\n```", "print(5)\n"),  # unlabelled counts as Python
    ("```cpp\nint main(){}\n```", "int main(){}\n"),  # only other languages: the last block anyway
    ("Plan.\n```python\nx = 1\n```\nFinal:\n```python\nx = 2\nprint(x", "x = 2\nprint(x"),  # unclosed
    ("``` python title=sol.py\nprint(6)\n```", "print(6)\n"),  # rest of the fence line ignored
])
def test_extract_code(text, code):
    assert extract_code(text) == code


# ---------------------------------------------------------------------------------------------------------
# stop sequences


@pytest.mark.parametrize("text,cut", [
    ("    return x\n\n\ndef helper():\n    pass\n", "    return x\n\n"),
    ("    if x:\n        return 1\n    return 2\nif __name__ == '__main__':\n    main()", "    if x:\n"
     "        return 1\n    return 2"),  # indented `if` survives, top-level `if` cuts
    ("    return 1\nprint(f(1))\n# done\nclass A: pass", "    return 1"),  # the earliest stop wins
    ("    # a comment\n    return 1\n#\n", "    # a comment\n    return 1"),
    ("    return 1\n", "    return 1\n"),  # nothing to cut
    ("", ""),
])
def test_truncate_at_codex_stop(text, cut):
    assert truncate_at_stop(text, CODEX_STOP) == cut


def test_truncate_without_stops():
    assert truncate_at_stop("a\ndef b", ()) == "a\ndef b"
    assert truncate_at_stop("a\nEND\nb\nEND", ["\nEND"]) == "a"


def test_parse_stop():
    assert CODEX_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert parse_stop(["codex"]) == CODEX_STOP
    assert parse_stop([]) == ()
    assert parse_stop(["\\n#", "codex", "\\t\\nEND"]) == ("\n#",) + CODEX_STOP + ("\t\nEND",)
    assert parse_stop(["plain"]) == ("plain",)


def test_parse_stop_keeps_non_ascii():
    assert parse_stop(["\\n# é", "→"]) == ("\n# é", "→")


# ---------------------------------------------------------------------------------------------------------
# program_for


def test_program_for_humaneval_is_prompt_completion_test_check():
    with gzip.open(BUNDLED["humaneval"], "rt", encoding="utf-8") as f:
        raw = json.loads(f.readline())
    problem = load_problems("humaneval")[0]
    completion = "    return False\n"
    expected = raw["prompt"] + completion + "\n" + raw["test"] + "\ncheck(has_close_elements)"
    assert program_for(problem, completion) == expected
    # with the Codex stops, the junk after the function is cut before concatenation
    assert program_for(problem, completion + "\n\ndef junk(:\n", CODEX_STOP) == (
        raw["prompt"] + completion + "\n" + "\n" + raw["test"] + "\ncheck(has_close_elements)")


def test_program_for_original_mbpp_is_completion_then_asserts():
    problem = load_problems(FIXTURES / "mbpp_original.jsonl")[1]
    code = "def double(x):\n    return helper(x) * 2\n"
    program = program_for(problem, code)
    assert program.startswith(code + "\n" + "def helper(x):")
    assert program.endswith("assert double(-3) == -6")
    assert problem.prompt not in program  # the task sentence is not code


def test_program_for_apps_extracts_the_code():
    stdin = Problem("1", "apps", "stdin", tests=[Case("1\n", "1\n")])
    call = Problem("2", "apps", "call", tests=[Case([1], [1])], entry_point="f")
    answer = "Idea: echo.\n```python\nprint(input())\n```\nThat prints the input."
    assert program_for(stdin, answer) == "print(input())\n"
    assert program_for(call, "```python\ndef f(x):\n    return x\n```") == "def f(x):\n    return x\n"
    assert program_for(stdin, "print(input())") == "print(input())"  # no fence: the whole completion


def test_program_for_without_hidden_tests_is_the_program_label_runs():
    humaneval = load_problems("humaneval")[0]
    assert program_for(humaneval, "    return 1\n", hidden_tests=False) == humaneval.prompt + "    return 1\n"
    assert program_for(humaneval, "    return 1\n").startswith(humaneval.prompt + "    return 1\n\n")
    call = Problem("2", "apps", "call", tests=[Case([1], [1])], entry_point="f")
    fenced = "```python\ndef f(x):\n    return x\n```"
    assert program_for(call, fenced, hidden_tests=False) == program_for(call, fenced) == "def f(x):\n    return x\n"


def test_evaluated_completion_prefers_truncated():
    assert evaluated_completion({"completion": "a\nb", "completion_truncated": "a"}) == "a"
    assert evaluated_completion({"completion": "a\nb", "completion_truncated": ""}) == ""
    assert evaluated_completion({"completion": "a\nb"}) == "a\nb"


def test_bundled_codegen_rollouts(tmp_path):
    out = bundled_codegen_rollouts(tmp_path / "rollouts.jsonl")
    assert out == tmp_path / "rollouts.jsonl"
    rollouts = list(read_rollouts(out))  # validates every record (unique ids, fields, types)
    assert len(rollouts) == 16400
    assert len({r.rollout_id for r in rollouts}) == 16400
    per_problem = Counter(r.problem_id for r in rollouts)
    assert set(per_problem) == {f"HumanEval/{i}" for i in range(164)}
    assert set(per_problem.values()) == {100}
    first = rollouts[0].record
    assert set(first) == {"problem_id", "rollout_id", "completion", "sample_index"}
    assert all(r.rollout_id == f"{r.problem_id}/{r.record['sample_index']}" for r in rollouts)
    assert sum(not r.completion.strip() for r in rollouts) == 127  # data README: not truncated, not cleaned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]

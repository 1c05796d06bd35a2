"""Problem loaders: the bundled files (counts from codevalue/data/README.md), formats and DataErrors."""

import gzip
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from codevalue.errors import DataError
from codevalue.problems import BUNDLED, Problem, detect_format, load_problems
from codevalue.problems import TestCase as Case

FIXTURES = Path(__file__).parent / "fixtures"


def write_lines(path: Path, records: list) -> Path:
    """One JSON value per line; a str is written verbatim (for malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def apps_record(pid, inputs, outputs, fn_name=None, **extra) -> dict:
    io = {"inputs": inputs, "outputs": outputs}
    if fn_name is not None:
        io["fn_name"] = fn_name
    return {"problem_id": pid, "question": f"question {pid}", "solutions": "[]",
            "input_output": json.dumps(io), "difficulty": "introductory", "url": "", "starter_code": "",
            **extra}


HUMANEVAL_RECORD = {"task_id": "X/0", "prompt": "def f(x):\n", "entry_point": "f", "canonical_solution": "",
                    "test": "def check(candidate):\n    assert candidate(1) == 1\n"}


# ---------------------------------------------------------------------------------------------------------
# bundled files


@pytest.mark.parametrize("name,total,kinds", [
    ("humaneval", 164, {"check": 164}),
    ("mbpp", 427, {"check": 427}),
    ("apps-intro-train", 2176, {"call": 2055, "stdin": 121}),
    ("apps-intro-test", 221, {"call": 208, "stdin": 13}),
    ("apps-test-mixed", 449, {"call": 255, "stdin": 194}),
])
@pytest.mark.slow
def test_bundled_counts_match_the_data_readme(name, total, kinds):
    problems = load_problems(name)
    assert len(problems) == total
    assert dict(Counter(p.kind for p in problems)) == kinds
    assert len({p.problem_id for p in problems}) == total
    assert all(p.n_tests > 0 for p in problems)  # README: no bundled problem has zero tests
    # a path works as well as the bundled name
    assert [p.problem_id for p in load_problems(BUNDLED[name])] == [p.problem_id for p in problems]


def test_humaneval_problems():
    problems = load_problems("humaneval")
    assert [p.problem_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    p = problems[0]
    assert (p.source, p.kind, p.entry_point, p.n_tests) == ("humaneval", "check", "has_close_elements", 1)
    assert p.completion_continues_prompt is True
    assert all(">>>" not in q.prompt for q in problems)
    assert all(q.check_code.endswith(f"\ncheck({q.entry_point})") for q in problems)
    assert p.program("    return 1\n") == p.prompt + "    return 1\n" + "\n" + p.check_code


def test_codet_mbpp_problems_use_the_humaneval_layout():
    problems = load_problems("mbpp")
    ids = [p.problem_id for p in problems]
    assert ids[0] == "MbppEval/2" and ids[-1] == "MbppEval/809"
    assert {p.source for p in problems} == {"mbpp"}
    assert {p.kind for p in problems} == {"check"}
    assert all(p.completion_continues_prompt for p in problems)
    assert problems[0].entry_point == "similar_elements"
    assert problems[0].check_code.startswith("def check(candidate):")


@pytest.mark.slow
def test_apps_ids_difficulties_and_starter_code():
    mixed = load_problems("apps-test-mixed")
    intro_test = load_problems("apps-intro-test")
    train = load_problems("apps-intro-train")
    assert Counter(p.difficulty for p in mixed) == {"introductory": 221, "interview": 178, "competition": 50}
    intro_ids = {p.problem_id for p in mixed if p.difficulty == "introductory"}
    assert {p.problem_id for p in intro_test} == intro_ids
    assert not {p.problem_id for p in train} & {p.problem_id for p in mixed}
    assert all(isinstance(p.problem_id, str) for p in mixed)
    by_id = {p.problem_id: p for p in intro_test}
    assert by_id["3123"].kind == "call" and by_id["3123"].entry_point == "count_repeats"
    assert by_id["3123"].starter_code == "def count_repeats(txt):"
    assert by_id["3123"].tests[0] == Case(["abcdefg"], [0])  # arguments and wrapped output, as stored
    assert by_id["2366"].kind == "stdin" and by_id["2366"].entry_point == ""


@pytest.mark.parametrize("name", ["apps-intro-train", "apps-intro-test", "apps-test-mixed"])
@pytest.mark.slow
def test_every_stdin_test_is_a_string(name):
    for p in load_problems(name):
        if p.kind == "stdin":
            assert all(isinstance(t.input, str) and isinstance(t.output, str) for t in p.tests), p.problem_id


def test_list_of_lines_stdin_problems_are_joined():
    raw = {}
    with gzip.open(BUNDLED["apps-test-mixed"], "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            io = json.loads(record["input_output"])
            if "fn_name" not in io and any(isinstance(x, list) for x in io["inputs"] + io["outputs"]):
                raw[str(record["problem_id"])] = io
    assert len(raw) == 116  # data README
    by_id = {p.problem_id: p for p in load_problems("apps-test-mixed")}
    for pid, io in raw.items():
        p = by_id[pid]
        assert p.kind == "stdin"
        assert [t.input for t in p.tests] == ["\n".join(x) for x in io["inputs"]]
        assert [t.output for t in p.tests] == ["\n".join(x) for x in io["outputs"]]
    assert by_id["520"].tests == [Case("3\nB\nc\nD", "BattleShip\nCruiser\nDestroyer")]


# ---------------------------------------------------------------------------------------------------------
# formats


def test_detect_format():
    assert detect_format({"problem_id": 1, "input_output": ""}) == "apps"
    assert detect_format({"question": "q", "input_output": ""}) == "apps"
    assert detect_format(HUMANEVAL_RECORD) == "humaneval"
    assert detect_format({"task_id": 2, "text": "t", "code": "c", "test_list": []}) == "mbpp"
    with pytest.raises(ValueError, match="unknown problem format.*use --format"):
        detect_format({"id": 1, "body": "x"})


def test_original_mbpp_layout_from_fixture():
    problems = load_problems(FIXTURES / "mbpp_original.jsonl")
    assert [p.problem_id for p in problems] == ["2", "3"]
    first, second = problems
    assert (first.source, first.kind, first.n_tests) == ("mbpp", "check", 1)
    assert first.completion_continues_prompt is False
    assert first.prompt == "Write a function to find the shared elements of two tuples."
    code = "def double(x):\n    return helper(x) * 2"
    assert second.program(code) == (
        code + "\n" + "def helper(x):\n    return x\n"
        "assert double(2) == 4\nassert double(0) == 0\nassert double(-3) == -6"
    )
    # no setup code: the asserts follow the program directly (after an empty setup line)
    assert first.check_code == ("\nassert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)\n"
                                "assert similar_elements((1, 2, 3, 4), (5, 4, 3, 7)) == (3, 4)")


def test_format_override(tmp_path):
    # a record with both layouts' fields: detection picks HumanEval, format="mbpp" the original MBPP one
    both = {**HUMANEVAL_RECORD, "text": "double it", "test_list": ["assert f(1) == 1"]}
    path = write_lines(tmp_path / "both.jsonl", [both])
    detected = load_problems(path)[0]
    forced = load_problems(path, format="mbpp")[0]
    assert (detected.source, detected.completion_continues_prompt, detected.entry_point) == (
        "humaneval", True, "f")
    assert detected.check_code == HUMANEVAL_RECORD["test"] + "\ncheck(f)"
    assert (forced.source, forced.completion_continues_prompt, forced.prompt) == ("mbpp", False, "double it")
    assert forced.check_code == "\nassert f(1) == 1"
    # forcing a format the records do not have is a DataError naming the missing field
    with pytest.raises(DataError) as e:
        load_problems("humaneval", format="apps")
    assert (e.value.line, e.value.field) == (1, "problem_id")
    assert str(e.value).startswith(str(BUNDLED["humaneval"]) + ", record 1, field 'problem_id'")


def test_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [apps_record(10, ["1\n"], ["2\n"]), apps_record(11, [[1, 2]], [[3]], fn_name="add")]
    path = tmp_path / "apps.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems = load_problems(path)
    assert [(p.problem_id, p.kind, p.n_tests) for p in problems] == [("10", "stdin", 1), ("11", "call", 1)]
    assert problems[1].tests == [Case([1, 2], [3])]
    assert problems[1].entry_point == "add"


def test_parquet_without_pyarrow_is_a_data_error(tmp_path, monkeypatch):
    # the dev extra installs pyarrow, so hide it: a None entry in sys.modules makes its import fail
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "apps.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pyarrow") as e:
        load_problems(path)
    assert e.value.path == str(path)


def test_apps_shapes(tmp_path):
    path = write_lines(tmp_path / "apps.jsonl", [
        apps_record(1, ["1 2\n", "3 4\n"], ["3\n", "7\n"]),
        apps_record(2, [[1, 2]], [[3]], fn_name="add"),
        {**apps_record(3, [], []), "input_output": ""},  # no tests at all
        apps_record("x-4", [["2", "a b"]], [["b", "a"]]),  # lists of lines
        {**apps_record(5, [], []), "input_output": {"inputs": ["1"], "outputs": ["1"]}},  # already parsed
    ])
    p1, p2, p3, p4, p5 = load_problems(path)
    assert (p1.problem_id, p1.kind, p1.n_tests, p1.tests[1]) == ("1", "stdin", 2, Case("3 4\n", "7\n"))
    assert (p2.kind, p2.entry_point, p2.tests) == ("call", "add", [Case([1, 2], [3])])
    assert (p3.kind, p3.n_tests, p3.tests) == ("stdin", 0, [])
    assert (p4.problem_id, p4.tests) == ("x-4", [Case("2\na b", "b\na")])
    assert p5.tests == [Case("1", "1")]


def test_check_problem_with_blank_test_has_no_tests(tmp_path):
    path = write_lines(tmp_path / "he.jsonl", [{**HUMANEVAL_RECORD, "test": "  \n"}])
    (p,) = load_problems(path)
    assert (p.check_code, p.n_tests) == ("", 0)
    assert Problem("m", "mbpp", "check", check_code="\n").n_tests == 0


# ---------------------------------------------------------------------------------------------------------
# DataErrors name the file, the record (line) and the field


def test_bad_json_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [HUMANEVAL_RECORD, '{"task_id": "X/1", "prompt": '])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 2, None)
    assert str(e.value).startswith(f"{path}, record 2: invalid JSON")


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(HUMANEVAL_RECORD) + "\n\n\n" + json.dumps({"task_id": "X/1"}) + "\n")
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.line, e.value.field) == (4, "entry_point")


@pytest.mark.parametrize("record,field", [
    ({k: v for k, v in HUMANEVAL_RECORD.items() if k != "test"}, "test"),
    ({**HUMANEVAL_RECORD, "entry_point": 3}, "entry_point"),  # wrong type
])
def test_humaneval_missing_or_mistyped_field(tmp_path, record, field):
    path = write_lines(tmp_path / "p.jsonl", [HUMANEVAL_RECORD, {**record, "task_id": "X/1"}])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 2, field)
    assert f"record 2, field '{field}'" in str(e.value)


def test_apps_missing_problem_id(tmp_path):
    record = apps_record(1, ["1"], ["1"])
    del record["problem_id"]
    path = write_lines(tmp_path / "p.jsonl", [apps_record(0, ["1"], ["1"]), record])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.line, e.value.field) == (2, "problem_id")
    assert "missing field" in str(e.value)


def test_mbpp_missing_test_list(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"task_id": 1, "text": "t", "code": "c", "test_list": []},
                                              {"task_id": 2, "text": "t", "code": "c"}])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.line, e.value.field) == (2, "test_list")


def test_inputs_outputs_length_mismatch(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [apps_record(1, ["1"], ["1"]),
                                              apps_record(2, ["1", "2"], ["1"])])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 2, "input_output")
    assert "2 inputs but 1 outputs" in str(e.value)


def test_invalid_input_output_json(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{**apps_record(1, [], []), "input_output": "{not json"}])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.line, e.value.field) == (1, "input_output")
    assert "invalid JSON" in str(e.value)


def test_stdin_test_that_is_not_text(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [apps_record(1, [{"a": 1}], ["1"])])
    with pytest.raises(DataError, match="stdin tests must be strings") as e:
        load_problems(path)
    assert (e.value.line, e.value.field) == (1, "input_output")


def test_input_output_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{**apps_record(1, [], []), "input_output": "[1, 2]"}])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.line, e.value.field) == (1, "input_output")


def test_duplicate_ids(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [apps_record(7, ["1"], ["1"]), apps_record(8, ["1"], ["1"]),
                                              apps_record("7", ["2"], ["2"])])  # 7 and "7" are one id
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.path, e.value.line) == (str(path), 3)
    assert "duplicate problem id '7'" in str(e.value)


def test_unknown_format_detected(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": 1, "body": "x"}])
    with pytest.raises(DataError) as e:
        load_problems(path)
    assert (e.value.path, e.value.line) == (str(path), 1)
    assert "unknown problem format" in str(e.value) and "--format" in str(e.value)


def test_unknown_format_requested():
    with pytest.raises(DataError) as e:
        load_problems("humaneval", format="codecontests")
    assert e.value.path == str(BUNDLED["humaneval"])
    assert "unknown format 'codecontests'" in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found") as e:
        load_problems(tmp_path / "nope.jsonl")
    assert e.value.path == str(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no problems in file"):
        load_problems(tmp_path / "empty.jsonl")


def test_model_prompt_is_the_question_plus_starter_code():
    """What the generator was given (the value model reads it before the completion)."""
    by_id = {p.problem_id: p for p in load_problems("apps-test-mixed")}
    call = by_id["3123"]
    assert call.model_prompt == call.prompt + "\n\nStarter code:\ndef count_repeats(txt):"
    humaneval = load_problems("humaneval")[0]
    assert humaneval.model_prompt == humaneval.prompt  # the completion continues it


def test_export_problems_writes_records_unchanged(tmp_path):
    from codevalue.problems import export_problems

    assert export_problems(FIXTURES / "mbpp_original.jsonl", tmp_path / "all.jsonl") == 2
    assert (tmp_path / "all.jsonl").read_text().splitlines() == [
        json.dumps(json.loads(line)) for line in (FIXTURES / "mbpp_original.jsonl").read_text().splitlines()
        if line.strip()]
    with pytest.raises(DataError, match="no problem 'nope'"):
        export_problems("humaneval", tmp_path / "x.jsonl", ids=["nope"])

"""Per-prefix value targets: hand-made rollout trees, smoothing, `at`, failure classes, build_targets."""

import json
import warnings
from pathlib import Path

import pytest

from codevalue.cli import main
from codevalue.errors import DataError
from codevalue.jsonl import read_jsonl
from codevalue.problems import Problem, load_problems
from codevalue.targets import (
    FAILURE_CLASSES,
    ValueTargets,
    build_targets,
    failure_class,
    prefix_value_targets,
)


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def as_pairs(targets: list[ValueTargets]) -> list[tuple[list[int], list[float]]]:
    return [(t.ends, t.values) for t in targets]


# ---------------------------------------------------------------------------------------------------------
# prefix_value_targets on hand-made trees

# One problem, four rollouts:        labels
#   "abcX"  -- shares "abc" with B, "ab" with C      pass
#   "abcY"                                           fail
#   "abZ"   -- shares "ab" with A and B              pass
#   "q"     -- alone from its first character        pass
TREE = ["abcX", "abcY", "abZ", "q"]
TREE_LABELS = [True, False, True, True]


def test_tree_branching_at_different_points():
    a, b, c, d = prefix_value_targets(TREE, TREE_LABELS)
    # prefixes of length 1..2 are shared by A, B, C (2 of 3 pass); length 3 by A, B (1 of 2); length 4 alone
    assert (a.ends, a.values) == ([2, 3, 4], [0.666667, 0.5, 1.0])
    assert (b.ends, b.values) == ([2, 3, 4], [0.666667, 0.5, 0.0])
    assert (c.ends, c.values) == ([2, 3], [0.666667, 1.0])
    assert (d.ends, d.values) == ([1], [1.0])


def test_tree_targets_do_not_depend_on_rollout_order():
    order = [3, 1, 0, 2]
    shuffled = prefix_value_targets([TREE[i] for i in order], [TREE_LABELS[i] for i in order])
    expected = as_pairs(prefix_value_targets(TREE, TREE_LABELS))
    assert as_pairs(shuffled) == [expected[i] for i in order]


def test_smoothing_formula_by_hand():
    a = 2.0
    p = 3 / 4  # the problem's pass rate
    a_t, b_t, c_t, d_t = prefix_value_targets(TREE, TREE_LABELS, smooth=a)
    shared3 = (3 * (2 / 3) + a * p) / (3 + a)  # "ab": k = 3, mean 2/3  -> 0.7
    shared2 = (2 * (1 / 2) + a * p) / (2 + a)  # "abc": k = 2, mean 1/2 -> 0.625
    assert shared3 == pytest.approx(0.7) and shared2 == pytest.approx(0.625)
    assert a_t.ends == [2, 3, 4] and a_t.values == [pytest.approx(shared3), pytest.approx(shared2), 1.0]
    assert b_t.values == [pytest.approx(shared3), pytest.approx(shared2), 0.0]
    assert c_t.values == [pytest.approx(shared3), 1.0]
    # the finished program keeps its own label, unsmoothed, even when it is alone
    assert d_t.values == [1.0]


def test_smoothing_pulls_unshared_prefix_toward_pass_rate():
    # "ab" is shared by two passing rollouts only; "c" shares nothing
    t = prefix_value_targets(["abX", "abY", "c"], [True, True, False], smooth=1.0)
    # "ab": k = 2, mean 1, p = 2/3 -> (2 + 2/3) / 3
    assert t[0].ends == [2, 3]
    assert t[0].values == [pytest.approx(round((2 + 2 / 3) / 3, 6)), 1.0]


def test_smoothing_pulls_a_prefix_no_other_rollout_shares():
    # "a" and "aa" are seen by the second rollout alone (k = 1, mean 1); p = 1/2; the finished program keeps its label
    empty, alone = prefix_value_targets(["", "aaa"], [False, True], smooth=1.0)
    assert (alone.ends, alone.values) == ([2, 3], [0.75, 1.0])
    assert (empty.ends, empty.values) == ([0], [0.0])
    assert prefix_value_targets(["", "aaa"], [False, True])[1].values == [1.0]  # unsmoothed: one segment


def test_exact_duplicates_keep_their_own_label_at_the_end():
    t = prefix_value_targets(["x = 1", "x = 1", "y"], [True, False, True])
    assert t[0].values[-1] == 1.0 and t[0].ends[-1] == 5
    assert t[1].values[-1] == 0.0 and t[1].ends[-1] == 5
    assert t[0].at(5) == 1.0 and t[1].at(5) == 0.0
    assert (t[2].ends, t[2].values) == ([1], [1.0])


def test_exact_duplicates_with_equal_labels_are_identical():
    t = prefix_value_targets(["ret", "ret", "ret"], [True, True, True])
    assert as_pairs(t)[0] == as_pairs(t)[1] == as_pairs(t)[2]
    assert all(x.ends[-1] == 3 and [x.at(k) for k in range(5)] == [1.0] * 5 for x in t)


def test_exact_duplicates_share_every_proper_prefix():
    t = prefix_value_targets(["x = 1", "x = 1", "y"], [True, False, True])
    # 'x = ' is the start of both duplicates (one passes, one fails): its Monte-Carlo value is 0.5
    assert t[0].at(4) == 0.5
    assert t[1].at(4) == 0.5


def test_strict_prefix_rollout_shares_its_prefixes():
    short, long_ = prefix_value_targets(["ab", "abc"], [True, False])
    assert long_.at(1) == 0.5
    assert short.at(1) == long_.at(1)


def test_single_rollout_all_targets_are_its_label():
    [t] = prefix_value_targets(["def f():\n    return 1\n"], [True])
    assert (t.ends, t.values) == ([22], [1.0])
    assert [t.at(k) for k in (0, 1, 11, 22, 99)] == [1.0] * 5
    [f] = prefix_value_targets(["x"], [False], smooth=3.0)
    assert (f.ends, f.values) == ([1], [0.0])


def test_empty_completion():
    t = prefix_value_targets(["", "", "abc"], [True, False, False])
    assert as_pairs(t) == [([0], [1.0]), ([0], [0.0]), ([3], [0.0])]
    assert t[0].at(0) == 1.0 and t[0].at(10) == 1.0


def test_no_rollouts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pass rate of nothing (numpy warns on the mean of an empty array)
        assert prefix_value_targets([], []) == []
        assert prefix_value_targets([], [], smooth=1.0) == []


def test_at_boundaries():
    t = ValueTargets(ends=[3, 7, 10], values=[0.25, 0.5, 1.0])
    assert t.at(0) == 0.25
    assert t.at(3) == 0.25  # exactly at an end: the prefix belongs to the segment ending there
    assert t.at(4) == 0.5
    assert t.at(7) == 0.5
    assert t.at(8) == 1.0
    assert t.at(10) == 1.0
    assert t.at(11) == 1.0  # past the end: clamped to the finished program
    assert t.at(10_000) == 1.0
    assert t.to_dict() == {"ends": [3, 7, 10], "values": [0.25, 0.5, 1.0]}


def test_docstring_example_boundaries():
    t = prefix_value_targets(["x = 1\nreturn x", "x = 1\nreturn 2", "pass"], [True, False, False])
    assert t[0].at(13) == 0.5 and t[0].at(14) == 1.0 and t[0].at(15) == 1.0
    assert t[1].at(13) == 0.5 and t[1].at(14) == 0.0


# ---------------------------------------------------------------------------------------------------------
# failure classes


@pytest.mark.parametrize("verdict, index", [
    ("pass", 0), ("wrong_answer", 1), ("runtime_error", 2), ("timeout", 3), ("syntax_error", 4),
    ("memory_exceeded", 2), ("infra_error", None), ("no such verdict", None),
])
def test_failure_class(verdict, index):
    assert failure_class(verdict) == index


def test_failure_classes_order():
    assert FAILURE_CLASSES == ("pass", "wrong_answer", "runtime_error", "timeout", "syntax_error")
    assert FAILURE_CLASSES[failure_class("memory_exceeded")] == "runtime_error"


# ---------------------------------------------------------------------------------------------------------
# build_targets


def labeled(pid, rid, completion, verdict, **extra) -> dict:
    return {"problem_id": pid, "rollout_id": rid, "completion": completion, "passed": verdict == "pass",
            "verdict": verdict, **extra}


@pytest.fixture(scope="module")
def humaneval():
    return {p.problem_id: p for p in load_problems("humaneval")}


def labeled_file(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "labeled.jsonl", [
        labeled("HumanEval/0", 0, "    return True\n", "pass"),
        # the text that ran is the truncated one (13 characters, not 22)
        labeled("HumanEval/0", 1, "    return 1\nprint(1)\n", "wrong_answer",
                completion_truncated="    return 1\n"),
        labeled("HumanEval/0", 2, "    return False\n", "memory_exceeded"),
        labeled("HumanEval/0", 3, "    while True: pass\n", "infra_error"),
        labeled("HumanEval/2", 0, "    return x\n", "timeout"),
        labeled("HumanEval/2", 1, "    return x % 1.0\n", "pass"),
    ])


def test_build_targets_end_to_end(tmp_path, humaneval):
    out = tmp_path / "out" / "targets.jsonl"
    summary = build_targets(labeled_file(tmp_path), "humaneval", out)
    assert summary == {"rollouts": 5, "problems": 2, "dropped_infra_error": 1, "smooth": 0.0}
    recs = [r for _, r in read_jsonl(out)]
    assert [(r["problem_id"], r["rollout_id"]) for r in recs] == [
        ("HumanEval/0", 0), ("HumanEval/0", 1), ("HumanEval/0", 2), ("HumanEval/2", 0), ("HumanEval/2", 1)]
    by_id = {(r["problem_id"], r["rollout_id"]): r for r in recs}
    r0, r1, r2 = by_id["HumanEval/0", 0], by_id["HumanEval/0", 1], by_id["HumanEval/0", 2]
    assert r0["prompt"] == humaneval["HumanEval/0"].prompt
    assert by_id["HumanEval/2", 0]["prompt"] == humaneval["HumanEval/2"].prompt
    # completion_truncated is what gets scored, and it is what the prefix sharing is computed on
    assert r1["completion_scored"] == "    return 1\n"
    assert r1["completion"] == "    return 1\nprint(1)\n"  # input fields are kept
    assert r1["completion_truncated"] == "    return 1\n"
    assert r0["completion_scored"] == "    return True\n"
    # all three share "    return " (11 chars); one of the three passes
    assert r0["value_targets"] == {"ends": [11, 16], "values": [0.333333, 1.0]}
    assert r1["value_targets"] == {"ends": [11, 13], "values": [0.333333, 0.0]}
    assert r2["value_targets"] == {"ends": [11, 17], "values": [0.333333, 0.0]}
    assert [r["label_class"] for r in recs] == [0, 1, 2, 3, 0]
    assert [r["problem_pass_rate"] for r in recs] == [0.333333] * 3 + [0.5] * 2  # infra_error not counted
    # "    return x" (12 chars) is shared by both HumanEval/2 rollouts
    assert by_id["HumanEval/2", 0]["value_targets"] == {"ends": [12, 13], "values": [0.5, 0.0]}
    assert by_id["HumanEval/2", 1]["value_targets"] == {"ends": [12, 19], "values": [0.5, 1.0]}


def test_build_targets_with_problem_list_and_smoothing(tmp_path, humaneval):
    problems = [humaneval["HumanEval/0"], humaneval["HumanEval/2"]]
    out = tmp_path / "t.jsonl"
    summary = build_targets(labeled_file(tmp_path), problems, out, smooth=1.0)
    assert summary["rollouts"] == 5 and summary["smooth"] == 1.0
    recs = {(r["problem_id"], r["rollout_id"]): r for _, r in read_jsonl(out)}
    # HumanEval/0 without the infra_error rollout: pass rate 1/3; "    return " seen by 3 with mean 1/3;
    # "    return True" by this rollout alone (k = 1, mean 1) -> (1 + 1/3) / 2; the program itself: its label
    assert recs["HumanEval/0", 0]["value_targets"] == {"ends": [11, 15, 16], "values": [0.333333, 0.666667, 1.0]}
    # HumanEval/2: pass rate 1/2, shared prefix k = 2 mean 1/2 -> 1/2; unshared prefix (1 + 1/2) / 2
    assert recs["HumanEval/2", 1]["value_targets"] == {"ends": [12, 18, 19], "values": [0.5, 0.75, 1.0]}


def test_build_targets_missing_passed_names_field_and_line(tmp_path):
    rec = labeled("HumanEval/0", 1, "    return 1\n", "pass")
    del rec["passed"]
    path = write_lines(tmp_path / "l.jsonl", [labeled("HumanEval/0", 0, "    return 0\n", "pass"), rec])
    with pytest.raises(DataError) as info:
        build_targets(path, "humaneval", tmp_path / "t.jsonl")
    assert str(info.value) == (f"{path}, record 2, field 'passed': missing field (is this `codevalue label` "
                               "output?)")
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.parametrize("field", ["problem_id", "completion", "verdict"])
def test_build_targets_missing_other_fields(tmp_path, field):
    rec = labeled("HumanEval/0", 0, "    return 0\n", "pass")
    del rec[field]
    with pytest.raises(DataError) as info:
        build_targets(write_lines(tmp_path / "l.jsonl", [rec]), "humaneval", tmp_path / "t.jsonl")
    assert (info.value.path, info.value.line, info.value.field) == (str(tmp_path / "l.jsonl"), 1, field)


def test_build_targets_unknown_problem(tmp_path):
    path = write_lines(tmp_path / "l.jsonl", [labeled("HumanEval/99999", 0, "x", "pass")])
    with pytest.raises(DataError) as info:
        build_targets(path, "humaneval", tmp_path / "t.jsonl")
    assert str(info.value) == f"{path}, record 1, field 'problem_id': unknown problem 'HumanEval/99999'"


def test_build_targets_refuses_a_rollout_twice(tmp_path):
    # the same rollout twice would weigh twice in its prefixes' Monte-Carlo values; ids per problem are fine
    recs = [labeled("HumanEval/0", 0, "    return 0\n", "pass"), labeled("HumanEval/2", 0, "    return 1\n", "pass"),
            labeled("HumanEval/0", 0, "    return 0\n", "pass")]
    with pytest.raises(DataError, match=r"record 3, field 'rollout_id': duplicate rollout_id '0' of problem "
                                        r"'HumanEval/0' \(first on record 1\)") as info:
        build_targets(write_lines(tmp_path / "l.jsonl", recs), "humaneval", tmp_path / "t.jsonl")
    assert info.value.path == str(tmp_path / "l.jsonl")
    assert not (tmp_path / "t.jsonl").exists()


def test_build_targets_only_infra_errors(tmp_path):
    path = write_lines(tmp_path / "l.jsonl", [labeled("HumanEval/0", 0, "x", "infra_error"),
                                              labeled("HumanEval/0", 1, "y", "infra_error")])
    summary = build_targets(path, "humaneval", tmp_path / "t.jsonl")
    assert summary == {"rollouts": 0, "problems": 0, "dropped_infra_error": 2, "smooth": 0.0}
    assert (tmp_path / "t.jsonl").read_text() == ""


def test_build_targets_rejects_unknown_verdict(tmp_path):
    path = write_lines(tmp_path / "l.jsonl", [labeled("HumanEval/0", 0, "x", "wrong answer")])
    with pytest.raises(DataError) as info:
        build_targets(path, "humaneval", tmp_path / "t.jsonl")
    assert str(info.value) == f"{path}, record 1, field 'verdict': unknown verdict 'wrong answer'"


def test_build_targets_prompt_is_what_the_generator_was_given(tmp_path):
    """The rollout's own prompt (written by `codevalue generate`), else the problem's: for APPS the question and
    its starter code, which the value model reads before the completion."""
    problems = [Problem("1", "apps", "call", prompt="Add two numbers.", starter_code="def add(a, b):\n",
                        entry_point="add"),
                Problem("2", "apps", "stdin", prompt="Print 1."),
                Problem("HumanEval/0", "humaneval", "check", prompt="def f():\n", check_code="check(f)")]
    path = write_lines(tmp_path / "l.jsonl", [
        labeled("1", 0, "    return a + b\n", "pass"), labeled("2", 0, "print(1)\n", "pass"),
        labeled("HumanEval/0", 0, "    return 1\n", "pass"),
        labeled("HumanEval/0", 1, "    return 2\n", "pass", prompt="<|user|>def f():\n<|assistant|>")])
    build_targets(path, problems, tmp_path / "t.jsonl")
    assert [r["prompt"] for _, r in read_jsonl(tmp_path / "t.jsonl")] == [
        "Add two numbers.\n\nStarter code:\ndef add(a, b):\n", "Print 1.", "def f():\n",
        "<|user|>def f():\n<|assistant|>"]


def test_cli_targets(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert main(["targets", str(labeled_file(tmp_path)), "--problems", "humaneval", "-o", str(out)]) == 0
    assert "wrote value targets for 5 rollouts of 2 problems" in capsys.readouterr().out
    assert len(list(read_jsonl(out))) == 5


def test_cli_targets_missing_field_exits_2(tmp_path, capsys):
    rec = labeled("HumanEval/0", 0, "x", "pass")
    del rec["passed"]
    path = write_lines(tmp_path / "l.jsonl", [rec])
    assert main(["targets", str(path), "--problems", "humaneval", "-o", str(tmp_path / "t.jsonl")]) == 2
    assert "field 'passed'" in capsys.readouterr().err

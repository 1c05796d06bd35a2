"""CodeT (Chen et al., 2022): rerank programs by dual agreement with model-generated tests.

    codevalue codet LABELED.jsonl --problems humaneval -o SCORES.jsonl [--tests GENERATED.jsonl.gz]

A non-learned baseline for the critics, using only what is available at selection time: the hidden
tests are never run. Test cases come from the generator's own test-writing samples (the bundled
CodeGen-16B ones by default: `assert ` + text, split into lines, kept when a line is one assert that
names the entry point and parses; placeholders like `____` dropped). Each distinct program runs once in
the sandbox with all of its problem's generated tests (each assert in its own try; a program that hangs
fails them all). Programs passing exactly the same tests form a consensus set S, scored
|rollouts in S| x |tests S passes|; every rollout gets its set's score divided by the problem's best,
written as `value`, so `codevalue evaluate` reports it like any critic.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .jsonl import read_jsonl, write_jsonl
from .problems import DATA_DIR, Problem, load_problems
from .sandbox import Job, Sandbox, SandboxConfig
from .targets import evaluated_completion

BUNDLED_TESTS = DATA_DIR / "humaneval" / "codegen16b_generated_tests.jsonl.gz"
RUNNER = '''

__codet_results = []
for __codet_test in __CODET_TESTS:
    try:
        exec(__codet_test, globals())
        __codet_results.append("1")
    except BaseException:
        __codet_results.append("0")
print("".join(__codet_results))
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


def dual_agreement(pass_sets: list[str]) -> list[float]:
    """Score of each rollout from the bitmasks of tests it passed: |set| x |tests passed|, normalised."""
    size: dict[str, int] = defaultdict(int)
    for bits in pass_sets:
        size[bits] += 1
    raw = [size[bits] * bits.count("1") for bits in pass_sets]
    top = max(raw, default=0)
    return [r / top if top else 0.0 for r in raw]


def codet_scores(labeled: str | os.PathLike, problems: str | os.PathLike | list[Problem],
                 out: str | os.PathLike, tests: str | os.PathLike = BUNDLED_TESTS, limit: int = 100,
                 sandbox: SandboxConfig | None = None) -> dict[str, Any]:
    if not isinstance(problems, list):
        problems = load_problems(problems)
    by_id = {p.problem_id: p for p in problems}
    texts: dict[str, list[str]] = defaultdict(list)
    for _, rec in read_jsonl(tests):
        texts[str(rec["task_id"])].append(rec["text"])
    generated = {pid: parse_generated_tests(texts.get(pid, []), p.entry_point, limit) for pid, p in by_id.items()}
    records = [rec for _, rec in read_jsonl(labeled)]
    programs: dict[tuple[str, str], Job] = {}
    for rec in records:
        pid = str(rec["problem_id"])
        p = by_id[pid]
        code = (p.prompt if p.completion_continues_prompt else "") + evaluated_completion(rec)
        key = (pid, code)
        if key not in programs:
            source = code + "\n__CODET_TESTS = " + repr(generated[pid]) + RUNNER
            programs[key] = Job(source, "stdin", "script", inputs=[""], timeout=5.0, tag=key)
    bits: dict[tuple[str, str], str] = {}
    with Sandbox(sandbox or SandboxConfig()) as box:
        for job, result in box.map(programs.values()):
            n = len(generated[job.tag[0]])
            out_lines = (result.tests[0].stdout or "").strip().splitlines() if result.tests else []
            last = out_lines[-1] if out_lines else ""
            bits[job.tag] = last if len(last) == n and set(last) <= {"0", "1"} else "0" * n
    by_problem: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_problem[str(rec["problem_id"])].append(i)
    rows: list[dict | None] = [None] * len(records)
    for pid, idx in by_problem.items():
        p = by_id[pid]
        keys = [(pid, (p.prompt if p.completion_continues_prompt else "") + evaluated_completion(records[i]))
                for i in idx]
        for i, value in zip(idx, dual_agreement([bits[k] for k in keys]), strict=True):
            rec = records[i]
            rows[i] = {k: rec[k] for k in ("problem_id", "rollout_id", "passed", "verdict", "sample_index")
                       if k in rec} | {"value": round(value, 6)}
    write_jsonl(out, rows)
    return {"rollouts": len(rows), "programs_run": len(programs),
            "tests_per_problem": sorted(len(t) for t in generated.values())[len(generated) // 2],
            "problems_without_tests": sum(not t for t in generated.values()), "out": str(Path(out))}

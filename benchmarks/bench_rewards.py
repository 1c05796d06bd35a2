"""Reward latency inside an RL step: `ExecutionReward` (warm sandbox) against one `python -c` per completion.

    .venv/bin/python benchmarks/bench_rewards.py [--batches 10] [--batch-size 64] [--workers W]

A batch is what one GRPO step asks for: 64 HumanEval completions. Two workloads:
  - distinct: half the canonical solutions, half `return None` (wrong), of 32 problems, every program different
    (batch b takes problems 32b..32b+31, cycling through all 164), so deduplication cannot help;
  - grpo-like: 8 problems x 8 samples, each sample the canonical solution or the wrong one: 16 distinct programs
    in 64, what a policy that has learnt its problems would produce (how often real GRPO batches repeat programs
    is not measured here); ours runs each distinct program once.
Every program is written here (the dataset's canonical solutions, or `return None`), never model output: the
baseline runs them outside any sandbox, as the reward examples it stands for do.

Compared, on the same batches, same machine, same run:
  - ours: `ExecutionReward.rewards(ids, completions)` on a sandbox kept warm across batches (its start-up is
    reported apart, since a training run pays it once);
  - naive, sequential: `subprocess.run([python, "-c", program], timeout=4)` per completion, reward = exit status
    0 (what most reward-function examples do);
  - naive, W threads: the same, W subprocesses at a time (W = the sandbox's workers);
  - naive, W threads + dedupe: the same with a dict cache per batch, so each distinct program runs once, as in
    ours: this row separates what deduplication gains (any reward function can do it) from what the warm
    sandbox gains per program.
Printed: p50 and p99 latency per batch, completions/s, the speed-up of ours at p50, whether both approaches
gave every completion the same pass bit, and the CPU time per completion (this process, its finished
subprocesses and the sandbox workers with the programs they ran): on a shared machine, where wall times
move with the load, the CPU ratio is the steadier comparison. With 10 batches, p99 is close to the maximum
(numpy's interpolated percentile: the second-slowest batch plus 0.91 of the way to the slowest).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from codevalue.problems import BUNDLED, load_problems
from codevalue.rewards import ExecutionReward
from codevalue.rollouts import program_for
from codevalue.sandbox import SandboxConfig

WRONG = "    return None\n"


def canonical_solutions() -> dict[str, str]:
    with gzip.open(BUNDLED["humaneval"], "rt") as f:
        return {r["task_id"]: r["canonical_solution"] for r in map(json.loads, f)}


def batches(problems, solutions, n: int, size: int, workload: str) -> list[list[tuple[str, str]]]:
    """n batches of `size` (problem_id, completion) pairs."""
    out = []
    for b in range(n):
        if workload == "distinct":
            chosen = [problems[(b * size // 2 + k) % len(problems)] for k in range(size // 2)]
            pairs = [(p.problem_id, c) for p in chosen for c in (solutions[p.problem_id], WRONG)]
        else:
            chosen = [problems[(b * 8 + k) % len(problems)] for k in range(size // 8)]
            pairs = [(p.problem_id, solutions[p.problem_id] if (j * 5 + b) % 3 else WRONG)
                     for p in chosen for j in range(8)]
        out.append(pairs)
    return out


def naive_reward(program: str, cwd: str) -> float:
    """One fresh interpreter per completion; pass = it exits normally within the time limit."""
    try:
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=4.0, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 0.0
    return float(done.returncode == 0)


def cpu_seconds(worker_pids: list[int]) -> float:
    """CPU used so far by this process, its waited-for subprocesses, and the sandbox workers (each with the
    program children it waited for)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for pid in worker_pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def timed(fn: Callable[[list[tuple[str, str]]], list[float]], work: list[list[tuple[str, str]]],
          worker_pids: list[int]) -> tuple[list[float], list[list[float]], float]:
    """Latency of every batch, the rewards, and the CPU seconds of all batches."""
    latencies, rewards = [], []
    cpu = cpu_seconds(worker_pids)
    for pairs in work:
        start = time.perf_counter()
        rewards.append(fn(pairs))
        latencies.append(time.perf_counter() - start)
    return latencies, rewards, cpu_seconds(worker_pids) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.batch_size % 8:
        parser.error("--batch-size must be a multiple of 8")
    problems = load_problems("humaneval")
    by_id = {p.problem_id: p for p in problems}
    solutions = canonical_solutions()
    print(f"{args.batches} batches of {args.batch_size} HumanEval completions, W = {args.workers}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    start = time.perf_counter()
    reward = ExecutionReward(problems, sandbox=SandboxConfig(workers=args.workers))
    reward.rewards(["HumanEval/0"], [solutions["HumanEval/0"]])  # starts the sandbox
    startup = time.perf_counter() - start
    rows = [("ours: sandbox start-up (once per training run)", f"{1000 * startup:.0f} ms", "", "", "", "")]
    worker_pids = [w.proc.pid for w in reward._sandbox._workers]
    with reward, tempfile.TemporaryDirectory() as cwd, ThreadPoolExecutor(args.workers) as pool:
        def ours(pairs):
            return reward.rewards([pid for pid, _ in pairs], [c for _, c in pairs])

        def programs(pairs):
            return [program_for(by_id[pid], c) for pid, c in pairs]

        def sequential(pairs):
            return [naive_reward(p, cwd) for p in programs(pairs)]

        def threaded(pairs):
            return list(pool.map(lambda p: naive_reward(p, cwd), programs(pairs)))

        def threaded_deduped(pairs):
            todo = programs(pairs)
            distinct = list(dict.fromkeys(todo))
            cache = dict(zip(distinct, pool.map(lambda p: naive_reward(p, cwd), distinct), strict=True))
            return [cache[p] for p in todo]

        for workload in ("distinct", "grpo-like"):
            work = batches(problems, solutions, args.batches, args.batch_size, workload)
            distinct = np.mean([len(set(pairs)) for pairs in work])
            results = {}
            for name, fn in (("ours", ours), ("naive, sequential", sequential),
                             (f"naive, {args.workers} threads", threaded),
                             (f"naive, {args.workers} threads + dedupe (dict cache)", threaded_deduped)):
                results[name] = timed(fn, work, worker_pids)
            p50_ours = np.percentile(results["ours"][0], 50)
            n = args.batches * args.batch_size
            cpu_ours = results["ours"][2] / n
            for name, (latencies, rewards, cpu) in results.items():
                p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
                same = rewards == results["ours"][1]
                versus = "-" if name == "ours" else (f"{p50 / p50_ours:.1f}x wall, {cpu / n / cpu_ours:.1f}x CPU; "
                                                     f"same rewards: {same}")
                rows.append((f"{workload} ({distinct:.0f} distinct programs/batch): {name}", f"{1000 * p50:.0f} ms",
                             f"{1000 * p99:.0f} ms", f"{args.batch_size / p50:.0f}", f"{1000 * cpu / n:.1f} ms",
                             versus))
    print_table(rows)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("reward for a batch", "p50", "p99", "completions/s (p50)", "CPU per completion", "ours faster by")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

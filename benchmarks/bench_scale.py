"""Scale benchmark of the execution engine: memory against the number of rollouts, Ray against local.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--skip-memory] [--skip-ray]

1. Memory. Synthetic HumanEval-layout data: 1,000 problems, 20 distinct trivial programs each (`return j`,
   one of them right), the other rollouts duplicates. For each size, `codevalue label` runs in a fresh
   process and reports the peak RSS of that (the labelling) process, beside the input size; the sandbox
   workers are separate processes with their own fixed footprint and are not counted. The baseline in the
   same run is the smallest size: the table shows how peak RSS grows from there.
2. Ray against local, same cores. The bundled 16,400 CodeGen-16B HumanEval samples (Codex stop list),
   labelled by the local executor and by the Ray executor on a one-node local cluster with the same cores
   (`--ray local`), in alternation (`--repeats` each), fresh outputs every time. Printed: wall time of the
   run itself (the executor is up) and cluster start-up separately, programs/s, the ratio Ray/local, and
   whether the two produced identical records.
3. `--node-loss`: the bundled set on a two-node local cluster (1 core each) through `codevalue label --ray
   HOST:PORT`, one node removed after it ran 2,000 programs; the records must equal the local executor's.

Run on a quiet machine: the ratios assume nothing else competes for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_RSS = ("import resource, sys; from codevalue.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")


def synthetic(tmp: Path, n_rollouts: int, n_problems: int = 1000, distinct: int = 20) -> tuple[Path, Path]:
    problems = tmp / "synthetic-problems.jsonl"
    if not problems.exists():
        problems.write_text("".join(json.dumps({
            "task_id": f"S/{i}", "prompt": "def f():\n", "entry_point": "f",
            "test": "def check(c):\n    assert c() == 0\n"}) + "\n" for i in range(n_problems)))
    rollouts = tmp / f"synthetic-{n_rollouts}.jsonl"
    with open(rollouts, "w") as f:
        for k in range(n_rollouts):
            pid, j = k % n_problems, (k // n_problems) % distinct
            f.write(json.dumps({"problem_id": f"S/{pid}", "rollout_id": f"S/{pid}/{k}",
                                "completion": f"    return {j}\n"}) + "\n")
    return problems, rollouts


def label_process(args: list[str]) -> tuple[float, int, dict]:
    """Run `codevalue label ARGS` in a fresh process: (wall seconds, peak RSS in KiB, meta.json)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, "label", *args, "--quiet"], capture_output=True,
                          text=True, cwd=ROOT)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"codevalue label failed:\n{done.stderr[-3000:]}")
    peak = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    out = Path(args[args.index("--out") + 1])
    return wall, peak, json.loads(out.with_name(out.name + ".meta.json").read_text())


def bench_memory(tmp: Path, sizes: list[int]) -> None:
    print("\n## Peak RSS of the labelling process against the number of rollouts")
    print("(synthetic: 1,000 problems x 20 distinct programs, the rest duplicates; local executor, all cores)\n")
    print(f"| {'rollouts':>9} | {'input MB':>8} | {'programs run':>12} | {'wall s':>7} | {'peak RSS MiB':>12} | "
          f"{'x smallest':>10} |")
    print("|---:|---:|---:|---:|---:|---:|")
    first = None
    for n in sizes:
        problems, rollouts = synthetic(tmp, n)
        out = tmp / f"labeled-{n}.jsonl"
        wall, peak, meta = label_process(["--problems", str(problems), "--rollouts", str(rollouts),
                                          "--out", str(out)])
        first = first or peak
        right = sum(min(1000, n - block * 1000) for block in range(0, -(-n // 1000), 20))  # blocks with j == 0
        if (meta["rollouts"], meta["verdicts"].get("pass", 0)) != (n, right):
            sys.exit(f"wrong labels at {n}: {meta['rollouts']} rollouts, {meta['verdicts']} (expected {right} pass)")
        print(f"| {n:>9,} | {rollouts.stat().st_size / 2**20:>8.1f} | {meta['executed_programs']:>12,} | "
              f"{wall:>7.1f} | {peak / 1024:>12.1f} | {peak / first:>10.2f} |", flush=True)
        for path in (rollouts, out, out.with_name(out.name + ".programs.jsonl")):
            path.unlink()


def bench_ray(tmp: Path, repeats: int) -> None:
    from codevalue.rollouts import CODEX_STOP, bundled_codegen_rollouts

    rollouts = bundled_codegen_rollouts(tmp / "codegen.jsonl")
    stops = [x for s in CODEX_STOP for x in ("--stop", s.encode("unicode_escape").decode())]
    runs: dict[str, list[tuple[float, float, int]]] = {"local": [], "ray": []}
    outputs: dict[str, bytes] = {}
    print("\n## Ray executor (local one-node cluster, same cores) against the local executor")
    print("(bundled 16,400 CodeGen-16B HumanEval samples, Codex stop list; fresh output every run)\n")
    for r in range(repeats):
        for kind in ("local", "ray"):
            out = tmp / f"{kind}-{r}.jsonl"
            extra = ["--ray", "local"] if kind == "ray" else []
            _, _, meta = label_process(["--problems", "humaneval", "--rollouts", str(rollouts), "--out", str(out),
                                        *stops, *extra])
            runs[kind].append((meta["run_seconds"], meta["executor_start_seconds"], meta["executed_programs"]))
            outputs.setdefault(kind, out.read_bytes())
            same = out.read_bytes() == outputs["local"] if "local" in outputs else None
            if same is False:
                print_differences(tmp / "local-0.jsonl", out)
            print(f"run {r + 1} {kind:>5}: {meta['executed_programs']} programs in {meta['run_seconds']} s "
                  f"(+ {meta['executor_start_seconds']} s start-up), nodes {meta['executor']['nodes']}"
                  f"{'' if same is None else ', identical records' if same else ', RECORDS DIFFER'}", flush=True)
    print(f"\n| executor | run s (median of {repeats}) | start-up s | programs/s | x local |")
    print("|---|---:|---:|---:|---:|")
    local = statistics.median(s for s, _, _ in runs["local"])
    for kind, rows in runs.items():
        run = statistics.median(s for s, _, _ in rows)
        start = statistics.median(s for _, s, _ in rows)
        print(f"| {kind} | {run:.1f} | {start:.1f} | {rows[0][2] / run:.0f} | {local / run:.2f} |")
    print(f"\nidentical records: {outputs['ray'] == outputs['local']}")


def bench_node_loss(tmp: Path) -> None:
    """The bundled set on a two-node cluster (1 core each), one node removed once it has run 2,000 programs:
    every record must equal the local executor's."""
    from ray.cluster_utils import Cluster

    from codevalue.rollouts import CODEX_STOP, bundled_codegen_rollouts

    rollouts = bundled_codegen_rollouts(tmp / "codegen.jsonl")
    stops = [x for s in CODEX_STOP for x in ("--stop", s.encode("unicode_escape").decode())]
    local_out = tmp / "local-ref.jsonl"
    label_process(["--problems", "humaneval", "--rollouts", str(rollouts), "--out", str(local_out), *stops])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp / "two-nodes.jsonl"
    log = tmp / "two-nodes.jsonl.programs.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "codevalue", "label", "--problems", "humaneval", "--rollouts",
                             str(rollouts), "--out", str(out), *stops, "--ray", cluster.address, "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if log.exists() and sum(doomed.node_id in line for line in log.read_text().splitlines()) >= 2000:
            cluster.remove_node(doomed)
            print(f"removed node {doomed.node_id[:12]} after it ran 2,000 programs", flush=True)
            break
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    cluster.shutdown()
    if proc.returncode != 0:
        sys.exit(f"two-node run failed:\n{stderr[-3000:]}")
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    print("\n## Two nodes, one lost mid-run (bundled set)\n")
    print(f"executor: {json.dumps(meta['executor'])}")
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    print(f"programs: {meta['executed_programs']}, results logged {len(keys)}, distinct {len(set(keys))}; "
          f"records identical to the local executor's: {out.read_bytes() == local_out.read_bytes()}")
    print_differences(local_out, out)


def print_differences(a: Path, b: Path) -> None:
    """Which records differ, and how (a verdict near a time limit can flip on a loaded machine)."""
    differ = [(x, y) for x, y in zip(map(json.loads, a.open()), map(json.loads, b.open()), strict=True) if x != y]
    for x, y in differ[:20]:
        why = lambda r: (r["first_failure"] or {}).get("reason", "")[:70]  # noqa: E731
        print(f"  {x['rollout_id']}: {x['verdict']} ({why(x)}) vs {y['verdict']} ({why(y)})")
    if differ:
        print(f"  {len(differ)} records differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--node-loss", action="store_true", help="also: the bundled set on two nodes, one lost")
    args = parser.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the local cluster binds and advertises 127.0.0.1
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if not args.skip_memory:
            bench_memory(Path(tmp), [int(s) for s in args.sizes.split(",")])
        if not args.skip_ray:
            bench_ray(Path(tmp), args.repeats)
        if args.node_loss:
            bench_node_loss(Path(tmp))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

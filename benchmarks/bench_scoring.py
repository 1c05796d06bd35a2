"""Scoring benchmark: per-token values in one forward pass vs rescoring every prefix, and batch throughput.

    .venv/bin/python benchmarks/bench_scoring.py [--sizes 1m 4m 16m] [--device cpu|cuda] [--dtype bfloat16]
                                                 [--repeats 3] [--rollouts 64] [--threads 1]

Models are untrained tiny Phi-3 models built from their config (`build_tiny_model`, random init: speed
does not depend on the weights) with the shipped tokenizer. Each timing is the best of --repeats runs
after one warm-up run (the naive baseline: of max(1, repeats - 2) runs). Baselines are measured in the
same run, so compare the ratios, not the seconds. CPU runs use 1 torch thread by default (--threads):
on a small shared machine, OpenMP threads that spin waiting for busy cores made every forward 10-30x
slower and the timings meaningless; pass --threads 0 for torch's default.

1. Per-token scoring of one 256-token program (the first HumanEval prompt + canonical solution with at
   least 256 tokens, its last 256 tokens, no EOS):
   - one pass: `ValueModel.score(..., finished=False)`, which returns the value at every token;
   - naive:    one forward per prefix `ids[:k]`, k = 1..256, reading the value at the last position
               (what scoring each prefix as a separate rollout costs, minus re-tokenization).
   Printed: values/s of each, the speed-up, and the max abs difference between the two value vectors
   (float32: ~1e-7 here, the two differ only in kernel shapes; bfloat16: ~1e-3).
2. Batch scoring of --rollouts real rollouts of ~256 tokens (CodeGen-16B HumanEval samples whose prompt +
   completion_raw + EOS has 240..272 tokens, spread over problems) with `ValueModel.score` at batch sizes
   1, 8, 32 (tokenization included): rollouts/s, tokens/s and the speed-up over batch size 1.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from functools import partial

import torch

from codevalue.jsonl import read_jsonl
from codevalue.model import InputSpec, ValueModel, build_tiny_model, encode, load_tokenizer
from codevalue.problems import DATA_DIR

HUMANEVAL = DATA_DIR / "humaneval"
PROGRAM_TOKENS = 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times), result


def long_program(tok) -> str:
    for _, rec in read_jsonl(HUMANEVAL / "problems.jsonl.gz"):
        text = rec["prompt"] + rec["canonical_solution"]
        if len(tok(text, add_special_tokens=False)["input_ids"]) >= PROGRAM_TOKENS:
            return text
    raise SystemExit(f"no HumanEval program with {PROGRAM_TOKENS} tokens")


def rollouts_near_256(tok, n: int, spec: InputSpec) -> list[tuple[str, str]]:
    """n (prompt, completion) pairs of 240..272 tokens, taken round-robin over problems."""
    prompts = {r["task_id"]: r["prompt"] for _, r in read_jsonl(HUMANEVAL / "problems.jsonl.gz")}
    by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for _, rec in read_jsonl(HUMANEVAL / "codegen16b_samples.jsonl.gz"):
        pair = (prompts[rec["task_id"]], rec["completion_raw"])
        if 240 <= len(encode(tok, *pair, spec).input_ids) <= 272:
            by_task[rec["task_id"]].append(pair)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < n and any(by_task.values()):
        for pairs in by_task.values():
            if pairs and len(chosen) < n:
                chosen.append(pairs.pop(0))
    return chosen


@torch.no_grad()
def prefix_values(model, ids: list[int], device: torch.device) -> torch.Tensor:
    """The naive way: one forward per prefix, value at its last position."""
    x = torch.tensor([ids], device=device)
    out = [model(input_ids=x[:, :k]).logits[0, -1, 0] for k in range(1, len(ids) + 1)]
    return torch.sigmoid(torch.stack(out).float()).cpu()


def bench_size(size, tok, device, dtype, repeats, program, program_ids, pairs, n_tokens):
    """(per-token row, batch rows) for one tiny model size."""
    model = build_tiny_model(size, tok).to(device=device, dtype=dtype).eval()
    label = f"{size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)"
    vm = ValueModel(model, tok, InputSpec(max_length=PROGRAM_TOKENS))
    t_one, [score] = best_time(partial(vm.score, [""], [program], finished=False), device, repeats)
    t_naive, naive = best_time(partial(prefix_values, model, program_ids, device), device, max(1, repeats - 2))
    diff = (torch.tensor(score.values) - naive).abs().max().item()
    n = len(score.values)
    per_token = (label, n, n / t_one, n / t_naive, t_naive / t_one, diff)

    vm = ValueModel(model, tok, InputSpec())
    prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
    batched, base = [], None
    for bs in (1, 8, 32):
        t, _ = best_time(partial(vm.score, prompts, completions, batch_size=bs), device, repeats)
        base = base or t
        batched.append((label, bs, len(pairs) / t, n_tokens / t, base / t))
    return per_token, batched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["1m", "4m"], choices=["1m", "4m", "16m"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    tok = load_tokenizer()
    program = long_program(tok)
    program_ids = encode(tok, "", program, InputSpec(max_length=PROGRAM_TOKENS), finished=False).input_ids
    pairs = rollouts_near_256(tok, args.rollouts, InputSpec())
    n_tokens = sum(len(encode(tok, p, c, InputSpec()).input_ids) for p, c in pairs)
    print(f"device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}; "
          f"program {len(program_ids)} tokens; {len(pairs)} rollouts, {n_tokens} tokens "
          f"(mean {n_tokens / max(1, len(pairs)):.0f}) from {len({p for p, _ in pairs})} problems\n")

    per_token, batched = [], []
    for size in args.sizes:
        rows = bench_size(size, tok, device, dtype, args.repeats, program, program_ids, pairs, n_tokens)
        per_token.append(rows[0])
        batched.extend(rows[1])
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"Per-token values of one {PROGRAM_TOKENS}-token program: one pass vs one forward per prefix")
    print(f"{'model':<14}{'values':>7}{'one-pass val/s':>16}{'naive val/s':>13}{'speed-up':>10}{'max|diff|':>11}")
    for label, n, one, naive, speedup, diff in per_token:
        print(f"{label:<14}{n:>7}{one:>16,.0f}{naive:>13,.0f}{speedup:>9.1f}x{diff:>11.1e}")
    print(f"\nBatch scoring of {len(pairs)} rollouts (~256 tokens) with ValueModel.score")
    print(f"{'model':<14}{'batch':>6}{'rollouts/s':>12}{'tokens/s':>11}{'vs bs=1':>9}")
    for label, bs, rps, tps, ratio in batched:
        print(f"{label:<14}{bs:>6}{rps:>12,.1f}{tps:>11,.0f}{ratio:>8.2f}x")


if __name__ == "__main__":
    main()

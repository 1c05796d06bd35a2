"""Training benchmark: the project's Trainer path vs a plain PyTorch loop on the same tiny model and batches.

    .venv/bin/python benchmarks/bench_train.py [--size 1m|4m] [--steps 40] [--warmup 5] [--batch-size 8]
                                               [--seq-len 256] [--rounds 4] [--device cpu|cuda] [--bf16]
                                               [--full] [--threads 1] [--no-trim]

Both variants get the same model (`prepare_model`: same seed, same frozen parameters: head + last 12
blocks, i.e. everything but the embeddings of a tiny model, or everything with --full), the same
examples in the same order, the same optimizer, clipping and loss:
- trainer: `ValueTrainer` + `ValueTrainingArguments` + `ValueCollator` as `train_value_model` uses them,
  with train_sampling_strategy="sequential" (no shuffling), constant lr, no warmup, weight decay 0,
  max_grad_norm=1.0 (the Trainer's default), logging every 10 steps (as the CLI), no saving/eval.
- plain: the batch list is built once with the same `ValueCollator` over the same features; then
  forward, `value_loss`, backward, clip_grad_norm_(1.0), step, zero_grad. The optimizer is built with
  `Trainer.get_optimizer_cls_and_kwargs(args)`, so it is the Trainer's (AdamW, fused where the
  Trainer picks fused), with the same lr, betas and eps.
Examples: CodeGen-16B HumanEval samples (prompt + completion_raw) with at least --seq-len tokens, left-cut
to --seq-len (no padding, so every step costs the same), with value targets from pseudo-random pass
labels (`prefix_value_targets`; speed does not depend on the labels).

Each variant runs in its own subprocess (clean peak RSS from getrusage; on CUDA, peak allocated memory),
--rounds times, alternating (plain, trainer, trainer, plain, ...); each column is the best of the rounds: the
machine may be shared. Besides wall time, the timed steps' CPU time of the process (time.process_time) is
shown: with one thread on CPU it is what the work costs, and it barely moves when other processes compete
for the cores, while wall time does (on CUDA it is only the host's share). --warmup steps run before the
clock starts, then --steps timed steps; tokens are the real tokens of the timed batches. After the same
steps both variants must hold the same weights: the max abs difference of the trained parameters is
printed (0 on CPU float32: bit-identical). CPU runs use 1 torch thread by default (--threads; 0: torch's
default), see benchmarks/bench_scoring.py.

--no-trim runs both children with glibc malloc told never to hand memory back to the OS
(MALLOC_TRIM_THRESHOLD_ etc.). On CPU the two loops allocate alike, but which small tensor outlives a step
(the plain loop keeps its last `logits`/`loss` alive until the next step; the Trainer drops them) decides
whether glibc trims the heap after every backward pass, so the Trainer took ~2-4x the page faults and
~0.3-0.5 s more system time per 65 steps here; --no-trim removes that allocator artifact from the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from codevalue.jsonl import read_jsonl
from codevalue.model import InputSpec, encode, load_tokenizer
from codevalue.problems import DATA_DIR
from codevalue.targets import prefix_value_targets
from codevalue.train import (
    ValueCollator,
    ValueTrainer,
    ValueTrainingArguments,
    prepare_model,
    tokenize_example,
    value_loss,
)

HUMANEVAL = DATA_DIR / "humaneval"


def features(tok, n: int, seq_len: int) -> list[dict]:
    """n tokenized examples of seq_len tokens (cycled if too few are that long)."""
    prompts = {r["task_id"]: r["prompt"] for _, r in read_jsonl(HUMANEVAL / "problems.jsonl.gz")}
    spec, by_task = InputSpec(max_length=seq_len), defaultdict(list)
    for _, rec in read_jsonl(HUMANEVAL / "codegen16b_samples.jsonl.gz"):
        if len(encode(tok, prompts[rec["task_id"]], rec["completion_raw"], spec).input_ids) == seq_len:
            by_task[rec["task_id"]].append(rec["completion_raw"])
        if sum(map(len, by_task.values())) >= n:
            break
    rng, recs = random.Random(0), []
    for task, completions in by_task.items():
        passed = [rng.random() < 0.3 for _ in completions]
        for c, p, t in zip(completions, passed, prefix_value_targets(completions, passed), strict=True):
            recs.append({"prompt": prompts[task], "completion_scored": c, "value_targets": t.to_dict(),
                         "label_class": 0 if p else 1})
    return [tokenize_example(tok, recs[i % len(recs)], spec) for i in range(n)]


def training_args(a, out_dir: str) -> ValueTrainingArguments:
    return ValueTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=a.batch_size, max_steps=a.warmup + a.steps,
        learning_rate=3e-4, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        logging_steps=10, save_strategy="no", eval_strategy="no", train_sampling_strategy="sequential",
        disable_tqdm=True, seed=0, use_cpu=a.device == "cpu", bf16=a.bf16, dataloader_num_workers=0,
        train_last_layers=-1 if a.full else 12, max_length=a.seq_len)


def run_variant(a) -> dict:
    """Train in this process; return timing, memory, and save the trained weights to a.weights."""
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    targs = training_args(a, tempfile.mkdtemp(prefix="bench-train-"))
    model, tok = prepare_model(targs, None, a.size, num_labels=1)
    feats = json.loads(Path(a.features).read_text())
    collator = ValueCollator(tok.pad_token_id)
    tokens = sum(len(f["input_ids"]) for f in feats[a.warmup * a.batch_size:])
    clock: list[tuple[float, float]] = []  # (wall, this process's CPU time)

    def tick(step: int) -> None:
        if step in (a.warmup, a.warmup + a.steps):
            sync()
            clock.append((time.perf_counter(), time.process_time()))

    if a.variant == "trainer":
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                tick(state.global_step)

        trainer = ValueTrainer(model=model, args=targs, train_dataset=feats, data_collator=collator,
                               callbacks=[Clock()])
        trainer.train()
        opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    else:
        model.to(device).train()
        batches = [collator(feats[i:i + a.batch_size]) for i in range(0, len(feats), a.batch_size)]
        params = [p for p in model.parameters() if p.requires_grad]
        opt_cls, opt_kwargs = ValueTrainer.get_optimizer_cls_and_kwargs(targs, model)
        opt = opt_cls([{"params": params, "weight_decay": 0.0}], **opt_kwargs)
        for step, batch in enumerate(batches, start=1):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = value_loss(logits, batch["value_labels"], batch["class_labels"], batch["last_index"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, targs.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tick(step)
    torch.save({n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}, a.weights)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"seconds": clock[1][0] - clock[0][0], "cpu_seconds": clock[1][1] - clock[0][1], "tokens": tokens,
            "peak_mb": peak / 2**20,
            "optimizer": "{}(lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}, fused={fused})".format(
                type(opt).__name__, **opt.param_groups[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1m", choices=["1m", "4m"])
    ap.add_argument("--steps", type=int, default=40, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4, help="subprocess runs per variant (best kept)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (Trainer bf16=True)")
    ap.add_argument("--full", action="store_true", help="train every parameter (else head + last 12 blocks)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-trim", action="store_true",
                    help="children run with glibc malloc never giving memory back (fewer page faults)")
    ap.add_argument("--variant", choices=["plain", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.variant:  # child process
        print("RESULT " + json.dumps(run_variant(a)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    feats = tmp / "features.json"  # built once here, so both variants read the very same examples
    feats.write_text(json.dumps(features(load_tokenizer(), (a.warmup + a.steps) * a.batch_size, a.seq_len)))
    env = dict(os.environ)
    if a.no_trim:
        env.update(MALLOC_TRIM_THRESHOLD_=str(2**30), MALLOC_MMAP_THRESHOLD_=str(2**25), MALLOC_TOP_PAD_=str(2**26))
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for variant in ("plain", "trainer")[::1 if r % 2 == 0 else -1]:  # ABBA order: no first-runner bias
            weights = tmp / f"{variant}.pt"
            cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--weights", str(weights),
                   "--features", str(feats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            res = json.loads(lines[-1][7:])
            print(f"round {r + 1} {variant:<8} {res['tokens'] / res['seconds']:>9,.0f} tokens/s  "
                  f"({res['tokens'] / res['cpu_seconds']:,.0f} per CPU second)", flush=True)
            if variant not in best:
                best[variant] = res
            for key in ("seconds", "cpu_seconds", "peak_mb"):  # best of the rounds, per column
                best[variant][key] = min(best[variant][key], res[key])

    w_plain, w_trainer = torch.load(tmp / "plain.pt"), torch.load(tmp / "trainer.pt")
    diff = max((w_plain[k] - w_trainer[k]).abs().max().item() for k in w_plain)
    memory = "peak CUDA MB" if a.device.startswith("cuda") else "peak RSS MB"
    print(f"\n{a.size} model, batch {a.batch_size} x {a.seq_len} tokens, {a.warmup} warm-up + {a.steps} timed steps, "
          f"device {a.device}{' bf16' if a.bf16 else ''}, threads {torch.get_num_threads()}, best of {a.rounds}"
          f"{', malloc no-trim' if a.no_trim else ''}")
    for variant in ("plain", "trainer"):
        print(f"{variant} optimizer: {best[variant]['optimizer']}")
    print(f"{'variant':<10}{'steps':>6}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}{'vs plain':>10}"
          f"{'CPU s':>8}{'tokens/CPU s':>14}{'vs plain':>10}{memory:>14}")
    base, cpu_base = (best["plain"]["tokens"] / best["plain"][k] for k in ("seconds", "cpu_seconds"))
    for variant in ("plain", "trainer"):
        res = best[variant]
        tps, cps = res["tokens"] / res["seconds"], res["tokens"] / res["cpu_seconds"]
        print(f"{variant:<10}{a.steps:>6}{res['tokens']:>9,}{res['seconds']:>9.2f}{tps:>10,.0f}{tps / base:>9.2f}x"
              f"{res['cpu_seconds']:>8.2f}{cps:>14,.0f}{cps / cpu_base:>9.2f}x{res['peak_mb']:>14,.0f}")
    print(f"max |weight difference| after {a.warmup + a.steps} steps: {diff:.1e}")


if __name__ == "__main__":
    main()

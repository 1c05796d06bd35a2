"""Reward-server benchmark: concurrent clients with micro-batching vs sequential one-item scoring.

    .venv/bin/python benchmarks/bench_serve.py [--requests 200] [--clients 8] [--time-limit 60]
                                               [--size 4m | --model DIR] [--max-batch 32] [--threads 1]

Drives `codevalue.serve` over loopback HTTP (httpx, one client per thread, proxies ignored) with real
(prompt, completion) pairs: HumanEval prompts + CodeGen-16B samples of at most --max-item-tokens tokens,
taken round-robin over problems. Every configuration sends the same requests (one item each, unless
--items-per-request) to a fresh server. The server runs in its own process (this script with --child), as
in deployment, so the clients do not share its interpreter.

  1. baseline: one client, one request at a time, batching off (max_batch=1): sequential one-item scoring;
  2. --clients concurrent clients, batching off (max_batch=1): what concurrency alone gives;
  3. --clients concurrent clients, micro-batching on (--max-batch, --forward-batch, --max-wait-ms).

Each configuration is bounded: --requests requests, and no new request after --time-limit seconds.
Printed: requests done, items/s, speed-up over the baseline, client-side latency p50/p99 (ms), the mean
number of items per collected batch and per forward pass (server counters: a batch is cut into passes of
similar lengths), and the largest difference between a configuration's values and the baseline's
(batching pads differently: ~1e-7), then the 1-minute load average. The model is an untrained tiny
Phi-3 (--size; speed does not depend on the weights) unless --model names a checkpoint. CPU runs use 1
torch thread by default (see bench_scoring.py for why); compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

import numpy as np
import torch

from codevalue.jsonl import read_jsonl
from codevalue.model import InputSpec, ValueModel, build_tiny_model, encode, load_tokenizer
from codevalue.problems import DATA_DIR
from codevalue.serve import create_app

HUMANEVAL = DATA_DIR / "humaneval"


def load_pairs(tok, n: int, max_tokens: int) -> list[tuple[str, str]]:
    prompts = {r["task_id"]: r["prompt"] for _, r in read_jsonl(HUMANEVAL / "problems.jsonl.gz")}
    by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
    spec = InputSpec(max_length=10**6)
    for _, rec in read_jsonl(HUMANEVAL / "codegen16b_samples.jsonl.gz"):
        if len(by_task[rec["task_id"]]) < 8:
            pair = (prompts[rec["task_id"]], rec["completion_raw"])
            if len(encode(tok, *pair, spec).input_ids) <= max_tokens:
                by_task[rec["task_id"]].append(pair)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < n and any(by_task.values()):
        for pairs in by_task.values():
            if pairs and len(chosen) < n:
                chosen.append(pairs.pop(0))
    return chosen


def drive(url: str, requests: list[list[tuple[str, str]]], clients: int, time_limit: float):
    """Send `requests` from `clients` threads; returns (wall seconds, latencies, values by request index)."""
    import httpx

    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(requests)):
        todo.put(i)
    latencies: list[float] = []
    values: dict[int, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + time_limit

    def client() -> None:
        with httpx.Client(base_url=url, trust_env=False, timeout=max(30.0, time_limit)) as c:
            while time.perf_counter() < deadline:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                body = {"items": [{"prompt": p, "completion": q} for p, q in requests[i]]}
                t = time.perf_counter()
                r = c.post("/v1/score", json=body)
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    latencies.append(dt)
                    values[i] = [x["value"] for x in r.json()["results"]]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first: {errors[0]}")
    return wall, latencies, values


def serve_child(config_json: str) -> None:
    """The server, in its own process (as in deployment: clients do not share its interpreter)."""
    import uvicorn

    config = json.loads(config_json)
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    vm = ValueModel.from_pretrained(config["model_dir"], device=config["device"])
    uvicorn.run(create_app(vm, **config["options"]), host="127.0.0.1", port=config["port"], log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(model_dir, device, threads, requests, clients, time_limit, **options):
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {"model_dir": str(model_dir), "port": port, "device": device, "threads": threads, "options": options}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(config)])
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
            while True:
                try:
                    c.get("/health")
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            drive(url, requests[: max(2, clients)], clients, time_limit)  # warm-up, not timed
            h0 = c.get("/health").json()
            wall, lat, values = drive(url, requests, clients, time_limit)
            h1 = c.get("/health").json()
    finally:
        proc.terminate()  # uvicorn shuts down on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    scored = h1["items_scored"] - h0["items_scored"]
    per_pass = scored / max(1, h1["forward_passes"] - h0["forward_passes"])
    per_batch = scored / max(1, h1["batches"] - h0["batches"])
    items = sum(len(requests[i]) for i in values)
    lat_ms = 1000 * np.array(lat)
    return {"requests": len(values), "items": items, "wall": wall, "items_per_s": items / wall,
            "p50": float(np.percentile(lat_ms, 50)), "p99": float(np.percentile(lat_ms, 99)),
            "per_pass": per_pass, "per_batch": per_batch, "values": values}


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return serve_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--items-per-request", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per configuration")
    ap.add_argument("--size", default="4m", choices=["1m", "4m", "16m"], help="tiny untrained model size")
    ap.add_argument("--model", help="a codevalue checkpoint instead of a tiny model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--forward-batch", type=int, default=None, help="items per forward pass (default: max batch)")
    ap.add_argument("--max-item-tokens", type=int, default=384, help="longest (prompt + completion) used")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    if args.model:
        model_dir, name = args.model, args.model
        tok = load_tokenizer(args.model)
        spec = ValueModel.from_pretrained(args.model, device="cpu").spec
    else:
        tok = load_tokenizer()
        spec = InputSpec(max_length=1024)
        ValueModel(build_tiny_model(args.size, tok), tok, spec).save_pretrained(tmp.name)
        model_dir, name = tmp.name, f"tiny {args.size} (untrained)"
    k = args.items_per_request
    pairs = load_pairs(tok, args.requests * k, args.max_item_tokens)
    requests = [pairs[i:i + k] for i in range(0, len(pairs), k)]
    n_tokens = [len(encode(tok, p, c, spec).input_ids) for p, c in pairs]
    load_before = os.getloadavg()[0]
    print(f"model {name} on {args.device}, torch threads {args.threads or 'default'}; server in its own process; "
          f"{len(requests)} requests of {k} item(s), {np.mean(n_tokens):.0f} tokens per item on average "
          f"(max {max(n_tokens)}); at most {args.time_limit:g} s per configuration\n")

    fb = args.forward_batch
    configs = [
        ("sequential, batching off (baseline)", 1, dict(max_batch=1, max_wait_ms=0.0)),
        (f"{args.clients} clients, batching off", args.clients, dict(max_batch=1, max_wait_ms=0.0)),
        (f"{args.clients} clients, micro-batching (max {args.max_batch}, passes of {fb or args.max_batch}, "
         f"wait {args.max_wait_ms:g} ms)", args.clients,
         dict(max_batch=args.max_batch, forward_batch=fb, max_wait_ms=args.max_wait_ms)),
    ]
    rows = []
    for label, clients, options in configs:
        r = run_config(model_dir, args.device, args.threads, requests, clients, args.time_limit,
                       max_items=k, max_tokens=args.max_item_tokens + 8, **options)
        rows.append((label, r))
        print(f"  done: {label} ({r['requests']} requests in {r['wall']:.1f} s)", flush=True)
    tmp.cleanup()

    base = rows[0][1]
    width = max(len(label) for label, _ in rows)
    print(f"\n{'configuration':<{width}}  {'requests':>8}  {'items/s':>8}  {'speed-up':>8}  {'p50 ms':>8}  "
          f"{'p99 ms':>8}  {'items/batch':>11}  {'items/pass':>10}  {'max |dv|':>9}")
    for label, r in rows:
        common = [i for i in r["values"] if i in base["values"]]
        diff = max((abs(a - b) for i in common for a, b in zip(r["values"][i], base["values"][i], strict=True)),
                   default=float("nan"))
        print(f"{label:<{width}}  {r['requests']:>8}  {r['items_per_s']:>8.1f}  "
              f"{r['items_per_s'] / base['items_per_s']:>7.2f}x  {r['p50']:>8.1f}  {r['p99']:>8.1f}  "
              f"{r['per_batch']:>11.1f}  {r['per_pass']:>10.1f}  {diff:>9.1e}")
    print(f"\n1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

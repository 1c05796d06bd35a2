"""The execution engine: run the distinct programs of many rollouts through an executor, write one record per
rollout, and never lose finished work. `codevalue label` and `codevalue checks` are two stages on top of it.

    summary = run_stage(stage, inputs="rollouts.jsonl", out="labeled.jsonl", sandbox=SandboxConfig())

How a run goes (three streaming passes over the input; memory holds a small index per distinct program):
  1. validate every record (errors name file, record and field; nothing runs before the whole file is valid)
     and compute each rollout's content key: sha256 of the stage, its verdict-changing settings, the
     problem's tests and the exact program text;
  2. run each key that is not yet in `OUT.programs.jsonl` once, on the executor (local warm sandbox or a Ray
     cluster); every result is appended there and flushed before the engine waits for the next, so a
     SIGKILL loses at most the programs in flight, and running the same command again finishes the job;
  3. write OUT in input order (temp file + rename), one record per rollout, from the input records and the
     program results.

`OUT.programs.jsonl` (one line per distinct program: key, result fields, node) is what resumes reuse: a row is
reused only when its key matches, so an edited completion, another problems file or other settings run again.
OUT itself is replaced only at the very end, and only when every row it holds belongs to the input: labelling
another rollouts file into an existing output is refused with a clear error, the file untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from .errors import CodevalueError, DataError
from .jsonl import read_jsonl
from .sandbox import ExecutionResult, Job, Sandbox, SandboxConfig, describe_isolation


@dataclass
class Plan:
    """What a stage makes of one input record."""

    problem_id: str
    key: str  # content key: equal keys give equal results, so they run once
    job: Callable[[], Job] | None  # builds the sandbox job; None: the result is known without running
    fields: dict[str, Any] | None = None  # that known result (when job is None)
    extra: dict[str, Any] = field(default_factory=dict)  # per-rollout fields added to the output record


class Stage(Protocol):
    """One kind of program run (label, checks); the engine does everything else."""

    name: str

    def settings(self) -> dict[str, Any]:
        """What changes a result besides problem and program: recorded in meta.json, part of every key."""

    def plan(self, path: Path, line: int, record: dict[str, Any]) -> Plan:
        """Validate one input record (DataError naming the field) and say what to run for it."""

    def judge(self, job: Job, result: ExecutionResult) -> dict[str, Any]:
        """The result fields of one program run (decided here, in the caller's process)."""

    def row(self, record: dict[str, Any], plan: Plan, fields: dict[str, Any]) -> dict[str, Any]:
        """The output record of one rollout."""


def content_key(*parts: object) -> str:
    """sha256 over JSON-encoded parts, 128 bits in hex: the identity of a result."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


class RolloutIds:
    """The rollout ids of an input in 8 bytes each (64-bit hashes in a sorted numpy array), so a million
    rollouts cost 8 MB rather than the ~100 MB of a set of strings. A hash shared by two ids is confirmed
    against the ids themselves before anything is called a duplicate."""

    def __init__(self) -> None:
        from array import array

        self._hashes = array("Q")
        self.sorted = None

    @staticmethod
    def hash(rollout_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(rollout_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                              "little")

    def add(self, rollout_id: str) -> None:
        self._hashes.append(self.hash(rollout_id))

    def freeze(self) -> set[int]:
        """Sort; return the hashes seen more than once (candidate duplicates)."""
        import numpy as np

        self.sorted = np.sort(np.frombuffer(self._hashes, dtype=np.uint64))
        del self._hashes
        repeated = self.sorted[1:][self.sorted[1:] == self.sorted[:-1]]
        return {int(h) for h in repeated}

    def __contains__(self, rollout_id: str) -> bool:
        import numpy as np

        h = np.uint64(self.hash(rollout_id))
        i = int(np.searchsorted(self.sorted, h))
        return i < len(self.sorted) and self.sorted[i] == h


# ---------------------------------------------------------------------------------------------------------------
# Executors: run jobs, yield (job, result, node) as they finish.


class LocalExecutor:
    """Today's warm-worker sandbox on this machine (the default)."""

    kind = "local"

    def __init__(self, config: SandboxConfig):
        self.box = Sandbox(config)
        self.node = socket.gethostname()

    def __enter__(self) -> LocalExecutor:
        self.box.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.box.close()

    @property
    def isolation(self) -> dict:
        return self.box.isolation

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, ExecutionResult, str]]:
        for job, result in self.box.map(jobs):
            yield job, result, self.node


def make_executor(config: SandboxConfig, ray: str | None = None):
    if ray:
        from .raycluster import RayExecutor

        return RayExecutor(ray, config)
    return LocalExecutor(config)


# ---------------------------------------------------------------------------------------------------------------
# Durable per-program results.


class ProgramLog:
    """`OUT.programs.jsonl`: one line per program run, appended and flushed as each result arrives.

    Reading keeps only an index (key -> byte offset), so memory grows with distinct programs, not rollouts.
    A torn last line (the process died mid-write) is cut off before appending.
    """

    def __init__(self, path: Path):
        self.path = path
        self.offsets: dict[str, int] = {}
        if path.exists():
            self._index()
        self._f = open(path, "ab")
        self._reader = open(path, "rb")
        self._last_sync = time.monotonic()
        self.read = lru_cache(maxsize=4096)(self._read)

    def _index(self) -> None:
        offset = 0
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):  # torn by a crash mid-write
                    break
                try:
                    self.offsets[json.loads(raw)["key"]] = offset
                except (ValueError, KeyError, TypeError):
                    raise DataError(self.path, "invalid line in a previous run's program results (delete the "
                                               "file to run everything again)", line=None) from None
                offset += len(raw)
        if offset < self.path.stat().st_size:
            os.truncate(self.path, offset)

    def append(self, key: str, fields: dict[str, Any], node: str) -> None:
        line = (json.dumps({"key": key, "node": node, "fields": fields}, ensure_ascii=False) + "\n").encode(
            "utf-8", "surrogatepass")
        offset = self._f.tell()
        self._f.write(line)
        self._f.flush()  # in the kernel now: a killed process loses nothing written
        self.offsets[key] = offset
        if time.monotonic() - self._last_sync > 1.0:  # survive a power cut too, at a bounded cost
            os.fsync(self._f.fileno())
            self._last_sync = time.monotonic()

    def _read(self, key: str) -> dict[str, Any]:
        self._reader.seek(self.offsets[key])
        return json.loads(self._reader.readline())["fields"]

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._reader.close()


# ---------------------------------------------------------------------------------------------------------------
# The engine.


def _existing_rollout_ids(out: Path) -> Iterator[str]:
    """rollout_id of every complete line of an earlier output (streamed)."""
    with open(out, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            try:
                yield str(json.loads(raw)["rollout_id"])
            except (ValueError, KeyError, TypeError):
                raise DataError(out, "existing output has a line without a rollout_id; it is not a codevalue "
                                     "output: choose another --out", line=line_no) from None


def _raise_duplicate(inputs: Path, hashes: set[int]) -> None:
    """Name the first real duplicate among records whose id hashes collide (a mere hash collision passes)."""
    first_line: dict[str, int] = {}
    for line, rec in read_jsonl(inputs):
        rid = str(rec["rollout_id"])
        if RolloutIds.hash(rid) in hashes:
            if rid in first_line:
                raise DataError(inputs, f"duplicate rollout_id {rid!r} (first on record {first_line[rid]})",
                                line=line, field="rollout_id")
            first_line[rid] = line


def check_paths(inputs: Path, out: Path) -> None:
    """Arguments that would destroy data are refused before anything is read or written."""
    if not inputs.exists():
        raise DataError(inputs, "file not found")
    if out.exists() and out.resolve() == inputs.resolve():
        raise CodevalueError(f"--out {out} is the input file: choose another output path")
    if out.suffix == ".gz":
        raise DataError(out, "output cannot be gzip-compressed (it is resumable); use a .jsonl path")
    if out.exists() and out.is_dir():
        raise CodevalueError(f"--out {out} is a directory: give a file path")


def run_stage(stage: Stage, inputs: str | os.PathLike, out: str | os.PathLike, sandbox: SandboxConfig,
              ray: str | None = None, progress: bool = True, meta_extra: dict[str, Any] | None = None,
              group_fields: Callable[[str, dict[str, tuple[dict, int]]], dict[str, dict]] | None = None,
              ) -> dict[str, Any]:
    """Run `stage` over every record of `inputs`, writing `out` (+ .programs.jsonl, .meta.json).

    group_fields (optional): called once per problem with its id and {key: (result fields, rollouts)} after
    everything ran; returns extra fields per key (e.g. features computed over all rollouts of a problem).
    """
    from tqdm import tqdm

    inputs, out = Path(inputs), Path(out)
    check_paths(inputs, out)
    settings = stage.settings()
    meta_path = out.with_name(out.name + ".meta.json")
    log_path = out.with_name(out.name + ".programs.jsonl")

    # Pass 1: validate everything, find what must run.
    ids = RolloutIds()
    keys: dict[str, int] = {}  # distinct program key -> rollouts that share it
    problems: set[str] = set()
    n_records = 0
    for line, rec in read_jsonl(inputs):
        if "rollout_id" not in rec:
            raise DataError(inputs, "missing field", line=line, field="rollout_id")
        ids.add(str(rec["rollout_id"]))
        plan = stage.plan(inputs, line, rec)
        problems.add(plan.problem_id)
        if plan.job is not None:
            keys[plan.key] = keys.get(plan.key, 0) + 1
        n_records += 1
    if repeated := ids.freeze():
        _raise_duplicate(inputs, repeated)
    if out.exists():
        strangers, example = 0, None
        for rid in _existing_rollout_ids(out):
            if rid not in ids:
                strangers, example = strangers + 1, example or rid
        if strangers:
            raise CodevalueError(
                f"{out} already holds {strangers} rollouts that are not in {inputs} (e.g. {example!r}); "
                "they would be lost: write to another --out, or merge the inputs and label them together")
        if meta_path.exists():
            before = json.loads(meta_path.read_text()).get("settings")
            if before is not None and before != settings:
                changed = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in settings
                                    if before.get(k) != settings.get(k))
                raise CodevalueError(f"{out} was written with other settings ({changed}); use another --out, or "
                                     f"delete {out} to replace it (finished programs in {log_path.name} are "
                                     "reused where their key matches)")
    del ids

    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps({"settings": settings, "complete": False, **(meta_extra or {})}, indent=2)
                         + "\n")
    log = ProgramLog(log_path)
    todo = {k for k in keys if k not in log.offsets}
    resumed = sum(n for k, n in keys.items() if k not in todo)
    nodes: Counter[str] = Counter()
    cpu = 0.0
    start = time.monotonic()

    def jobs() -> Iterator[Job]:  # pass 2: stream the input again, one job per key still to run
        waiting = set(todo)
        for line, rec in read_jsonl(inputs):
            plan = stage.plan(inputs, line, rec)
            if plan.key in waiting:
                waiting.discard(plan.key)
                job = plan.job()
                in_flight[id(job)] = plan.key
                yield job

    in_flight: dict[int, str] = {}
    executor = make_executor(sandbox, ray)
    try:
        with executor:
            isolation = executor.isolation
            started = time.monotonic()  # the executor is up (a Ray cluster may take seconds to join)
            bar = tqdm(total=len(keys), initial=len(keys) - len(todo), unit="program", disable=not progress,
                       desc=stage.name, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 15)
            for job, result, node in executor.map(jobs()):
                key = in_flight.pop(id(job))
                log.append(key, stage.judge(job, result), node)
                nodes[node] += 1
                cpu += result.cpu_seconds
                bar.update(1)
            bar.close()
        run_wall = time.monotonic() - started

        # Pass 3: per-problem fields (optional), then the output in input order.
        per_key: dict[str, dict] = {}
        if group_fields is not None:
            grouped: dict[str, dict[str, int]] = defaultdict(dict)
            known: dict[str, dict] = {}  # results known without running (plans without a job)
            for line, rec in read_jsonl(inputs):
                plan = stage.plan(inputs, line, rec)
                counts = grouped[plan.problem_id]
                counts[plan.key] = counts.get(plan.key, 0) + 1
                if plan.fields is not None:
                    known[plan.key] = plan.fields
            for problem_id, counts in grouped.items():
                per_key.update(group_fields(problem_id, {k: (_fields_of(log, k, known.get(k)), n)
                                                         for k, n in counts.items()}))

        def rows() -> Iterator[dict]:
            for line, rec in read_jsonl(inputs):
                plan = stage.plan(inputs, line, rec)
                fields = _fields_of(log, plan.key, plan.fields)
                row = stage.row(rec, plan, fields)
                row.update(per_key.get(plan.key, {}))
                yield row

        verdicts = _write_rows(out, rows())
    finally:
        log.close()

    summary = {
        "rollouts": n_records,
        "problems": len(problems),
        "executed_programs": len(todo),
        "distinct_programs": len(keys),
        "resumed": resumed,
        **verdicts,
        "wall_seconds": round(time.monotonic() - start, 2),
        "executor_start_seconds": round(started - start, 2),
        "run_seconds": round(run_wall, 2),
        "program_cpu_seconds": round(cpu, 2),
        "settings": settings,
        **settings,
        "complete": True,
        "out": str(out),
        "executor": {"kind": executor.kind, "nodes": dict(nodes), **getattr(executor, "report", {})},
        "sandbox": {**asdict(sandbox), "isolation": isolation, "description": describe_isolation(isolation)},
        **(meta_extra or {}),
    }
    meta_path.write_text(json.dumps(summary, indent=2) + "\n")
    return json.loads(meta_path.read_text())  # exactly what the sidecar says (tuples become lists)


def _fields_of(log: ProgramLog, key: str, known: dict | None) -> dict:
    if known is not None:
        return known
    if key not in log.offsets:  # cannot happen unless the log was edited during the run
        raise CodevalueError(f"{log.path}: no result for program {key[:12]}; run the command again")
    return log.read(key)


def _write_rows(out: Path, rows: Iterable[dict]) -> dict[str, Any]:
    """Write the output atomically; count verdicts/passes on the way (for the summary)."""
    tmp = out.with_name(out.name + ".tmp")
    verdicts: Counter[str] = Counter()
    n = passed = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
            if "verdict" in row:
                verdicts[row["verdict"]] += 1
            passed += bool(row.get("passed"))
    os.replace(tmp, out)
    return {"pass_rate": passed / max(1, n), "verdicts": dict(verdicts.most_common())}

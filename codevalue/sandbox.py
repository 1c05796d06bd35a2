"""Run untrusted programs fast and safely: warm workers, one forked child per program.

    from codevalue.sandbox import Sandbox, Job
    with Sandbox() as box:
        result = box.run(Job(program="print(input())", kind="stdin", style="script", inputs=["hi"]))
        result.tests[0].stdout  # 'hi\\n'

Design (see README "Sandbox"): one worker process per core is started with a scrubbed environment,
enters new mount/network/IPC/UTS namespaces once, mounts private tmpfs over the world-writable
directories and imports numpy & co. For each program it forks a child that starts a new session,
drops to a per-worker uid (when run as root), sets rlimits (address space, CPU, file size, open files,
processes), and runs all tests of the program in that one process, streaming one event per test back.
The worker enforces the wall deadline from outside, kills the child's process group, then sweeps any
escaped descendant (it is their subreaper). Generated code never runs in the caller's process, and the
expected outputs never leave it: verdicts are decided here, in the parent.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import secrets
import select
import selectors
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from .errors import SandboxError
from .limits import TimeLimits, time_limits
from .problems import BUNDLED, DATA_DIR

STYLES = ("humaneval", "apps", "script")


@dataclass
class SandboxConfig:
    workers: int = field(default=0, metadata={"help": "sandbox worker processes (0: one per core)"})
    memory_mb: int = field(default=2048, metadata={  # address space added on top of the warm worker's
        "help": "memory a program may use, in MiB"})
    output_limit: int = field(default=4 * 2**20, metadata={  # of stdout, or of a return value's repr
        "help": "characters of output per test before it is cut off"})
    max_processes: int = 64  # RLIMIT_NPROC for the sandbox uid (root only): stops fork bombs
    uid_base: int = 61000  # programs run as the first free uids >= uid_base, one per worker (root only)
    # A worker with no result this many seconds after its job's wall deadline (which it enforces itself) is
    # stuck: it is killed and replaced, and the job retried once, as when a worker dies. One that reads no job
    # for this long is replaced before the job starts.
    stuck_seconds: float = field(default=30.0, metadata={
        "help": "seconds a silent worker gets past its program's deadline (or to take its next job) before it "
                "is replaced"})
    # Files and directories programs must not read (problem files with expected outputs). The bundled
    # data is always hidden; `label_rollouts` and `run_checks` add the problems file they were given.
    hidden_paths: tuple[str, ...] = ()

    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def hiding_problems(self, problems: object) -> SandboxConfig:
        """This config with a problems source (file, directory or bundled name) hidden from programs, so
        the expected outputs stay out of their reach; a list of problems or a hub id changes nothing."""
        if isinstance(problems, list):
            return self
        source = BUNDLED.get(str(problems), problems)
        if not Path(source).exists():
            return self
        return replace(self, hidden_paths=(*self.hidden_paths, str(source)))


@dataclass
class Job:
    """One program and the inputs of its tests. Expected outputs are deliberately not part of it."""

    program: str
    kind: str  # "check" (HumanEval/MBPP) | "stdin" | "call"
    style: str  # "humaneval" | "apps" | "script"
    inputs: list = field(default_factory=list)  # stdin texts or argument lists; [] for "check"
    fn_name: str = ""
    timeout: float = 3.0  # per test, CPU and wall
    deadline: float = 0.0  # wall seconds for the whole program, enforced from outside; 0: derived
    tag: Any = None  # the caller's, returned untouched

    def limits(self) -> TimeLimits:
        """Every time limit of this run (`limits.time_limits`: the one rule; deadline 0 takes its default)."""
        return time_limits(self.kind, self.style, len(self.inputs), self.timeout, self.deadline or None)

    def wall_deadline(self) -> float:
        return self.limits().program


@dataclass
class TestOutcome:
    """What one test did. status: ok | error | timeout | memory | output_limit | missing."""

    status: str
    error: str = ""
    stdout: str | None = None  # stdin problems
    result: str | None = None  # call-based problems: repr() of the returned value


@dataclass
class ExecutionResult:
    """Raw observations of one program run; `codevalue.labels.judge` turns them into a verdict.

    load_status: ok | syntax_error | error | timeout | memory | missing (the child died first).
    """

    load_status: str
    load_error: str = ""
    tests: list[TestOutcome] = field(default_factory=list)
    completed: bool = False  # the child reported "done" with this run's nonce
    deadline_hit: bool = False
    flooded: bool = False
    exit_code: int | None = None
    signal: int | None = None
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    leftover_processes: int = 0
    infra_error: str = ""
    oom_killed: bool = False  # the kernel killed one of its processes: together they went over --memory-mb


def _result_from(job: Job, nonce: str, raw: dict) -> ExecutionResult:
    if "infra_error" in raw:
        return ExecutionResult(load_status="missing", infra_error=raw["infra_error"])
    n_tests = 1 if job.kind == "check" else len(job.inputs)
    copied = ("deadline_hit", "flooded", "exit_code", "signal", "cpu_seconds", "wall_seconds",
              "leftover_processes")
    res = ExecutionResult(load_status="missing", **{k: raw[k] for k in copied})
    tests: dict[int, TestOutcome] = {}
    for ev in raw["events"]:
        t = ev.get("t")
        if t == "load" and res.load_status == "missing":
            res.load_status, res.load_error = str(ev.get("status")), str(ev.get("error", ""))
        elif t == "test" and isinstance(ev.get("i"), int) and 0 <= ev["i"] < n_tests and ev["i"] not in tests:
            stdout, result = ev.get("stdout"), ev.get("result")
            tests[ev["i"]] = TestOutcome(
                status=str(ev.get("status")), error=str(ev.get("error", "")),
                stdout=stdout if isinstance(stdout, str) else None,
                result=result if isinstance(result, str) else None)
        elif t == "done" and ev.get("nonce") == nonce:
            res.completed = True
    res.tests = [tests.get(i, TestOutcome("missing")) for i in range(n_tests)]
    if raw.get("oom_kills"):  # the program as a whole went over its memory: the first test not done is charged
        res.oom_killed = True
        why = "killed by the OOM killer: the program's processes together went over --memory-mb"
        failed = next((i for i, t in enumerate(res.tests) if t.status != "ok"), None)
        if res.load_status in ("missing", "ok") and failed is not None:
            res.load_status = "ok"
            res.tests[failed] = TestOutcome("memory", error=why)
        elif res.load_status in ("missing", "ok"):  # every test reported, yet a process was killed
            res.load_status, res.load_error = "memory", why
    return res


UID_LOCK_DIRS = ("/run/lock", tempfile.gettempdir())


def _claim_uids(base: int, n: int) -> tuple[list[int], list[int]]:
    """The first n uids >= base that no other live Sandbox on this machine holds, each claimed by an
    exclusive flock on a lock file (released when the descriptor closes, also when this process dies).

    Why: the sweep after every program kills everything of the program's uid, so two sandboxes sharing a
    uid (two Ray nodes on one machine, parallel test runs) would kill each other's programs."""
    where = next(d for d in UID_LOCK_DIRS if os.path.isdir(d) and os.access(d, os.W_OK))
    uids: list[int] = []
    fds: list[int] = []
    uid = base
    while len(uids) < n:
        if uid >= base + 65536:
            for fd in fds:
                os.close(fd)
            raise SandboxError(f"no free sandbox uid in [{base}, {base + 65536}) (lock files in {where})")
        fd = os.open(f"{where}/codevalue-uid-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
        else:
            uids.append(uid)
            fds.append(fd)
        uid += 1
    return uids, fds


def _parse_result(job: Job, nonce: str, line: bytes) -> ExecutionResult:
    """The worker's result line. The worker passes on only flat events (so this parse is three levels deep
    at most, whatever the program wrote); a line we cannot read is an infra_error, never an exception that
    would end the caller's whole job."""
    try:
        return _result_from(job, nonce, json.loads(line))
    except (ValueError, RecursionError, KeyError, TypeError) as e:
        return ExecutionResult(load_status="missing", infra_error=f"unreadable worker result: {type(e).__name__}")


START_SECONDS = 120.0  # a worker that has not said hello by then never will (no program runs before it)


class _WorkerStuck(SandboxError):
    """A worker that does not read its next job within `stuck_seconds` (e.g. stopped): it is replaced."""


class _Worker:
    def __init__(self, slot: int, config: SandboxConfig, uid: int):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TMPDIR": "/tmp",
               # One string-hash seed everywhere: a program whose answer depends on set/dict order (e.g. the
               # max of a set of words) gets the same verdict on every worker, node and run.
               "PYTHONHASHSEED": "0"}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.command(slot, uid, config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=env, cwd="/", start_new_session=True, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        os.set_blocking(self.stdin.fileno(), False)  # `send` waits for a reader with a deadline, not forever
        if not select.select([self.stdout], [], [], START_SECONDS)[0]:
            tail = self.stderr_tail()
            self.kill()
            raise SandboxError(f"sandbox worker did not start within {START_SECONDS:g} s: {tail}")
        hello = self.stdout.readline()
        if not hello:
            raise SandboxError(f"sandbox worker failed to start: {self.stderr_tail()}")
        self.isolation: dict = json.loads(hello)["isolation"]
        self.job: tuple[int, Job, str] | None = None

    @staticmethod
    def command(slot: int, uid: int, config: SandboxConfig) -> list[str]:
        return [sys.executable, "-m", "codevalue._worker", str(slot), str(uid),
                json.dumps([str(DATA_DIR), *config.hidden_paths])]

    @staticmethod
    def message(job_id: int, job: Job, nonce: str, config: SandboxConfig) -> dict[str, Any]:
        """What the worker gets for a job: every limit it applies is computed here (it and the child compute none)."""
        limits = job.limits()
        return {"id": job_id, "program": job.program, "kind": job.kind, "style": job.style, "inputs": job.inputs,
                "fn_name": job.fn_name, "timeout": limits.test, "deadline": limits.program, "cpu_seconds": limits.cpu,
                "test_wall": limits.test_wall, "nonce": nonce, "memory_mb": config.memory_mb,
                "output_limit": config.output_limit, "max_processes": config.max_processes}

    def send(self, job_id: int, job: Job, nonce: str, config: SandboxConfig) -> None:
        """Hand the worker its next job. A worker that takes none of it for `stuck_seconds` (a job bigger than
        the pipe's buffer waits for the worker to read) raises `_WorkerStuck`; one that exited, OSError."""
        self.job = (job_id, job, nonce)
        data = memoryview(json.dumps(self.message(job_id, job, nonce, config)).encode() + b"\n")
        fd, deadline = self.stdin.fileno(), time.monotonic() + config.stuck_seconds
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                    raise _WorkerStuck(f"sandbox worker read no job for {config.stuck_seconds:g} s") from None

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:].decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()
        self.log.close()

    def kill(self) -> None:
        """Stop a stuck worker: SIGKILL, then wait for it a little only (a process blocked in the kernel dies
        when the kernel lets it; Popen reaps it later), and close its pipes."""
        self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.stdin, self.stdout, self.log):
            try:
                f.close()
            except OSError:
                pass


class Sandbox:
    """A pool of warm workers. Use as a context manager; `map` runs many jobs on all cores."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._workers: list[_Worker] = []
        self._uids: list[int] = []  # one per worker, claimed while the workers live
        self._uid_locks: list[int] = []

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._workers:
            return
        n = self.config.n_workers()
        if os.geteuid() == 0:  # only root drops to the sandbox uids
            self._uids, self._uid_locks = _claim_uids(self.config.uid_base, n)
        else:
            self._uids = [self.config.uid_base + i for i in range(n)]
        try:
            self._workers = [_Worker(i, self.config, self._uids[i]) for i in range(n)]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers = []
        for fd in self._uid_locks:  # only now: no program of ours runs as these uids any more
            os.close(fd)
        self._uid_locks = []

    def _new_worker(self, slot: int) -> _Worker:
        return _Worker(slot, self.config, self._uids[slot])

    @property
    def isolation(self) -> dict:
        """What is in force (worker 0's report), plus `uids`: the program uid of every worker."""
        self.start()
        return {**self._workers[0].isolation, "uids": list(self._uids)}

    def run(self, job: Job) -> ExecutionResult:
        return next(self.map([job]))[1]

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, ExecutionResult]]:
        """Run jobs on all workers; yield (job, result) as they finish (not in input order).

        A worker that dies mid-job, or is stuck (no result `stuck_seconds` after the job's wall deadline,
        which the worker enforces itself: then it is killed), is replaced and the job retried once; a
        second loss is reported as an infra_error result, never as a verdict about the program. So no
        call waits much longer than its jobs' deadlines plus `stuck_seconds`, whatever a worker does.
        """
        self.start()
        pending = iter(jobs)
        retry: deque[tuple[Job, int]] = deque()
        ids = itertools.count()
        attempts: dict[int, int] = {}
        sel = selectors.DefaultSelector()
        idle = list(range(len(self._workers)))
        busy = 0
        stuck_after: dict[int, float] = {}  # busy slot -> when (monotonic) its worker counts as stuck

        def submit(slot: int) -> bool:
            if retry:
                job, job_id = retry.popleft()
            else:
                job = next(pending, None)
                if job is None:
                    return False
                job_id = next(ids)
            nonce = secrets.token_hex(8)
            try:
                self._workers[slot].send(job_id, job, nonce, self.config)
            except (OSError, _WorkerStuck) as e:  # it exited after its last job (e.g. it could not clean up),
                if isinstance(e, _WorkerStuck):  # or it reads nothing (stopped): replace it; the job never started
                    self._workers[slot].kill()
                else:
                    self._workers[slot].close()
                self._workers[slot] = self._new_worker(slot)
                self._workers[slot].send(job_id, job, nonce, self.config)  # a new worker reads at once
            sel.register(self._workers[slot].stdout, selectors.EVENT_READ, slot)
            stuck_after[slot] = time.monotonic() + job.wall_deadline() + self.config.stuck_seconds
            return True

        def release(slot: int) -> tuple[int, Job, str]:
            """The job of `slot` is over (answered, or its worker died or is stuck): free the slot."""
            nonlocal busy
            worker = self._workers[slot]
            sel.unregister(worker.stdout)
            del stuck_after[slot]
            assert worker.job is not None
            taken, worker.job = worker.job, None
            busy -= 1
            idle.append(slot)
            return taken

        def lost(slot: int, job: Job, job_id: int, why: str, stuck: bool = False) -> ExecutionResult | None:
            """The worker of `slot` is lost (it died, or is stuck: then it is killed): start a new one in its
            place, and queue the job again, or, on its second loss, return its infra_error result."""
            if stuck:
                self._workers[slot].kill()
            else:
                self._workers[slot].close()
            self._workers[slot] = self._new_worker(slot)
            attempts[job_id] = attempts.get(job_id, 0) + 1
            if attempts[job_id] < 2:
                retry.append((job, job_id))
                return None
            return ExecutionResult(load_status="missing", infra_error=why)

        try:
            while True:
                while idle and submit(idle[-1]):
                    idle.pop()
                    busy += 1
                if busy == 0:
                    return
                ready = sel.select(max(0.0, min(stuck_after.values()) - time.monotonic()))
                answered = set()
                for key, _ in ready:
                    slot = key.data
                    answered.add(slot)
                    worker = self._workers[slot]
                    line = worker.stdout.readline()
                    job_id, job, nonce = release(slot)
                    if line:
                        yield job, _parse_result(job, nonce, line)
                        continue
                    # The worker died (it should not: programs run in its children). Replace it.
                    failed = lost(slot, job, job_id, f"sandbox worker died: {worker.stderr_tail()[-300:]}")
                    if failed is not None:
                        yield job, failed
                now = time.monotonic()
                late = [s for s, t in stuck_after.items() if t <= now and s not in answered]
                if late:  # a result that came while our caller held a yielded one is not late: next round
                    answered.update(key.data for key, _ in sel.select(0))
                for slot in [s for s in late if s not in answered]:
                    # Stuck (stopped, or blocked in a clean-up the kernel does not finish): it gave no result
                    # long after the deadline it enforces. Kill it (its programs die with it: parent-death
                    # signal) and treat it as a worker that died.
                    job_id, job, _ = release(slot)
                    failed = lost(slot, job, job_id, f"sandbox worker stuck: no result {self.config.stuck_seconds:g} s "
                                  f"after the program's {job.wall_deadline():g} s deadline; killed", stuck=True)
                    if failed is not None:
                        yield job, failed
        finally:
            sel.close()
            if busy:  # abandoned mid-run (e.g. KeyboardInterrupt): restart workers so none is half-used
                self.close()


def describe_isolation(iso: dict) -> str:
    """One paragraph, for the CLI and README: what protects the machine from the programs, and what they see."""
    parts = []
    if iso.get("uid_drop"):
        uids = iso.get("uids") or [iso["uid"]]
        parts.append(f"programs run as unprivileged uid {', '.join(map(str, uids))} (one per worker, claimed by "
                     "this sandbox alone; not the caller's user)")
    if iso.get("namespaces"):
        parts.append("new " + "/".join(iso["namespaces"]) + " namespaces (no network interfaces)")
    if iso.get("root") == "allowlist":
        parts.append("a root of their own (pivot_root) that holds only " + ", ".join(iso["visible"]))
    else:
        parts.append("the host's filesystem (with the program user's permissions)")
    if iso.get("private_tmp"):
        parts.append("private tmpfs over /tmp, /var/tmp, /run/lock, /dev/shm, emptied after every program")
    if iso.get("fresh_ipc"):
        parts.append("a fresh IPC namespace after any program that leaves IPC objects")
    if iso.get("hidden"):
        parts.append(f"{len(iso['hidden'])} problem files/directories hidden from programs")
    if iso.get("memory"):
        parts.append("memory: " + iso["memory"])
    parts.append("rlimits " + ", ".join(iso.get("rlimits", [])))
    parts.append("leftover processes: " + iso.get("cleanup", "process group"))
    parts.append("HumanEval passes: 'done' can only come from the harness after check() returned (audit hook "
                 "refuses gc, settrace, ctypes, /proc/*/mem)")
    return "; ".join(parts) + "".join(f"\nNOTE: {n}" for n in iso.get("notes", []))

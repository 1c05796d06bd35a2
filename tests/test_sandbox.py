"""The sandbox against hostile programs (design notes section 7): every verdict class in every harness,
then one adversarial property per test: exits before `check`, `__eq__` liars, swallowed time-outs, output
floods, fork bombs, detached grandchildren, attacks on the parent, closed descriptors, SIGSTOP, stdin,
network, filesystem, environment, leaks of expected outputs, and the APPS reference quirks.

SAFETY: every hostile program in this file is a string handed to `Sandbox` as `Job(program=...)`; none
of them is ever run in this process or by a subprocess of it. Programs that would reach this process if
the sandbox could not drop to its own uid (fork bombs, kill(-1), ...) run only as root, and only in a
sandbox whose workers a probe has just seen run programs as the unprivileged sandbox uids (`dropped`).
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codevalue.compare import MODES
from codevalue.labels import Label, LabelConfig, judge, make_job
from codevalue.problems import BUNDLED, Problem
from codevalue.problems import TestCase as Case
from codevalue.sandbox import ExecutionResult, Job, Sandbox, SandboxConfig

IS_ROOT = os.geteuid() == 0
requires_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs the uid drop and RLIMIT_NPROC (root only): without them this program "
    "could signal or exhaust the test's own user")

# Where this run's sandboxes start looking for free uids (each live Sandbox claims its own with a lock
# file); away from the default 61000 so that an older suite running beside this one, which claims
# nothing, neither sees our processes nor is swept by our kill(-1).
UID_BASE = 62000 + 8 * (os.getpid() % 1000)
TIMEOUT = 0.5  # per test
DEADLINE = 2.0  # per program, for programs that should finish
KILL_DEADLINE = 1.0  # per program, for programs that only the worker's deadline can stop
SLACK = 5.0  # seconds a run may take beyond its deadline before we call it a hang (generous: loaded CI)

CHECK = Problem("check/square", "humaneval", "check", entry_point="square",
                check_code="def check(candidate):\n    assert candidate(3) == 9\n"
                           "    assert candidate(-2) == 4\n\ncheck(square)")
STDIN = Problem("apps/stdin-square", "apps", "stdin", tests=[Case("3\n", "9\n"), Case("-2\n", "4\n")])
STDIN_ONE = Problem("apps/stdin-square-1", "apps", "stdin", tests=[Case("3\n", "9\n")])
CALL = Problem("apps/call-square", "apps", "call", entry_point="square",
               tests=[Case([3], [9]), Case([-2], [4])])


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(workers=2, uid_base=UID_BASE)) as sandbox:
        yield sandbox


def raised(error: str) -> str:
    """The message of a program's `raise RuntimeError(message)`, without the line the harness names."""
    return error.removeprefix("RuntimeError: ").split(" at line ")[0]


@pytest.fixture(scope="module")
def dropped(box: Sandbox) -> Sandbox:
    """The shared sandbox, once a probe has shown that its programs really run as the sandbox uids.

    Programs that signal every process they may (kill(-1)) or fork without bound are only handed to a
    sandbox that passed this probe: run as root they would take the machine down.
    """
    if not IS_ROOT:
        pytest.skip("no uid drop without root")
    ids = "import posix\nIDS = {posix.getuid(), posix.geteuid(), posix.getgid()}\n"
    probes = [Job(ids + "print(*IDS)", "stdin", "script", inputs=[""], timeout=2, deadline=3),
              Job(ids + "raise RuntimeError(*IDS)", "check", "humaneval", timeout=2, deadline=3)] * 2
    uids = set()
    for job, result in box.map(probes):  # map hands every idle worker a job first: each worker runs some
        seen = result.tests[0].stdout if job.style == "script" else raised(result.tests[0].error)
        assert seen and seen.split() and all(u.isdigit() for u in seen.split()), result
        uids.update(int(u) for u in seen.split())
    if uids != set(box.isolation["uids"]):
        pytest.fail(f"programs did not run as the sandbox uids {box.isolation['uids']}: {sorted(uids)}")
    return box


@contextlib.contextmanager
def solo_box() -> Iterator[Sandbox]:
    """A one-worker sandbox, so that consecutive jobs are known to share a worker."""
    with Sandbox(SandboxConfig(workers=1, uid_base=UID_BASE)) as sandbox:
        yield sandbox


def label(box: Sandbox, problem: Problem, code: str, mode: str = "apps", timeout: float = TIMEOUT,
          deadline: float = DEADLINE) -> tuple[Label, ExecutionResult]:
    """Run `code` as a solution of `problem` (a check problem appends its check code) and judge it."""
    program = problem.program(code) if problem.kind == "check" else code
    config = LabelConfig(mode=mode if mode in MODES else "apps", timeout=timeout, program_timeout=deadline)
    job = make_job(problem, program, config)
    result = box.run(job)
    return judge(problem, result, mode), result


def timed_label(box: Sandbox, problem: Problem, code: str, mode: str = "apps", timeout: float = TIMEOUT,
                deadline: float = DEADLINE) -> tuple[Label, ExecutionResult]:
    start = time.monotonic()
    out = label(box, problem, code, mode, timeout=timeout, deadline=deadline)
    assert time.monotonic() - start < deadline + SLACK, "the sandbox hung past the program's deadline"
    return out


def script(box: Sandbox, program: str, stdin: str = "", timeout: float = 2.0) -> str:
    """stdout of a script-style program that must finish normally."""
    result = box.run(Job(program, "stdin", "script", inputs=[stdin], timeout=timeout, deadline=timeout + 1))
    assert (result.load_status, result.tests[0].status) == ("ok", "ok"), result
    assert result.tests[0].stdout is not None
    return result.tests[0].stdout


def worker_pids(box: Sandbox) -> list[int]:
    return [w.proc.pid for w in box._workers]


def processes_of(uids: tuple[int, ...]) -> list[int]:
    """pids of every process (zombies included) whose real uid is one of `uids`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
        if uid in uids:
            pids.append(int(entry))
    return pids


def assert_still_works(box: Sandbox) -> None:
    verdict, _ = label(box, STDIN, "print(int(input()) ** 2)", "lcb")
    assert verdict.verdict == "pass"


# ---------------------------------------------------------------------------------------------------------
# Every verdict class in every harness

HARNESSES = [  # (problem, mode, the harness style make_job must pick)
    pytest.param(CHECK, "humaneval", "humaneval", id="humaneval"),
    pytest.param(STDIN, "apps", "apps", id="stdin-apps"),
    pytest.param(STDIN, "lcb", "script", id="stdin-script-lcb"),
    pytest.param(STDIN, "strict", "script", id="stdin-script-strict"),
    pytest.param(CALL, "apps", "apps", id="call-apps"),
    pytest.param(CALL, "lcb", "script", id="call-script-lcb"),
    pytest.param(CALL, "strict", "script", id="call-script-strict"),
]

STDIN_CODE = {
    "pass": "n = int(input())\nprint(n * n)",
    "wrong_answer": "n = int(input())\nprint(n + 1)",
    "runtime_error": "n = int(input())\nprint(n // (n - n))",
    "timeout": "n = int(input())\nwhile True:\n    n += 1",
    "syntax_error": "n = int(input()\nprint(n * n)",
    "memory_exceeded": "n = int(input())\nhoard = []\nwhile True:\n    hoard.append(bytes(10**8))",
}
FUNCTION_CODE = {  # call-based problems and HumanEval-style check problems
    "pass": "def square(x):\n    return x * x",
    "wrong_answer": "def square(x):\n    return x + 1",
    "runtime_error": "def square(x):\n    return x // (x - x)",
    "timeout": "def square(x):\n    while True:\n        x += 1",
    "syntax_error": "def square(x)\n    return x * x",
    "memory_exceeded": "def square(x):\n    hoard = []\n    while True:\n        hoard.append(bytes(10**8))",
}


@pytest.mark.parametrize("verdict", [pytest.param(v, marks=pytest.mark.slow) if v == "timeout" else v
                                     for v in STDIN_CODE])  # a timeout waits for its limit: slow
@pytest.mark.parametrize("problem,mode,style", HARNESSES)
def test_every_verdict_in_every_harness(box, problem, mode, style, verdict):
    code = (STDIN_CODE if problem.kind == "stdin" else FUNCTION_CODE)[verdict]
    assert make_job(problem, code, LabelConfig(mode=mode if mode in MODES else "apps")).style == style
    got, result = timed_label(box, problem, code, mode)
    assert (got.verdict, got.passed) == (verdict, verdict == "pass"), (got, result)
    if verdict == "pass":
        n = problem.n_tests
        assert (got.tests_passed, got.tests_total, got.first_failure) == (n, n, None)
    else:
        assert got.tests_passed == 0
        assert got.first_failure is not None and got.first_failure["verdict"] == verdict
        assert got.first_failure["test"] == (None if verdict == "syntax_error" else 0)


# ---------------------------------------------------------------------------------------------------------
# HumanEval: leaving before check() is never a pass

WRONG_SQUARE = "def square(x):\n    return 0\n"  # check() would fail: only an escape could make it pass

EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "raise SystemExit": "raise SystemExit",
    "SystemExit in finally": "try:\n    pass\nfinally:\n    raise SystemExit(0)",
    "exit()": "exit()",  # None under the reliability guard: TypeError
    "quit()": "quit()",
    "os._exit(0)": "import os\nos._exit(0)",
    "posix._exit(0)": "import posix\nposix._exit(0)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
}


@pytest.mark.parametrize("escape", list(EXITS.values()), ids=list(EXITS))
def test_humaneval_exit_before_check_is_never_a_pass(box, escape):
    got, result = timed_label(box, CHECK, WRONG_SQUARE + escape)
    assert (got.verdict, got.passed) == ("runtime_error", False), (got, result)
    assert not result.completed


SIGNALS = {
    "SIGKILL": ("import posix, signal\nposix.kill(posix.getpid(), signal.SIGKILL)", signal.SIGKILL),
    "SIGTERM": ("import posix, signal\nposix.kill(posix.getpid(), signal.SIGTERM)", signal.SIGTERM),
    "SIGINT": ("import posix, signal\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
               "posix.kill(posix.getpid(), signal.SIGINT)", signal.SIGINT),
    "SIGABRT": ("import posix\nposix.abort()", signal.SIGABRT),
    "SIGSEGV": ("import faulthandler\nfaulthandler._sigsegv()", signal.SIGSEGV),  # ctypes is refused here
}


@pytest.mark.parametrize("kill,signum", list(SIGNALS.values()), ids=list(SIGNALS))
def test_humaneval_killing_itself_before_check_is_never_a_pass(box, kill, signum):
    got, result = timed_label(box, CHECK, WRONG_SQUARE + kill)
    assert (got.verdict, got.passed) == ("runtime_error", False), (got, result)
    assert result.signal == signum
    assert got.first_failure is not None
    assert got.first_failure["reason"] == f"killed by signal {signal.Signals(signum).name}"


@pytest.mark.parametrize("problem,mode,code,verdict", [
    pytest.param(STDIN, "apps", "import os\nos._exit(0)", "runtime_error", id="stdin-apps-os._exit"),
    pytest.param(STDIN, "lcb", "import os\nos._exit(0)", "runtime_error", id="stdin-script-os._exit"),
    pytest.param(STDIN, "apps", "import sys\nsys.exit(0)", "wrong_answer", id="stdin-apps-sys.exit"),
    pytest.param(STDIN, "lcb", "import sys\nsys.exit(0)", "wrong_answer", id="stdin-script-sys.exit"),
    pytest.param(CALL, "apps", "import os\nos._exit(0)", "runtime_error", id="call-apps-os._exit"),
    pytest.param(CALL, "lcb", "import sys\nsys.exit(0)", "runtime_error", id="call-script-sys.exit"),
])
def test_exit_before_the_tests_is_never_a_pass_in_apps_harnesses(box, problem, mode, code, verdict):
    got, result = timed_label(box, problem, code, mode)
    assert (got.verdict, got.passed, got.tests_passed) == (verdict, False, 0), (got, result)


# ---------------------------------------------------------------------------------------------------------
# Call-based: the parent parses repr() of the value, so an object's own __eq__ never runs

LIARS = {
    "object": "class Liar:\n    def __eq__(self, other):\n        return True\n"
              "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
              "def square(x):\n    return Liar()",
    "int subclass": "class Liar(int):\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = int.__hash__\n"
                    "def square(x):\n    return Liar(0)",
    "list subclass": "class Liar(list):\n    def __eq__(self, other):\n        return True\n"
                     "def square(x):\n    return Liar()",
    "str subclass": "class Liar(str):\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = str.__hash__\n"
                    "def square(x):\n    return Liar('anything')",
}


@pytest.mark.parametrize("mode", ["apps", "lcb", "strict"])
@pytest.mark.parametrize("code", list(LIARS.values()), ids=list(LIARS))
def test_eq_override_is_not_a_pass(box, code, mode):
    got, result = timed_label(box, CALL, code, mode)
    assert (got.verdict, got.passed, got.tests_passed) == ("wrong_answer", False, 0), (got, result)
    assert result.tests[0].status == "ok"  # the call returned; only the parent's comparison said no


# ---------------------------------------------------------------------------------------------------------
# Time: swallowed or disarmed timers, loops in C, SIGSTOP

SPIN_SWALLOWING = """while True:
    try:
        while True:
            pass
    except BaseException:
        pass"""
DISARM = ("import signal\nfor s in (signal.SIGALRM, signal.SIGPROF, signal.SIGVTALRM, signal.SIGXCPU):\n"
          "    signal.signal(s, signal.SIG_IGN)\n"
          "for t in (signal.ITIMER_REAL, signal.ITIMER_PROF):\n    signal.setitimer(t, 0)\n"
          "while True:\n    pass")
C_LOOP = "import itertools\nsum(itertools.repeat(0))"  # never returns to the eval loop: no handler runs


def indent(code: str) -> str:
    return "\n".join("    " + line for line in code.split("\n"))


def in_function(code: str) -> str:
    return f"def square(x):\n{indent(code)}"


HANGS = [  # (problem, mode, program)
    pytest.param(CHECK, "humaneval", in_function(SPIN_SWALLOWING), id="humaneval-swallowed"),
    pytest.param(STDIN, "apps", SPIN_SWALLOWING.replace("BaseException", "Exception"),  # AppsTimeout is one
                 id="stdin-apps-swallowed"),
    pytest.param(STDIN, "lcb", SPIN_SWALLOWING, id="stdin-script-swallowed"),
    pytest.param(CALL, "apps", in_function(SPIN_SWALLOWING), id="call-apps-swallowed"),
    pytest.param(CALL, "strict", in_function(SPIN_SWALLOWING), id="call-script-swallowed"),
    pytest.param(CHECK, "humaneval", in_function(DISARM), id="humaneval-disarmed"),
    pytest.param(STDIN, "lcb", DISARM, id="stdin-script-disarmed"),
    pytest.param(CHECK, "humaneval", in_function(C_LOOP), id="humaneval-C-loop"),
    pytest.param(STDIN, "apps", C_LOOP, id="stdin-apps-C-loop"),
]


@pytest.mark.parametrize("problem,mode,code", HANGS)
@pytest.mark.slow
def test_uncooperative_hang_times_out_at_the_deadline(box, problem, mode, code):
    before = worker_pids(box)
    got, result = timed_label(box, problem, code, mode, deadline=KILL_DEADLINE)
    assert (got.verdict, result.deadline_hit) == ("timeout", True), (got, result)
    assert worker_pids(box) == before  # the worker itself kept going
    assert_still_works(box)


@requires_root
@pytest.mark.parametrize("problem,mode,code", [
    pytest.param(CHECK, "humaneval", "import posix, signal\nposix.kill(posix.getpid(), signal.SIGSTOP)",
                 id="humaneval"),
    pytest.param(STDIN, "lcb", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", id="stdin-script"),
])
@pytest.mark.slow
def test_sigstop_self_times_out_at_the_deadline(dropped, problem, mode, code):
    start = time.monotonic()
    got, result = timed_label(dropped, problem, code, mode, deadline=KILL_DEADLINE)
    assert (got.verdict, result.deadline_hit) == ("timeout", True), (got, result)
    assert time.monotonic() - start >= KILL_DEADLINE
    assert processes_of(tuple(dropped.isolation["uids"])) == []


# ---------------------------------------------------------------------------------------------------------
# Output floods: a verdict, no hang, and nothing of the flood comes back

PRINT_LOOP = "while True:\n    print('x' * 1000)"
FLOODS = [  # (problem, mode, program, verdict)
    pytest.param(CHECK, "humaneval", "while True:\n    print('x')", "timeout", id="humaneval-print-loop"),
    pytest.param(STDIN, "apps", PRINT_LOOP, "wrong_answer", id="stdin-apps-print-loop"),
    pytest.param(STDIN, "lcb", PRINT_LOOP, "wrong_answer", id="stdin-script-print-loop"),
    pytest.param(STDIN, "apps", "import sys\nsys.stdout.write('x' * 50_000_000)", "wrong_answer",
                 id="stdin-apps-huge-write"),
    pytest.param(STDIN, "lcb", "import sys\nsys.stdout.write('x' * 50_000_000)", "wrong_answer",
                 id="stdin-script-huge-write"),
    pytest.param(STDIN, "lcb", "import os\nos.write(1, b'x' * 50_000_000)", "wrong_answer",
                 id="stdin-script-huge-os.write"),
    pytest.param(CALL, "apps", "def square(x):\n    return 'x' * 50_000_000", "wrong_answer",
                 id="call-apps-huge-return"),
    pytest.param(CALL, "lcb", "def square(x):\n    return [0] * 2_000_000", "wrong_answer",
                 id="call-script-huge-return"),
]


@pytest.mark.parametrize("problem,mode,code,verdict", FLOODS)
@pytest.mark.slow
def test_output_flood(box, problem, mode, code, verdict):
    # time enough to produce 50 MB under a loaded machine's wall timer; the print loop must time out
    timeout = TIMEOUT if verdict == "timeout" else 2.0
    got, result = timed_label(box, problem, code, mode, timeout=timeout, deadline=2 * timeout + 1)
    assert (got.verdict, got.passed) == (verdict, False), (got, result)
    assert not result.flooded  # capped in the child, long before the result channel's own cap
    for outcome in result.tests:
        assert not outcome.stdout and outcome.result is None  # none of the flood came back
    if verdict == "wrong_answer":
        assert got.first_failure is not None and "output limit" in got.first_failure["reason"]


CONTROL_CHARS = 4 * 2**20 - 16  # just under the output limit; each is 6 bytes of JSON (\u0001)


@pytest.mark.slow
def test_output_at_the_limit_is_read_in_time(box):
    problem = Problem("apps/control-chars", "apps", "stdin", tests=[Case("", "\x01" * CONTROL_CHARS)])
    code = f"import sys\nsys.stdout.write('\\x01' * {CONTROL_CHARS})"
    got, result = timed_label(box, problem, code, "lcb", timeout=2.0, deadline=4.0)
    assert got.verdict == "pass", (got.first_failure, result.deadline_hit, result.wall_seconds)


# ---------------------------------------------------------------------------------------------------------
# Processes: fork bombs, detached grandchildren, attacks on the parent

BOMB = "while True:\n    try:\n        FORK()\n    except BaseException:\n        pass"
BOMBS = [  # os.fork is None under the reliability guard of the humaneval/apps styles; posix.fork is not
    pytest.param(CHECK, "humaneval", "import posix\n" + BOMB.replace("FORK", "posix.fork"),
                 id="humaneval-posix.fork"),
    pytest.param(STDIN, "lcb", "import os\n" + BOMB.replace("FORK", "os.fork"), id="stdin-script-os.fork"),
]


@requires_root
@pytest.mark.parametrize("problem,mode,code", BOMBS)
@pytest.mark.slow
def test_fork_bomb_leaves_nothing_behind(dropped, problem, mode, code):
    before = worker_pids(dropped)
    got, result = timed_label(dropped, problem, code, mode, deadline=KILL_DEADLINE)
    # the harness's timer or the worker's deadline, whichever catches the main process outside its `try`
    assert got.verdict == "timeout", (got, result)
    assert result.leftover_processes > 1  # the bomb went off, and its processes were reaped
    assert processes_of(tuple(dropped.isolation["uids"])) == []
    assert worker_pids(dropped) == before
    assert_still_works(dropped)


DETACH = """
import os, signal, time
def detach():
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for sig in range(1, 32):
                try:
                    signal.signal(sig, signal.SIG_IGN)
                except (OSError, ValueError):
                    pass
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            while True:
                time.sleep(1000)
        os._exit(0)
    os.close(write_end)
    return int(os.read(read_end, 100))
"""


@requires_root
def test_detached_grandchild_is_gone_after_the_job(dropped):
    job = Job(DETACH, "call", "script", inputs=[[]], fn_name="detach", timeout=TIMEOUT, deadline=DEADLINE)
    result = dropped.run(job)
    assert result.tests[0].status == "ok", result
    grandchild = int(result.tests[0].result or "0")  # the program finished normally and told us the pid
    assert grandchild > 0
    assert result.leftover_processes >= 1  # the sweep found it...
    assert not os.path.exists(f"/proc/{grandchild}")  # ...and it is gone, reaped, not even a zombie
    assert processes_of(tuple(dropped.isolation["uids"])) == []


@requires_root
def test_correct_program_leaving_a_detached_grandchild_still_passes(dropped):
    # the grandchild holds the per-test result pipe open: the harness must stop at the test's own exit
    code = DETACH + "detach()\nprint(int(input()) ** 2)\n"
    got, result = timed_label(dropped, STDIN_ONE, code, "lcb")
    assert got.verdict == "pass", (got, result)
    assert processes_of(tuple(dropped.isolation["uids"])) == []


TEST_PID = os.getpid()
PARENT_ATTACKS = [  # (problem, mode, attack, verdict, reason; square is correct, so pass is the only
    # verdict a harmless kill() allows; WORKERS: the worker pids, filled in by the test)
    pytest.param(CHECK, "humaneval", "import posix\nposix.kill(posix.getppid(), 9)", "runtime_error",
                 "PermissionError", id="humaneval-kill-parent"),
    pytest.param(CHECK, "humaneval", "import posix\nfor pid in WORKERS:\n    posix.kill(pid, 9)",
                 "runtime_error", "PermissionError", id="humaneval-kill-workers"),
    pytest.param(CHECK, "humaneval", "import posix\nposix.killpg(posix.getpgid(posix.getppid()), 9)",
                 "runtime_error", "PermissionError", id="humaneval-killpg-parent"),
    pytest.param(CHECK, "humaneval", f"import posix\nposix.kill({TEST_PID}, 9)", "runtime_error",
                 "PermissionError", id="humaneval-kill-test-process"),
    pytest.param(CHECK, "humaneval", "import posix\nposix.kill(-1, 9)", "pass", "", id="humaneval-kill-all"),
    pytest.param(STDIN, "apps", "import posix\nposix.kill(posix.getppid(), 9)", "runtime_error",
                 "PermissionError", id="apps-kill-parent"),
    pytest.param(STDIN, "lcb", "import os\nfor pid in WORKERS:\n    os.kill(pid, 9)", "runtime_error",
                 "PermissionError", id="script-kill-workers"),
    pytest.param(STDIN, "lcb", f"import os\nos.kill({TEST_PID}, 9)", "runtime_error", "PermissionError",
                 id="script-kill-test-process"),
    # each test runs in a process of its own; its parent, the harness, keeps a uid the program cannot signal
    pytest.param(STDIN, "lcb", "import os\nos.kill(-1, 9)", "pass", "", id="script-kill-all"),
    pytest.param(STDIN, "lcb", "import os\nos.kill(os.getppid(), 9)", "runtime_error", "PermissionError",
                 id="script-kill-parent"),
]


@requires_root
@pytest.mark.parametrize("problem,mode,attack,verdict,reason", PARENT_ATTACKS)
def test_killing_the_parent_fails_and_the_worker_survives(dropped, problem, mode, attack, verdict, reason):
    solution = FUNCTION_CODE["pass"] if problem.kind == "check" else STDIN_CODE["pass"]
    before = worker_pids(dropped)
    attack = attack.replace("WORKERS", repr(before))
    got, result = timed_label(dropped, problem, attack + "\n" + solution, mode)
    assert got.verdict == verdict, (got, result)
    if reason:  # a kill() that reached the worker would have ended in a retry and then infra_error
        assert got.first_failure is not None and got.first_failure["reason"].startswith(reason), got
    assert worker_pids(dropped) == before
    assert all(w.proc.poll() is None for w in dropped._workers)
    assert_still_works(dropped)


# ---------------------------------------------------------------------------------------------------------
# The harness's own descriptors and stdin

CLOSE_ALL = "import os\nos.closerange(0, 1024)\n"


@pytest.mark.parametrize("problem,mode,code", [
    pytest.param(CHECK, "humaneval", CLOSE_ALL + FUNCTION_CODE["pass"], id="humaneval"),
    pytest.param(STDIN, "apps", CLOSE_ALL + STDIN_CODE["pass"], id="stdin-apps"),
    pytest.param(STDIN, "lcb", CLOSE_ALL + STDIN_CODE["pass"], id="stdin-script"),
    pytest.param(CALL, "apps", CLOSE_ALL + FUNCTION_CODE["pass"], id="call-apps"),
])
def test_closing_all_descriptors_is_a_runtime_error_not_a_hang(box, problem, mode, code):
    got, result = timed_label(box, problem, code, mode)
    assert (got.verdict, got.passed) == ("runtime_error", False), (got, result)
    assert not result.deadline_hit


@pytest.mark.parametrize("read", [
    "input()", "import sys\nsys.stdin.read()", "import sys\nsys.stdin.readline()",
    "import sys\nsys.stdin.buffer.read()", "import sys\nfor line in sys.stdin:\n    pass",
])
def test_humaneval_stdin_reads_raise(box, read):
    got, result = timed_label(box, CHECK, FUNCTION_CODE["pass"] + "\n" + read)
    assert (got.verdict, result.deadline_hit) == ("runtime_error", False), (got, result)


@pytest.mark.parametrize("read", ["import os\nos.read(0, 10)", "open(0).read()", "open('/dev/stdin').read()"])
def test_humaneval_stdin_descriptor_is_empty_not_blocking(box, read):
    got, result = timed_label(box, CHECK, FUNCTION_CODE["pass"] + "\n" + read)
    assert got.verdict == "pass", (got, result)


@pytest.mark.parametrize("mode", ["apps", "lcb"])
def test_reading_past_the_input_is_a_runtime_error_not_a_hang(box, mode):
    got, result = timed_label(box, STDIN, "n = int(input())\nm = int(input())\nprint(n * n)", mode)
    assert (got.verdict, result.deadline_hit) == ("runtime_error", False), (got, result)
    assert got.first_failure is not None and got.first_failure["reason"].startswith("EOFError")


# ---------------------------------------------------------------------------------------------------------
# Network, filesystem, environment

NETWORK = """
import socket
import sys
def attempt(family, kind, address):
    try:
        with socket.socket(family, kind) as s:
            s.settimeout(0.5)
            s.connect(address)
            if kind == socket.SOCK_DGRAM:
                s.send(b"x")
        return "connected"
    except OSError as e:
        return f"{type(e).__name__}"
print(attempt(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", PORT)))
print(attempt(socket.AF_INET, socket.SOCK_STREAM, ("1.1.1.1", 53)))
print(attempt(socket.AF_INET, socket.SOCK_DGRAM, ("1.1.1.1", 53)))
print(attempt(socket.AF_INET6, socket.SOCK_STREAM, ("::1", PORT)))
try:
    socket.getaddrinfo("example.com", 80)
    print("resolved")
except OSError as e:
    print(type(e).__name__)
print(sorted(name for _, name in socket.if_nameindex()))
"""


def test_network_is_unreachable(box):
    if "network" not in box.isolation["namespaces"]:
        pytest.skip("no network namespace on this machine (see box.isolation['notes'])")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        lines = script(box, NETWORK.replace("PORT", str(port))).splitlines()
        assert lines[:4] == ["OSError"] * 4, lines  # ENETUNREACH etc.: nothing "connected"
        assert lines[4] == "gaierror"
        assert lines[5] == "['lo']"  # a fresh network namespace: loopback only (and down)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the test's listener


FILESYSTEM = """
import os
def attempt(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except PermissionError:
        return "refused"
    except OSError as e:  # a read-only bind mount (a checkout under /tmp) says EROFS
        return "refused" if e.errno == 30 else type(e).__name__
for path in PATHS:
    print(attempt(path))
print(os.getcwd() not in ("/", REPO))
"""


@requires_root
def test_filesystem_writes_stay_private(box):
    token = f"cv-test-{uuid.uuid4().hex}"
    repo = str(Path(__file__).resolve().parent.parent)
    paths = {
        f"/tmp/{token}": "written",  # the worker's private tmpfs
        f"/var/tmp/{token}": "written",
        f"/dev/shm/{token}": "written",
        token: "written",  # the private work directory
        f"/root/{token}": "refused",
        f"/etc/{token}": "refused",
        f"/{token}": "refused",
        f"{repo}/{token}": "refused",
        f"{repo}/codevalue/{token}": "refused",
    }
    program = FILESYSTEM.replace("PATHS", repr(list(paths))).replace("REPO", repr(repo))
    lines = script(box, program).splitlines()
    assert dict(zip(paths, lines[:-1], strict=True)) == paths
    assert lines[-1] == "True"
    for path in paths:  # nothing appeared on the real filesystem, in the real /tmp included
        assert not os.path.exists(path if path.startswith("/") else f"/tmp/{path}")
        assert not os.path.exists(os.path.join(os.getcwd(), path))


@requires_root
@pytest.mark.slow
def test_files_left_in_tmp_do_not_reach_the_next_program():
    token = uuid.uuid4().hex
    with solo_box() as solo:
        script(solo, f"import os\nfor d in ('/tmp', '/var/tmp', '/dev/shm', '/run/lock'):\n"
                     f"    if os.path.isdir(d):\n        open(d + '/{token}', 'w').write('state')")
        seen = script(solo, f"import os\nprint([d for d in ('/tmp', '/var/tmp', '/dev/shm', '/run/lock') "
                            f"if os.path.exists(d + '/{token}')])")
    assert seen == "[]\n"


FILL_TMP = """
chunk = b"\\0" * (1 << 20)
i = 0
try:
    while True:
        with open(f"/tmp/fill{i}", "wb") as f:
            for _ in range(4):
                f.write(chunk)
        i += 1
except OSError:
    pass
"""


@requires_root
@pytest.mark.slow
def test_filling_tmp_does_not_change_the_next_programs_verdict():
    with solo_box() as solo:
        filler = solo.run(Job(FILL_TMP, "stdin", "script", inputs=[""], timeout=5, deadline=6))
        assert filler.tests[0].status == "ok", filler
        got, result = label(solo, STDIN, STDIN_CODE["pass"], "lcb")
    assert got.verdict == "pass", (got, result)


DEEP_TREE = """
import os
os.chdir(WHERE)
for _ in range(1500):
    os.mkdir("d")
    os.chdir("d")
print(int(input()) ** 2)
"""


@requires_root
@pytest.mark.parametrize("where", ["'.'", "'/tmp'"], ids=["work-dir", "tmp"])
@pytest.mark.slow
def test_deep_directory_tree_neither_breaks_the_verdict_nor_the_worker(where):
    with solo_box() as solo:
        got, result = label(solo, STDIN_ONE, DEEP_TREE.replace("WHERE", where), "lcb")
        assert (got.verdict, result.infra_error) == ("pass", ""), (got, result)
        assert_still_works(solo)


ENVIRONMENT = """
import os
print(sorted(os.environ))
print(any("CANARY" in k or "TOKEN" in v for k, v in os.environ.items()))
try:  # the environment the process started with (the worker's); unreadable after the uid drop
    print("TOKEN" in open("/proc/self/environ", "rb").read().decode("latin-1"))
except OSError as e:
    print(type(e).__name__)
"""


@pytest.mark.slow
def test_environment_holds_none_of_the_callers_variables(monkeypatch):
    token = uuid.uuid4().hex
    monkeypatch.setenv("CODEVALUE_TEST_CANARY", token)
    with solo_box() as fresh:  # started after the canary is set
        lines = script(fresh, ENVIRONMENT.replace("TOKEN", token)).splitlines()
    assert lines[0] == repr(sorted(["HOME", "LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH",
                                    "PYTHONIOENCODING", "TMPDIR"]))
    assert lines[1] == "False"
    assert lines[2] in ("False", "PermissionError")  # readable and clean, or not readable at all


PROC_ENVIRON = """
def attempt(pid):
    try:
        return str(len(open(f"/proc/{pid}/environ", "rb").read()))
    except OSError as e:
        return type(e).__name__
import os
print(attempt(TEST_PID), attempt(os.getppid()), attempt(1))
"""


@requires_root
def test_callers_proc_environ_is_unreadable(box):
    out = script(box, PROC_ENVIRON.replace("TEST_PID", str(os.getpid())))
    assert set(out.split()) <= {"PermissionError", "FileNotFoundError"}, out  # not even listed in our /proc


# ---------------------------------------------------------------------------------------------------------
# Expected outputs stay in the parent

SCAN = """
import gc
def scan():
    needle = "".join(map(chr, NEEDLE))
    probe = "".join(map(chr, PROBE))
    seen = {"input": False, "expected": False}
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            items = list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = list(obj)
        else:
            continue
        for item in items:
            if isinstance(item, bytes):
                item = item.decode("latin-1")
            if isinstance(item, str):
                seen["input"] = seen["input"] or probe in item
                seen["expected"] = seen["expected"] or needle in item
    return "input=%s expected=%s" % (seen["input"], seen["expected"])
"""


@pytest.mark.parametrize("kind", ["stdin", "call"])
@pytest.mark.parametrize("mode", ["apps", "lcb"])
def test_expected_outputs_never_reach_the_child(box, kind, mode):
    needle, probe = f"EXPECTED-{uuid.uuid4().hex}", f"INPUT-{uuid.uuid4().hex}"
    code = SCAN.replace("NEEDLE", repr(list(map(ord, needle)))).replace("PROBE", repr(list(map(ord, probe))))
    if kind == "stdin":
        problem = Problem("leak/stdin", "apps", "stdin", tests=[Case(probe + "\n", needle + "\n")])
        code += "print(scan())\n"
    else:
        problem = Problem("leak/call", "apps", "call", tests=[Case([probe], [needle])], entry_point="solve")
        code += "def solve(arg):\n    return scan()\n"
    assert needle not in code and probe not in code
    got, result = timed_label(box, problem, code, mode)
    assert got.verdict == "wrong_answer", (got, result)
    # the scan does find the input (so it searches where the expected output would be), never the output
    if kind == "stdin":
        assert result.tests[0].stdout == "input=True expected=False\n"
    else:
        assert result.tests[0].result == repr("input=True expected=False")


READ_BUNDLED = """
def attempt(path):
    try:
        with open(path, "rb") as f:
            return "read %d bytes" % len(f.read())
    except OSError as e:
        return type(e).__name__
print(attempt(PATH))
"""


@requires_root
def test_bundled_expected_outputs_are_not_readable(box):
    path = str(BUNDLED["apps-intro-test"].resolve())
    assert os.path.exists(path)
    out = script(box, READ_BUNDLED.replace("PATH", repr(path)))
    assert not out.startswith("read") or out == "read 0 bytes\n", out


@requires_root
@pytest.mark.slow
def test_hidden_paths_are_not_readable():
    """`hidden_paths` (label_rollouts passes its problems file) cover a file or a directory inside what
    programs see (here: files of the package, which is bound into their root); outside it, nothing is."""
    import codevalue

    package = Path(codevalue.__file__).resolve().parent
    hidden_file, hidden_dir = str(package / "problems.py"), str(package / "assets")
    outside = str(Path(__file__).resolve())  # world-readable, not part of the allowlisted root
    assert os.path.getsize(hidden_file) > 0 and os.listdir(hidden_dir)
    program = (READ_BUNDLED.replace("PATH", repr(hidden_file)) + f"print(os.listdir({hidden_dir!r}))\n"
               + READ_BUNDLED.replace("PATH", repr(outside)))
    config = SandboxConfig(workers=1, uid_base=UID_BASE, hidden_paths=(hidden_file, hidden_dir, outside))
    with Sandbox(config) as hider:
        out = script(hider, "import os\n" + program)
    assert out.splitlines()[:2] == ["read 0 bytes", "[]"], out
    assert out.splitlines()[2] in ("read 0 bytes", "FileNotFoundError"), out


# ---------------------------------------------------------------------------------------------------------
# Script style is a real interpreter; APPS style reproduces the reference's quirks

FAST_IO = {
    "sys.stdin.buffer": "import sys\nn = int(sys.stdin.buffer.readline())\nprint(n * n)",
    "sys.stdin.read()": "import sys\nn = int(sys.stdin.read())\nprint(n * n)",
    "os.read(0)": "import os\nn = int(os.read(0, 100))\nprint(n * n)",
    "sys.stdout.buffer": "import sys\nn = int(input())\nsys.stdout.buffer.write(b'%d\\n' % (n * n))",
    "os.write(1)": "import os\nn = int(input())\nos.write(1, b'%d\\n' % (n * n))",
    "sys.stdin lines": "import sys\nfor line in sys.stdin:\n    print(int(line) ** 2)",
}


@pytest.mark.parametrize("code", list(FAST_IO.values()), ids=list(FAST_IO))
def test_script_style_reads_and_writes_real_descriptors(box, code):
    assert script(box, code, "12\n") == "144\n"
    got, result = timed_label(box, STDIN, code, "strict")
    assert got.verdict == "pass", (got, result)


CLOSES_STDIO = [  # idioms whose file object closes descriptor 0 or 1 when it goes away: no test may suffer
    # from what the previous one did, as with a judge's fresh process per test
    pytest.param("n = int(open(0).read())\nprint(n * n)", id="open(0).read()"),
    pytest.param("with open(0) as f:\n    n = int(f.read())\nprint(n * n)", id="with open(0)"),
    pytest.param("input = open(0).readline\ndef main():\n    n = int(input())\n    print(n * n)\nmain()",
                 id="input = open(0).readline"),
    pytest.param("import os\nn = int(input())\nprint(n * n, flush=True)\nos.close(0)\nos.close(1)",
                 id="os.close(0), os.close(1)"),
    pytest.param("import sys\nsys.stdin = open(0)\nn = int(input())\nprint(n * n)", id="sys.stdin = open(0)"),
    pytest.param("import sys\nsys.stdout = open(1, 'w')\nn = int(input())\nprint(n * n)",
                 id="sys.stdout = open(1, 'w')"),
]
SQUARES = Problem("apps/stdin-squares", "apps", "stdin",
                  tests=[Case(f"{n}\n", f"{n * n}\n") for n in range(6)])


@pytest.mark.parametrize("code", CLOSES_STDIO)
@pytest.mark.slow
def test_script_style_program_closing_its_stdio_passes_every_test(box, code):
    assert script(box, code, "12\n") == "144\n"  # the first test always worked
    got, result = timed_label(box, SQUARES, code, "lcb")
    assert (got.verdict, got.tests_passed) == ("pass", 6), (got, result)


MAIN_GUARD = "def main():\n    n = int(input())\n    print(n * n)\n\nif __name__ == '__main__':\n    main()"
QUIRKS = [  # (program, verdict in apps mode; script style passes every one of them)
    pytest.param(MAIN_GUARD, "wrong_answer", id="__main__-guard-never-runs"),
    pytest.param(FAST_IO["sys.stdin.buffer"], "runtime_error", id="sys.stdin.buffer-missing"),
    pytest.param("n = int(input())\nprint(n * n)\nexit()", "runtime_error", id="exit-is-None"),
    pytest.param("n = int(input())\nprint(n * n)\nimport sys\nsys.exit(0)", "pass", id="sys.exit-swallowed"),
    pytest.param("print(floor(int(input()) ** 2))", "pass", id="preamble-names"),
]


@pytest.mark.parametrize("code,apps_verdict", QUIRKS)
def test_apps_reference_quirks_and_script_style(box, code, apps_verdict):
    apps, apps_result = timed_label(box, STDIN, code, "apps")
    assert apps.verdict == apps_verdict, (apps, apps_result)
    lcb, lcb_result = timed_label(box, STDIN, code, "lcb")
    if "floor" in code:  # a real interpreter has no preamble: NameError
        assert lcb.verdict == "runtime_error", (lcb, lcb_result)
    else:
        assert lcb.verdict == "pass", (lcb, lcb_result)


# ---------------------------------------------------------------------------------------------------------
# What is in force

@requires_root
def test_isolation_report(box):
    iso = box.isolation
    assert iso["uid_drop"] is True and iso["uid"] == iso["uids"][0] >= UID_BASE
    assert {"mount", "network", "ipc"} <= set(iso["namespaces"])
    assert iso["private_tmp"] is True
    assert {"AS", "CPU", "FSIZE", "NOFILE", "NPROC"} <= set(iso["rlimits"])
    assert "subreaper" in iso["cleanup"]


SLOW_SQUARE = "import time\ntime.sleep(4)\nprint(int(input()) ** 2)"


def wait_for_processes_of(uid: int, within: float = 30.0) -> None:
    """Return once a process of `uid` runs (a program of the sandbox that owns that uid has started)."""
    deadline = time.monotonic() + within
    while not processes_of((uid,)):
        assert time.monotonic() < deadline, f"no process of uid {uid} within {within} s"
        time.sleep(0.01)


@requires_root
@pytest.mark.slow
def test_two_sandboxes_side_by_side_get_disjoint_uids_and_cannot_kill_each_other():
    """Two live sandboxes with the same uid_base (two Ray nodes on one machine): a program of one that kills
    every process its uid may (kill(-1)) must not reach a program running in the other."""
    import threading

    config = SandboxConfig(workers=1, uid_base=UID_BASE)
    with Sandbox(config) as first, Sandbox(config) as second:
        uids = [w.isolation["uid"] for box in (first, second) for w in box._workers]
        assert all(box.isolation["uid_drop"] for box in (first, second))
        slow: list = []
        runner = threading.Thread(target=lambda: slow.append(label(second, STDIN_ONE, SLOW_SQUARE, "lcb", timeout=6.0,
                                                                   deadline=8.0)))
        runner.start()
        wait_for_processes_of(second.isolation["uids"][0])  # the slow program runs in the second sandbox now
        killer, _ = label(first, STDIN_ONE, "import os\nos.kill(-1, 9)\n" + STDIN_CODE["pass"], "lcb")
        # the slow program (4 s of sleep; the killer takes a fraction of that) outlived kill(-1)
        assert processes_of(tuple(second.isolation["uids"])), "kill(-1) reached the other sandbox's program"
        runner.join()
        assert killer.verdict == "pass"  # kill(-1) as its own uid reached nothing it cares about
        assert slow[0][0].verdict == "pass", slow[0]
        assert len(set(uids)) == 2, uids
        assert set(first.isolation["uids"]).isdisjoint(second.isolation["uids"])


@requires_root
@pytest.mark.parametrize("kind,style", [("check", "humaneval"), ("stdin", "apps"), ("stdin", "script"),
                                        ("call", "apps"), ("call", "script")])
def test_programs_run_as_the_unprivileged_sandbox_uid(box, kind, style):
    """In every harness the program's own code sees the sandbox uid, not root (the uid drop happens in
    different processes per style: before the harness for most, in each test's process for script stdin)."""
    ids = ("import posix\n"
           "IDS = (posix.getuid(), posix.geteuid(), posix.getgid(), posix.getegid(), posix.getgroups())\n")
    program = {"check": ids + "raise RuntimeError(repr(IDS))",
               "stdin": ids + "print(repr(IDS))",
               "call": ids + "def ids():\n    return repr(IDS)"}[kind]
    inputs = {"check": [], "stdin": [""], "call": [[]]}[kind]
    result = box.run(Job(program, kind, style, inputs=inputs, fn_name="ids", timeout=2, deadline=3))
    outcome = result.tests[0]
    seen = {"check": raised(outcome.error), "stdin": (outcome.stdout or "").strip(),
            "call": (outcome.result or "")[1:-1]}[kind]  # the repr of a repr: strip the quotes
    uid, euid, gid, egid, groups = ast.literal_eval(seen)  # parsed, never evaluated
    assert uid in box.isolation["uids"] and uid == euid == gid == egid, seen
    assert groups == []


# ---------------------------------------------------------------------------------------------------------
# The result channel: whatever a program writes on it, the worker survives and its memory stays bounded

SURROGATE_EVENT = r"""
import os
os.write(3, b'{"t": "test", "i": 0, "status": "error", "error": "\\ud800"}\n')
os._exit(3)
"""


def test_lone_surrogate_on_the_result_channel_does_not_kill_the_worker(box):
    before = worker_pids(box)
    got, result = timed_label(box, STDIN, SURROGATE_EVENT, "lcb")
    assert (got.verdict, result.infra_error) == ("runtime_error", ""), (got, result)
    assert worker_pids(box) == before


EVENT_FLOOD = """
import os
line = b"{}\\n" * 20000
while True:
    try:
        while True:
            os.write(3, line)
    except BaseException:
        pass
"""


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_event_flood_on_the_result_channel_keeps_memory_bounded():
    with solo_box() as solo:
        pid = solo._workers[0].proc.pid
        before = peak_rss_kb(pid)
        # apps style: the program writes on the harness's own channel, and swallows the per-test alarm
        result = solo.run(Job(EVENT_FLOOD, "stdin", "apps", inputs=[""], timeout=TIMEOUT, deadline=3.0))
        grown_mb = (peak_rss_kb(pid) - before) / 1024
    # Splitting 256 MiB of 3-byte lines takes the worker far longer than 3 s: the deadline stops the program,
    # not the channel's byte cap (a flood of long lines, below, is stopped by its length at once).
    assert (result.deadline_hit, result.flooded, result.tests[0].status) == (True, False, "missing"), result
    got = judge(STDIN_ONE, result, "apps")
    assert (got.verdict, got.first_failure["reason"]) == ("timeout", "wall-clock limit for the program reached"), got
    assert grown_mb < 32, f"the worker grew by {grown_mb:.0f} MB on a 3 s flood of empty events"


OVERSIZE_EVENT = """
import os
chunk = b"x" * 2**20
while True:
    os.write(3, chunk)
"""


def test_a_line_longer_than_any_event_is_a_flood(box):
    """A result-channel line longer than any honest event (6 bytes per output character) stops the reading at
    once: the program is killed and judged a runtime error that says why, long before any time limit."""
    got, result = timed_label(box, STDIN_ONE, OVERSIZE_EVENT, "apps", timeout=30, deadline=60)
    assert result.flooded and not result.deadline_hit, result
    assert (got.verdict, got.first_failure["reason"]) == ("runtime_error", "flooded the result channel"), got
    assert result.infra_error == "", result  # killed (SIGKILL, or SIGPIPE once the worker closed the channel)
    assert_still_works(box)


@requires_root
@pytest.mark.slow
def test_package_installed_under_tmp_still_runs_programs(tmp_path):
    """A checkout under /tmp (CI clones often live there) works: its package is bound again inside every
    fresh /tmp of the worker (also after a program left files there), and nothing else of it is visible."""
    import shutil
    import subprocess
    import sys

    import codevalue

    pkg = Path(codevalue.__file__).parent
    shutil.copytree(pkg, tmp_path / "codevalue", ignore=shutil.ignore_patterns("__pycache__", "data"))
    (tmp_path / "codevalue" / "data").mkdir()
    (tmp_path / "cv_probe_mod.py").write_text("VALUE = 2\n")  # in the checkout, outside the package
    tmp_path.chmod(0o755)  # pytest makes it 0700; a clone is readable by others
    driver = ("from codevalue.sandbox import Sandbox, SandboxConfig, Job\n"
              "import codevalue, sys\n"
              "assert codevalue.__file__.startswith(sys.argv[1]), codevalue.__file__\n"
              "probe = ('try:\\n    import cv_probe_mod\\n    seen = 1\\nexcept ImportError:\\n    seen = 0\\n'\n"
              "         'import codevalue.compare\\nopen(\"/tmp/dirty\", \"w\").write(\"x\")\\n'\n"
              "         'print(int(input()) * 2 + seen)')\n"
              "with Sandbox(SandboxConfig(workers=1)) as box:\n"
              "    for _ in range(2):  # the second runs in a /tmp replaced after the first left a file\n"
              "        r = box.run(Job(probe, 'stdin', 'script', ['21']))\n"
              "        print(r.tests[0].stdout.strip() if r.tests[0].stdout else r)\n"
              "    print(box.isolation['private_tmp'])\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", driver, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["42", "42", "True"], out.stdout


def test_hiding_problems_adds_only_an_existing_problems_source(tmp_path):
    config = SandboxConfig(hidden_paths=("/a",))
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("{}\n")
    assert config.hiding_problems(str(problems_file)).hidden_paths == ("/a", str(problems_file))
    assert config.hiding_problems("humaneval").hidden_paths[1].endswith("problems.jsonl.gz")  # a bundled name
    assert config.hiding_problems("codeparrot/apps") is config  # a hub id: nothing on disk to hide
    assert config.hiding_problems([]) is config  # problems given as objects


# ---------------------------------------------------------------------------------------------------------
# Hardening, round 2 (issue 16): one attack per test, each of which got through the sandbox before it

HOST_VIEW = """
import os, socket
def read(path):
    try:
        with open(path, "rb") as f:
            return "read"
    except OSError as e:
        return type(e).__name__
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return type(e).__name__
def connect(path):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
        return "connected"
    except OSError as e:
        return type(e).__name__
print(read(README), read(GIT_HEAD), read(PLANTED), connect(SOCKET))
print(listing("/home"), listing("/srv"), listing(REPO))
print(sorted(os.listdir("/")))
"""


@requires_root
def test_host_filesystem_and_unix_sockets_are_not_visible(box):
    """Only an allowlist of the host is visible: no checkout (README, git history), no planted data, no
    filesystem socket (the network namespace does not cover those)."""
    token = uuid.uuid4().hex
    repo = Path(__file__).resolve().parent.parent
    planted, sock_path = Path(f"/srv/cv-{token}.txt"), f"/run/cv-{token}.sock"
    planted.write_text("labels of an earlier run")
    planted.chmod(0o644)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(sock_path)
        os.chmod(sock_path, 0o777)
        listener.listen()
        program = (HOST_VIEW.replace("README", repr(str(repo / "README.md")))
                   .replace("GIT_HEAD", repr(str(repo / ".git" / "HEAD"))).replace("PLANTED", repr(str(planted)))
                   .replace("SOCKET", repr(sock_path)).replace("REPO", repr(str(repo))))
        lines = script(box, program).splitlines()
    finally:
        listener.close()
        os.unlink(sock_path)
        planted.unlink()
    assert "read" not in lines[0].split() and "connected" not in lines[0], lines
    home, srv, checkout = lines[1].split(" ", 2)
    assert (home, srv) == ("FileNotFoundError", "FileNotFoundError"), lines
    assert set(ast.literal_eval(checkout)) <= {"codevalue", ".venv"}, lines  # the package, not the checkout
    top = set(ast.literal_eval(lines[2]))
    # Besides the system directories, only the first component of the path to this checkout and to Python
    # (e.g. /work, or /check on CI) may appear: the path to the package and interpreter, nothing beside it.
    own = {Path(os.path.realpath(p)).parts[1] for p in (repo, sys.executable, sys.prefix, sys.base_prefix)}
    assert top <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "tmp", "var",
                   "run", ".cv-imports"} | own, top
    assert "srv" not in top and "home" not in top


PROC_LISTING = """
import os
print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print(os.getpid())
"""


@requires_root
def test_proc_shows_only_the_programs_own_processes(box):
    pids = ast.literal_eval(script(box, PROC_LISTING).splitlines()[0])
    assert os.getpid() not in pids and not set(worker_pids(box)) & set(pids), pids
    assert len(pids) <= 2, pids  # the test process (and nothing of the host or of the harness)


IPC_OBJECTS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
KEY, CREATE = 0x5A17, 0o1666
if MAKE:
    print(libc.shmget(KEY, 4096, CREATE) >= 0, libc.msgget(KEY, CREATE) >= 0, libc.semget(KEY, 1, CREATE) >= 0,
          libc.mq_open(b"/cv-queue", os.O_CREAT | os.O_RDWR, 0o666, None) >= 0)
else:
    print(libc.shmget(KEY, 0, 0) >= 0, libc.msgget(KEY, 0) >= 0, libc.semget(KEY, 0, 0) >= 0,
          libc.mq_open(b"/cv-queue", os.O_RDWR) >= 0)
"""


@pytest.mark.slow
def test_ipc_objects_do_not_reach_the_next_program():
    """SysV shared memory, message queues and semaphores, and POSIX message queues outlive the processes
    that made them; none may be there for the next program on the same worker."""
    with solo_box() as solo:
        made = script(solo, IPC_OBJECTS.replace("MAKE", "True"))
        found = script(solo, IPC_OBJECTS.replace("MAKE", "False"))
        again = script(solo, IPC_OBJECTS.replace("MAKE", "False"))
    assert made == "True True True True\n"  # the objects were made, and outlive their maker...
    assert found == again == "False False False False\n"  # ...but the next program starts without them


FORKED_HOARDERS = """
import os, time
n = int(input())
pids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        hoard = b"x" * (160 << 20)  # touched: resident, not just reserved
        time.sleep(1.0)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print(n * n)
"""


@pytest.mark.slow
def test_memory_limit_covers_all_processes_of_a_program():
    """Three children of 160 MB each, every one under a 256 MB limit: together they are over it."""
    with Sandbox(SandboxConfig(workers=1, uid_base=UID_BASE, memory_mb=256)) as small:
        if small.isolation.get("memory", "").startswith("RLIMIT_AS"):
            pytest.skip(f"no memory cgroup here: {small.isolation['memory']}")
        job = make_job(STDIN_ONE, FORKED_HOARDERS, LabelConfig(mode="lcb", timeout=5.0, program_timeout=8.0))
        result = small.run(job)
        got = judge(STDIN_ONE, result, "lcb")
        assert got.verdict == "memory_exceeded", (got, result)
        assert result.oom_killed
        assert_still_works(small)


@pytest.mark.slow
def test_memory_cgroup_is_removed_on_close():
    """The worker's cgroup is outside its view of the filesystem by then: it is removed by descriptor."""
    box = Sandbox(SandboxConfig(workers=1, uid_base=UID_BASE))
    try:
        cgroup = box.isolation.get("cgroup")
        if not cgroup:
            pytest.skip("no memory cgroup here")
        assert_still_works(box)
    finally:
        box.close()
    assert not os.path.exists(cgroup)


FORGE_FROM_FRAMES = """
import posix, re, sys
def square(x):
    return 0
def candidates(frame):
    found = set()
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for value in list(scope.values()):
                for v in (list(value.values()) if isinstance(value, dict) else [value]):
                    if isinstance(v, bytes):
                        v = v.decode("latin-1")
                    if isinstance(v, str):
                        found.update(re.findall("[0-9a-f]{16}", v))
        frame = frame.f_back
    return found
def forge(found):
    posix.write(3, b'{"t": "test", "i": 0, "status": "ok", "error": ""}\\n')
    for nonce in found:
        posix.write(3, b'{"t": "done", "nonce": "%s"}\\n' % nonce.encode())
    posix._exit(0)
"""
FORGERIES = {
    "frame walk": FORGE_FROM_FRAMES + "forge(candidates(sys._getframe()))",
    "signal-handler frame": FORGE_FROM_FRAMES + (
        "import signal\nsignal.signal(signal.SIGUSR1, lambda s, frame: forge(candidates(frame)))\n"
        "posix.kill(posix.getpid(), signal.SIGUSR1)"),
    "gc scan": FORGE_FROM_FRAMES + (
        "import gc\nfound = set()\nfor o in gc.get_objects():\n"
        "    if isinstance(o, dict):\n"
        "        found.update(v for v in o.values() if isinstance(v, str) and re.fullmatch('[0-9a-f]{16}', v))\n"
        "forge(found)"),
    "/proc/self/mem": FORGE_FROM_FRAMES + (
        "found = set()\nmem = open('/proc/self/mem', 'rb', buffering=0)\n"
        "for line in open('/proc/self/maps'):\n"
        "    span, perms = line.split()[:2]\n"
        "    start, end = (int(a, 16) for a in span.split('-'))\n"
        "    if perms.startswith('rw') and end - start < 1 << 28:\n"
        "        try:\n            mem.seek(start)\n            data = mem.read(end - start)\n"
        "        except OSError:\n            continue\n"
        "        found.update(m.decode() for m in re.findall(rb'nonce.{1,8}?([0-9a-f]{16})', data))\n"
        "forge(found)"),
    "traceback through the guard": FORGE_FROM_FRAMES + (
        "found = set()\ntry:\n    import gc\n    gc.get_objects()\nexcept Exception as e:\n    tb = e.__traceback__\n"
        "    while tb is not None:\n        found |= candidates(tb.tb_frame)\n        tb = tb.tb_next\n"
        "forge(found)"),
    "spoofed completion event": FORGE_FROM_FRAMES + (
        "posix.write(3, b'{\"t\": \"test\", \"i\": 0, \"status\": \"ok\", \"error\": \"\"}\\n')\n"
        "sys.audit('codevalue.done')\nposix._exit(0)"),
}


@pytest.mark.parametrize("attack", list(FORGERIES.values()), ids=list(FORGERIES))
def test_humaneval_pass_cannot_be_forged_from_inside(box, attack):
    """A wrong program that digs the per-run nonce out of the harness and reports success before check()
    fails: the nonce is out of its reach, and only the harness frame can have "done" written."""
    got, result = timed_label(box, CHECK, attack)
    assert not got.passed and not result.completed, (got, result)


GIANT_EVENT = """
import os
os.write(3, b'{"t": "test", "i": 0, "status": "ok", "stdout": [' + b'{},' * 6_000_000 + b'{}]}\\n')
print(int(input()) ** 2)
"""


@pytest.mark.slow
def test_forged_giant_event_is_dropped_and_memory_stays_bounded():
    with solo_box() as solo:
        pid = solo._workers[0].proc.pid
        before = peak_rss_kb(pid)
        got, result = label(solo, STDIN_ONE, GIANT_EVENT, "lcb", timeout=3.0, deadline=5.0)
        grown_mb = (peak_rss_kb(pid) - before) / 1024
    assert got.verdict == "pass", (got, result)  # the forgery was dropped; the harness's own event counted
    assert grown_mb < 48, f"the worker grew by {grown_mb:.0f} MB on an 18 MB forged event"


NESTED_EVENT = """
import os
os.write(3, b'{"t": "x", "error": ' + b'[' * 400 + b']' * 400 + b'}\\n')
print(int(input()) ** 2)
"""


def test_nested_event_does_not_break_a_caller_deep_in_its_stack(box):
    """The labeller may be called from deep in a caller's stack (a framework, a recursive driver): no
    program may make parsing its events raise RecursionError there (the job would die, and resume would
    run the same program again forever)."""
    import sys

    def deep(n: int):
        return deep(n - 1) if n else label(box, STDIN_ONE, NESTED_EVENT, "lcb")

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1200)
    try:
        got, result = deep(900)
    finally:
        sys.setrecursionlimit(limit)
    assert (got.verdict, result.infra_error) == ("pass", ""), (got, result)


@pytest.mark.slow
def test_set_order_is_the_same_in_every_sandbox():
    """Labels must not depend on which worker (or node) ran a program: string hashing is seeded alike."""
    program = "print(list({'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta', 'iota'}))"
    seen = set()
    for _ in range(2):
        with Sandbox(SandboxConfig(workers=1)) as box:
            result = box.run(Job(program, "stdin", "script", inputs=[""]))
            seen.add(result.tests[0].stdout)
    assert len(seen) == 1 and None not in seen


# ---------------------------------------------------------------------------------------------------------
# Workers that die, runs that are interrupted

SQUARE = "print(int(input()) ** 2)"


@contextlib.contextmanager
def workers_killed_after_send(monkeypatch, sig: int = signal.SIGKILL) -> Iterator[dict]:
    """While active, each job handed to a worker is followed at once by SIGKILL (or `sig`) to that worker (as
    long as `kills["left"]` > 0): the worker dies (or, with SIGSTOP, hangs) mid-job, from outside, whatever
    the program does. `kills["pids"]`: the workers signalled."""
    import codevalue.sandbox as sandbox_mod

    kills = {"left": 0, "done": 0, "pids": []}
    real_send = sandbox_mod._Worker.send

    def send_then_kill(self, job_id, job, nonce, config):
        real_send(self, job_id, job, nonce, config)
        if kills["left"] > 0:
            kills["left"] -= 1
            kills["done"] += 1
            kills["pids"].append(self.proc.pid)
            os.kill(self.proc.pid, sig)

    monkeypatch.setattr(sandbox_mod._Worker, "send", send_then_kill)
    yield kills


def test_a_worker_that_dies_is_replaced_and_the_job_retried_once(monkeypatch):
    """One death: a new worker runs the program again and its real verdict comes back. Two deaths of the same
    job: an infra_error result, never a verdict about the program and never a third try. The sandbox keeps
    working afterwards."""
    with workers_killed_after_send(monkeypatch) as kills, solo_box() as solo:
        first = worker_pids(solo)
        kills["left"] = 1
        got, result = label(solo, STDIN_ONE, SQUARE, "lcb")
        assert (got.verdict, result.infra_error, kills["done"]) == ("pass", "", 1), (got, result)
        assert worker_pids(solo) != first  # replaced

        kills.update(left=3, done=0)  # every try of the next job loses its worker; a third try would pass
        got, result = label(solo, STDIN_ONE, SQUARE, "lcb")
        assert result.infra_error.startswith("sandbox worker died"), result
        assert (got.verdict, got.passed) == ("infra_error", False), got
        assert (kills["left"], kills["done"]) == (1, 2)  # two tries, no third

        kills["left"] = 0
        assert label(solo, STDIN, SQUARE, "lcb")[0].verdict == "pass"


@pytest.mark.slow  # waits out a stuck worker's deadline, twice
def test_a_stuck_worker_is_killed_replaced_and_the_job_retried_once(monkeypatch):
    """A worker that gives no result `stuck_seconds` after the job's wall deadline (here: stopped with SIGSTOP
    right after it was handed the job) is treated as one that died: killed, replaced, the job retried once,
    then infra_error. `map` never waits forever on it."""
    stuck = 1.0
    with (workers_killed_after_send(monkeypatch, signal.SIGSTOP) as stops,
          Sandbox(SandboxConfig(workers=1, uid_base=UID_BASE, stuck_seconds=stuck)) as solo):
        stops["left"] = 1
        start = time.monotonic()
        got, result = label(solo, STDIN_ONE, SQUARE, "lcb", deadline=KILL_DEADLINE)
        took = time.monotonic() - start
        assert (got.verdict, result.infra_error, stops["done"]) == ("pass", "", 1), (got, result)
        assert KILL_DEADLINE + stuck <= took < KILL_DEADLINE + stuck + SLACK, took  # waited for deadline + stuck
        assert stops["pids"][0] not in worker_pids(solo)
        assert not os.path.exists(f"/proc/{stops['pids'][0]}")  # killed and reaped, not left stopped

        stops.update(left=3, done=0)  # every try of the next job stops its worker: two tries, then infra_error
        got, result = label(solo, STDIN_ONE, SQUARE, "lcb", deadline=KILL_DEADLINE)
        assert result.infra_error.startswith("sandbox worker stuck: no result 1 s after"), result
        assert (got.verdict, stops["left"], stops["done"]) == ("infra_error", 1, 2), (got, stops)

        stops["left"] = 0
        assert label(solo, STDIN, SQUARE, "lcb")[0].verdict == "pass"


def test_a_worker_that_reads_no_job_is_replaced_before_the_job_starts():
    """A worker stopped while idle takes nothing from its pipe: a job bigger than the pipe's buffer (64 KiB)
    would block the sender forever. After `stuck_seconds` the worker is killed and a new one runs the job
    (it never started, so this is no retry); the caller gets the program's real result."""
    big = "# " + "x" * 300_000 + "\nprint(int(input()) ** 2)\n"
    with Sandbox(SandboxConfig(workers=1, uid_base=UID_BASE, stuck_seconds=1.0)) as solo:
        [stopped] = worker_pids(solo)
        os.kill(stopped, signal.SIGSTOP)
        result = solo.run(Job(big, "stdin", "script", inputs=["7"], timeout=10, deadline=20))
        assert (result.infra_error, result.tests[0].stdout) == ("", "49\n"), result
        assert worker_pids(solo) != [stopped]
        assert not os.path.exists(f"/proc/{stopped}")  # killed and reaped, not left stopped


def test_a_worker_that_never_starts_is_an_error_not_a_hang(monkeypatch):
    """A worker that never says hello (here: a process that only sleeps) fails the sandbox's start after
    `START_SECONDS` with a SandboxError, and is killed."""
    import codevalue.sandbox as sandbox_mod

    monkeypatch.setattr(sandbox_mod, "START_SECONDS", 0.5)
    monkeypatch.setattr(sandbox_mod._Worker, "command",
                        staticmethod(lambda slot, uid, config: [sys.executable, "-c", "import time; time.sleep(60)"]))
    started = []
    real_popen = sandbox_mod.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(sandbox_mod.subprocess, "Popen", popen)
    with pytest.raises(sandbox_mod.SandboxError, match="did not start within 0.5 s"):
        Sandbox(SandboxConfig(workers=1, uid_base=UID_BASE)).start()
    assert [p.poll() for p in started] == [-signal.SIGKILL]


@pytest.mark.slow
def test_a_sandbox_interrupted_mid_run_starts_afresh():
    """Ctrl-C while a program runs (KeyboardInterrupt raised inside `map`, here at the point where the caller
    holds the first result): every worker is stopped, no program of the sandbox survives, and the next run
    starts new workers whose results belong to the new jobs (not the abandoned program's)."""
    config = SandboxConfig(workers=2, uid_base=UID_BASE)
    sleeper = Job("import time\ntime.sleep(60)\nprint(1)", "stdin", "script", inputs=[""], timeout=90, deadline=90)
    quick = Job(SQUARE, "stdin", "script", inputs=["7"], timeout=10, deadline=20)
    with Sandbox(config) as sb:
        before, uids = worker_pids(sb), tuple(sb.isolation["uids"])
        results = sb.map([sleeper, quick])
        job, result = next(results)  # the quick one: the sleeper has 60 s to go
        assert (job, result.tests[0].stdout) == (quick, "49\n"), result
        with pytest.raises(KeyboardInterrupt):
            results.throw(KeyboardInterrupt)
        assert sb._workers == []  # stopped, not left half-used
        if IS_ROOT:  # the sleeper ran as a sandbox uid: its processes die with their worker (parent-death signal)
            deadline = time.monotonic() + 30  # the sleeper itself would live 60 s
            while processes_of(uids):
                assert time.monotonic() < deadline, f"still running: {processes_of(uids)}"
                time.sleep(0.01)
        for n in (3, 5):  # twice: both new workers serve, each with its own job's result
            again = sb.run(Job(SQUARE, "stdin", "script", inputs=[str(n)], timeout=10, deadline=20))
            assert (again.tests[0].stdout, again.completed, again.infra_error) == (f"{n * n}\n", True, ""), again
        assert set(worker_pids(sb)).isdisjoint(before)

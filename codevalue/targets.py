"""Per-prefix value targets: v(prefix) = E[pass | prefix], estimated from rollouts that share it.

    codevalue targets LABELED.jsonl --problems humaneval -o TARGETS.jsonl [--smooth 2]

For every labelled rollout, the target of a prefix of its completion is the mean pass label of all
rollouts of the same problem whose completion starts with that same text (the paper's Monte-Carlo
estimate). Sharing is decided on characters, so targets do not depend on any tokenizer: each rollout
gets a step function over prefix lengths, stored as `value_targets = {"ends": [...], "values": [...]}`,
meaning prefixes of length in (ends[k-1], ends[k]] have value values[k]. The last segment ends at the
completion's length and its value is the rollout's own label.

Worked example (doctest): three rollouts of one problem, two sharing their first line.

>>> t = prefix_value_targets(["x = 1\\nreturn x", "x = 1\\nreturn 2", "pass"], [True, False, False])
>>> t[0].ends, t[0].values          # 'x = 1\\nreturn ' is shared by rollouts 0 and 1, then 0 is alone
([13, 14], [0.5, 1.0])
>>> t[2].ends, t[2].values          # no other rollout starts with 'p'
([4], [0.0])
>>> t[0].at(5), t[0].at(14)         # value after 'x = 1' and after the whole program
(0.5, 1.0)

With `smooth=a`, a prefix seen by k rollouts with mean m gets (k*m + a*p) / (k + a), p being the
problem's pass rate: a Beta prior that keeps rare prefixes (k = 1 included) from claiming certainty. The
finished program keeps its own label.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError
from .jsonl import read_jsonl, write_jsonl
from .problems import Problem, load_problems
from .rollouts import evaluated_completion

# Classes of the optional auxiliary head ("what will the checker say?"); memory errors count as runtime.
FAILURE_CLASSES = ("pass", "wrong_answer", "runtime_error", "timeout", "syntax_error")
_CLASS_OF = {c: i for i, c in enumerate(FAILURE_CLASSES)} | {"memory_exceeded": 2}


@dataclass
class ValueTargets:
    ends: list[int]
    values: list[float]

    def at(self, prefix_length: int) -> float:
        """Value of the prefix with `prefix_length` characters (clamped to the completion)."""
        k = bisect.bisect_left(self.ends, prefix_length)
        return self.values[min(k, len(self.values) - 1)]

    def to_dict(self) -> dict[str, list]:
        return {"ends": self.ends, "values": self.values}


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on slice equality: C-speed comparisons, log(n) of them
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def prefix_value_targets(completions: list[str], passed: list[bool],
                         smooth: float = 0.0) -> list[ValueTargets]:
    """Targets for all rollouts of ONE problem (see the module docstring)."""
    labels = np.asarray(passed, dtype=np.float64)
    prior = float(labels.mean()) if len(labels) else 0.0
    out = []
    for i, text in enumerate(completions):
        n = len(text)
        lcp = np.array([n if j == i else _common_prefix_length(text, other)
                        for j, other in enumerate(completions)])
        # A prefix of length L is shared by the rollouts with lcp >= L. The group only shrinks at the
        # distinct lcp values, so those are the segment ends. The whole completion carries the rollout's
        # own label; its proper prefixes keep the group value in a segment of their own when that value can
        # differ: other rollouts share all of it (duplicates, longer continuations), or smoothing pulls even
        # a prefix that no other rollout shares toward the pass rate.
        own_segment = n > 1 and (bool(smooth) or int((lcp >= n).sum()) > 1)
        ends = sorted({int(x) for x in lcp if 0 < x < n} | {n} | ({n - 1} if own_segment else set())) if n else [0]
        values = []
        for end in ends:
            group = labels[lcp >= end]
            k, mean = len(group), float(group.mean())
            values.append((k * mean + smooth * prior) / (k + smooth) if smooth else mean)
        values[-1] = float(labels[i])  # the finished program: its own label
        out.append(ValueTargets(ends, [round(v, 6) for v in values]))
    return out


def failure_class(verdict: str) -> int | None:
    """Index into FAILURE_CLASSES; None for verdicts that say nothing about the program (infra_error)."""
    return _CLASS_OF.get(verdict)


def build_targets(labeled: str | os.PathLike, problems: str | os.PathLike | list[Problem],
                  out: str | os.PathLike, smooth: float = 0.0) -> dict[str, Any]:
    """Read `codevalue label` output, write it back with `prompt`, `value_targets`, `label_class` and
    `problem_pass_rate` (over all of the problem's labelled rollouts; `train --center-targets` uses it).

    `prompt` is the text the generator was given: the rollout's own `prompt` field (written by
    `codevalue generate`) when present, else the problem's prompt.

    Rollouts labelled infra_error are dropped (their label says nothing about the program).
    """
    if not isinstance(problems, list):
        problems = load_problems(problems)
    prompts = {p.problem_id: p.model_prompt for p in problems}
    groups: dict[str, list[dict]] = defaultdict(list)
    seen: dict[tuple[str, str], int] = {}
    dropped = 0
    for line, rec in read_jsonl(labeled):
        for name in ("problem_id", "completion", "passed", "verdict"):
            if name not in rec:
                raise DataError(labeled, "missing field (is this `codevalue label` output?)", line=line,
                                field=name)
        pid = str(rec["problem_id"])
        if pid not in prompts:
            raise DataError(labeled, f"unknown problem {pid!r}", line=line, field="problem_id")
        if "rollout_id" in rec:  # the same rollout twice would weigh twice in its prefixes' values
            key = (pid, str(rec["rollout_id"]))
            if key in seen:
                raise DataError(labeled, f"duplicate rollout_id {key[1]!r} of problem {pid!r} (first on record "
                                f"{seen[key]})", line=line, field="rollout_id")
            seen[key] = line
        if rec["verdict"] == "infra_error":
            dropped += 1
            continue
        if failure_class(rec["verdict"]) is None:
            raise DataError(labeled, f"unknown verdict {rec['verdict']!r}", line=line, field="verdict")
        groups[pid].append(rec)
    records = []
    for pid, recs in groups.items():
        texts = [evaluated_completion(r) for r in recs]
        passed = [bool(r["passed"]) for r in recs]
        targets = prefix_value_targets(texts, passed, smooth=smooth)
        rate = round(sum(passed) / len(passed), 6)
        for rec, text, tgt in zip(recs, texts, targets, strict=True):
            records.append({**rec, "prompt": rec.get("prompt") or prompts[pid], "completion_scored": text,
                            "value_targets": tgt.to_dict(), "label_class": failure_class(rec["verdict"]),
                            "problem_pass_rate": rate})
    write_jsonl(out, records)
    return {"rollouts": len(records), "problems": len(groups), "dropped_infra_error": dropped,
            "smooth": smooth}

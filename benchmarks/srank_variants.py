"""Where does our SRank (`codevalue codet --method srank`) stand against the published number? Each line
departs from the authors' method in one choice and reports reranked pass@1 with its 95% interval.

    .venv/bin/python benchmarks/srank_variants.py runs/demo/checked.jsonl

Each line also gives the paired bootstrap of (variant - as published) over problems
(`evaluate.paired_comparison`: the same rollouts, the same problem resamples for both).
Diagnostics only: the variants are not methods of `codevalue codet`; "as published" reproduces
`checks.srank_scores` exactly. The checked file must record `written` (how many test samples wrote each
assert, `codevalue checks` since it weighs SRank's pass rate; rerunning `checks` on an older output adds it
without running anything).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from codevalue.checks import FAILED, NONE_VALUE, _assert_columns, _call_columns
from codevalue.evaluate import ProblemScores, best_of_n, bootstrap_ci, paired_comparison
from codevalue.jsonl import read_jsonl
from codevalue.rollouts import evaluated_completion

VARIANTS = {
    "as published": {},
    "cluster size counts rollouts, duplicates included": {"distinct_size": False},
    "no validity filter": {"validity": False},
    "per assert instead of per distinct input": {"per_input": False},
    "errors and time-outs as distinct results": {"one_failure": False},
    "feature = pass rate only (no cluster size)": {"size_power": 0},
    "feature = cluster size only (no pass rate)": {"pass_power": 0},
    # the authors' execution/run.py appends every sample's test cases without dedupe, so an assert written by
    # k test samples counts k times in a cluster's pass rate (as `srank_scores` does); our first version
    # counted each distinct assert once
    "pass rate counts each distinct assert once": {"weighted": False},
}


def variant_scores(checks: list[dict], texts: list[str], distinct_size: bool = True, validity: bool = True,
                   per_input: bool = True, one_failure: bool = True, size_power: int = 1,
                   pass_power: int = 1, weights: list[int] | None = None) -> np.ndarray:
    """`checks.srank_scores` (unnormalised) with one of its choices switched. weights: per test column, how
    many times the test samples wrote it; the pass rate is then the weighted share of asserts passed."""
    n = len(checks[0]["outputs"])
    columns = (_call_columns(checks) if per_input
               else [j for j in range(n) if any(c["outputs"][j] not in ("-", *FAILED) for c in checks)])
    asserts = _assert_columns(checks)
    results = [tuple("F" if one_failure and c["outputs"][j] in FAILED else c["outputs"][j] for j in columns)
               for c in checks]
    fails = ("F", *FAILED)

    def is_valid(res: tuple) -> bool:
        if not columns:
            return False
        constant = len(res) > 1 and len({"N" if r in (*fails, NONE_VALUE) else r for r in res}) == 1
        return not validity or (any(r not in fails for r in res) and not constant)

    valid = [is_valid(res) for res in results]
    clusters: dict[tuple, int] = {}
    for res, ok in zip(results, valid, strict=True):
        if ok:
            clusters.setdefault(res, len(clusters))
    if not clusters:
        return np.zeros(len(checks))
    members: dict[int, set[str]] = defaultdict(set)
    rollouts, passed = np.zeros(len(clusters)), np.zeros(len(clusters))
    for c, res, ok, text in zip(checks, results, valid, texts, strict=True):
        if ok:
            k = clusters[res]
            members[k].add(text)
            rollouts[k] += 1
            if weights is None:
                passed[k] = sum(c["passed"][j] == "1" for j in asserts) / len(asserts) if asserts else 0.0
            else:
                total = sum(weights[j] for j in asserts)
                passed[k] = sum(weights[j] for j in asserts if c["passed"][j] == "1") / total if total else 0.0
    seen: set[str] = set()
    size = np.zeros(len(clusters))
    for k in range(len(clusters)):
        size[k] = len(members[k] - seen)
        seen |= members[k]
    if not distinct_size:
        size = rollouts
    codes = dict.fromkeys(fails, -1)
    table = np.array([[codes.setdefault(r, len(codes)) for r in res] for res in clusters])
    same = (table[:, None, :] == table[None, :, :]) & (table >= 0)[:, None, :]
    interaction = same.mean(axis=2)
    np.fill_diagonal(interaction, 1.0)
    score = interaction @ ((size / size.sum()) ** size_power * passed ** pass_power)
    return np.array([score[clusters[res]] if ok else 0.0 for res, ok in zip(results, valid, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checked", help="`codevalue checks` output")
    args = parser.parse_args()
    groups: dict[str, list[dict]] = defaultdict(list)
    for _, rec in read_jsonl(args.checked):
        groups[str(rec["problem_id"])].append(rec)
    if any("written" not in rows[0]["checks"] for rows in groups.values()):
        raise SystemExit(f"{args.checked}: no `written` in its checks; rerun `codevalue checks` with the same "
                         "arguments to add it (nothing runs again)")
    reference = None
    print(f"{'':<60}{'pass@1':>6}   95% CI          minus as published [paired 95% CI]")
    for name, switches in VARIANTS.items():
        switches = dict(switches)
        weighted = switches.pop("weighted", True)
        scores = [ProblemScores(pid, variant_scores([r["checks"] for r in rows],
                                                    [evaluated_completion(r) for r in rows],
                                                    weights=rows[0]["checks"]["written"] if weighted else None,
                                                    **switches),
                                np.array([bool(r["passed"]) for r in rows]))
                  for pid, rows in groups.items()]
        per_problem = np.array([best_of_n(p.values, p.passed, len(p.values)) for p in scores])
        lo, hi = bootstrap_ci(per_problem)
        line = f"{name:<60}{100 * per_problem.mean():6.1f}   [{100 * lo:.1f}, {100 * hi:.1f}]"
        if reference is None:
            reference = scores
        else:
            d = paired_comparison(reference, scores)["difference_pass@1"]
            line += f"    {d['mean']:+.1f} [{d['ci_low']:.1f}, {d['ci_high']:.1f}]"
        print(line)


if __name__ == "__main__":
    main()

"""Measure a critic the way the paper does: best-of-N selection, calibration, and the process reward.

    codevalue evaluate SCORES.jsonl [MORE.jsonl ...] [--names a b] -o REPORT_DIR

Input: `codevalue score --per-token` output (problem_id, passed, value, token_values), one file per
model. Output: REPORT_DIR/metrics.json, report.md and PNG plots. Every headline number comes with a
95% bootstrap interval over problems, beside random choice (the exact expectation: the mean pass rate)
and the oracle (some rollout passes). Report critics only on problems they never trained on
(`codevalue crossval` does that).

Scores may be any real numbers: selection and AUROC use only their order; calibration is computed only
for a critic whose values all lie in [0, 1]. Several files are measured on the rollouts they all scored
(paired by problem_id and rollout_id), and every critic after the first is compared with the first:
the per-problem difference in reranked pass@1, bootstrapped over the same problem resamples.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .jsonl import read_jsonl

FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))


@dataclass
class ProblemScores:
    problem_id: str
    values: np.ndarray  # final value per rollout
    passed: np.ndarray  # bool per rollout
    token_values: list[list[float]] | None = None
    first_index: int | None = None  # rollout with sample_index 0, when known
    logprob: np.ndarray | None = None  # generator's mean log-probability, when recorded
    difficulty: str = ""


def _check_number(path: str | os.PathLike, line: int, value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(path, f"expected a finite number, got {json.dumps(value)[:40]}", line=line, field=field)
    return float(value)


def read_scores(path: str | os.PathLike, need_ids: bool = False) -> dict[Hashable, tuple[int, dict]]:
    """(line, record) of every scored rollout, keyed by (problem_id, rollout_id), checked field by field so that
    bad input stops here with its file, record and field named. The same rollout twice would count twice: refused.
    Without rollout_id the line is the key, unless `need_ids` (several files are paired by rollout)."""
    records: dict[Hashable, tuple[int, dict]] = {}
    for line, rec in read_jsonl(path):
        for name in ("problem_id", "passed", "value"):
            if name not in rec:
                raise DataError(path, "missing field (expected `codevalue score` output)", line=line, field=name)
        if rec["passed"] not in (True, False):
            raise DataError(path, f"expected true or false, got {json.dumps(rec['passed'])[:40]}", line=line,
                            field="passed")
        _check_number(path, line, rec["value"], "value")
        if "mean_logprob" in rec:
            _check_number(path, line, rec["mean_logprob"], "mean_logprob")
        if "token_values" in rec:
            tv = np.asarray(rec["token_values"])  # None or a string makes an object or str array
            if not isinstance(rec["token_values"], list) or tv.ndim != 1 or tv.dtype.kind not in "if" \
                    or not np.isfinite(tv).all():
                raise DataError(path, "expected a list of finite numbers", line=line, field="token_values")
        if "rollout_id" in rec:
            key: Hashable = (str(rec["problem_id"]), str(rec["rollout_id"]))
            if key in records:
                raise DataError(path, f"duplicate rollout_id {key[1]!r} of problem {key[0]!r} (first on record "
                                f"{records[key][0]})", line=line, field="rollout_id")
        elif need_ids:
            raise DataError(path, "missing field (several score files are paired by problem_id and rollout_id)",
                            line=line, field="rollout_id")
        else:
            key = line
        records[key] = (line, rec)
    if not records:
        raise DataError(path, "no scored rollouts")
    return records


def group_problems(rows: list[tuple[int, dict]], difficulty: dict[str, str] | None = None) -> list[ProblemScores]:
    """Checked (line, record) rows -> one ProblemScores per problem, in order of first appearance."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for _, rec in rows:
        groups[str(rec["problem_id"])].append(rec)
    out = []
    for pid, recs in groups.items():
        tv = [r["token_values"] for r in recs] if all("token_values" in r for r in recs) else None
        first = next((i for i, r in enumerate(recs) if r.get("sample_index") == 0), None)
        lp = np.array([float(r["mean_logprob"]) for r in recs]) if all("mean_logprob" in r for r in recs) else None
        out.append(ProblemScores(pid, np.array([float(r["value"]) for r in recs]),
                                 np.array([bool(r["passed"]) for r in recs]), tv, first, lp,
                                 (difficulty or {}).get(pid, str(recs[0].get("difficulty", "")))))
    return out


def load_scores(path: str | os.PathLike, difficulty: dict[str, str] | None = None) -> list[ProblemScores]:
    return group_problems(list(read_scores(path).values()), difficulty)


def _plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def share_rollouts(paths: list[str | os.PathLike], tables: list[dict[Hashable, tuple[int, dict]]]
                   ) -> tuple[list[list[tuple[int, dict]]], list[dict[str, Any]]]:
    """Keep the rollouts that every file scored, in the first file's order, so that all critics, random choice
    and the oracle are measured on one set. Returns each file's kept rows and what each file lost."""
    keys = [k for k in tables[0] if all(k in t for t in tables[1:])]
    if not keys:
        sizes = "; ".join(f"{p}: {_plural(len(t), 'rollout')}" for p, t in zip(paths, tables, strict=True))
        raise DataError(paths[0], f"no rollout is in every score file ({sizes}); are they scores of the same "
                        "rollouts?")
    for path, table in zip(paths[1:], tables[1:], strict=True):
        for k in keys:
            (line, rec), (first_line, ref) = table[k], tables[0][k]
            if bool(rec["passed"]) != bool(ref["passed"]):
                here, there = ("passed", "failed") if rec["passed"] else ("failed", "passed")
                raise DataError(path, f"rollout {k[1]!r} of problem {k[0]!r} {here} here but {there} in {paths[0]} "
                                f"(record {first_line}); labelled against other tests?", line=line, field="passed")
    shared_problems = {str(tables[0][k][1]["problem_id"]) for k in keys}
    lost = [{"file": str(path), "problems_dropped": len({str(r["problem_id"]) for _, r in table.values()}
                                                         - shared_problems),
             "rollouts_dropped": len(table) - len(keys)} for path, table in zip(paths, tables, strict=True)]
    return [[t[k] for k in keys] for t in tables], lost


# ------------------------------------------------------------------------------------------------- metrics


def tie_averaged_order(values: np.ndarray, passed: np.ndarray) -> np.ndarray:
    """Pass labels sorted by value (best first), each replaced by the mean of its tie group: the
    expectation under random tie-breaking."""
    order = np.argsort(-values, kind="stable")
    v, y = values[order], passed[order].astype(float)
    if len(v) == 0:
        return y
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])  # first index of each tie group
    counts = np.diff(np.r_[starts, len(v)])
    return np.repeat(np.add.reduceat(y, starts) / counts, counts)


def best_of_n(values: np.ndarray, passed: np.ndarray, n: int) -> float:
    """Exact expected pass of the top-scored rollout among a uniformly random n-subset.

    The rollout at rank i (0 = best) is the subset's top with probability C(N-1-i, n-1) / C(N, n).
    n = N is reranking all rollouts; n = 1 is random choice.
    """
    y = tie_averaged_order(values, passed)
    N = len(y)
    n = min(n, N)
    if n == N:
        return float(y[0])
    weights = np.array([math.comb(N - 1 - i, n - 1) for i in range(N)], dtype=float) / math.comb(N, n)
    return float(weights @ y)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10):
    """ECE with equal-width bins, and the per-bin (mean confidence, accuracy, count) for a diagram."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, acc = float(probs[sel].mean()), float(labels[sel].mean())
            ece += sel.mean() * abs(conf - acc)
            table.append((conf, acc, int(sel.sum())))
    return float(ece), table


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(labels) == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def auroc_by_ranks(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC as the Mann-Whitney statistic from average ranks (ties count 1/2), None without both classes.
    The same number as sklearn's roc_auc_score, without its milliseconds of input checks per call, which per
    problem and per token fraction add up to minutes on APPS."""
    from scipy.stats import rankdata

    pos = labels.astype(bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    return float((rankdata(scores)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@lru_cache(maxsize=2)
def _resamples(n_items: int, n: int, seed: int) -> np.ndarray:
    """Bootstrap indices, one row per resample. Every interval over the same problems uses these same rows,
    so intervals of two critics, and of their difference, come from the same resamples."""
    idx = np.random.default_rng(seed).integers(0, n_items, size=(n, n_items))
    idx.flags.writeable = False
    return idx


def bootstrap_ci(per_problem: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over problems, resampling problems."""
    means = per_problem[_resamples(len(per_problem), n, seed)].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _value_at_fraction(token_values: list[float], f: float) -> float:
    if not token_values:
        return float("nan")
    return token_values[max(0, math.ceil(f * len(token_values)) - 1)]


def _with_ci(per_problem: np.ndarray, seed: int = 0) -> dict[str, float]:
    lo, hi = bootstrap_ci(per_problem, seed=seed)
    return {"mean": 100 * float(per_problem.mean()), "ci_low": 100 * lo, "ci_high": 100 * hi}


def _reranked(problems: list[ProblemScores]) -> np.ndarray:
    """Per problem, the expected pass of the top-valued rollout (ties broken at random)."""
    return np.array([best_of_n(p.values, p.passed, len(p.values)) for p in problems])


def _per_problem_auroc(values: list[np.ndarray], problems: list[ProblemScores], seed: int) -> dict[str, Any]:
    """Mean AUROC over the problems that have both a pass and a fail, with its bootstrap interval."""
    aucs = []
    for v, p in zip(values, problems, strict=True):
        ok = ~np.isnan(v)
        if (a := auroc_by_ranks(v[ok], p.passed[ok])) is not None:
            aucs.append(a)
    out: dict[str, Any] = {"auroc_mean_per_problem": float(np.mean(aucs)) if aucs else None,
                           "auroc_problems": len(aucs)}
    if aucs:
        out["auroc_mean_per_problem_ci"] = list(bootstrap_ci(np.array(aucs), seed=seed))
    return out


def evaluate_problems(problems: list[ProblemScores], seed: int = 0) -> dict[str, Any]:
    """All metrics for one critic; percentages for selection metrics, raw for AUROC/Brier/ECE.

    Selection and AUROC use only the order of the values, so any real-valued score works (a mean
    log-probability, a count); calibration (Brier, log-loss, ECE, reliability) needs probabilities and is
    None unless every value lies in [0, 1]."""
    from sklearn.metrics import brier_score_loss, log_loss

    reranked = _reranked(problems)
    random = np.array([p.passed.mean() for p in problems])
    oracle = np.array([float(p.passed.any()) for p in problems])
    values = np.concatenate([p.values for p in problems])
    labels = np.concatenate([p.passed for p in problems]).astype(float)
    out: dict[str, Any] = {
        "problems": len(problems),
        "rollouts": int(sum(len(p.values) for p in problems)),
        "degenerate": ("every rollout fails" if labels.max() == 0 else
                       "every rollout passes" if labels.min() == 1 else None),
        "reranked_pass@1": _with_ci(reranked, seed),
        "random_pass@1": _with_ci(random, seed),
        "oracle_pass@1": _with_ci(oracle, seed),
        "improvement_over_random": _with_ci(reranked - random, seed),
    }
    out["relative_improvement_%"] = (100 * (reranked.mean() - random.mean()) / random.mean()
                                     if random.mean() > 0 else None)
    if all(p.first_index is not None for p in problems):
        out["first_sample_pass@1"] = _with_ci(np.array([p.passed[p.first_index] for p in problems]), seed)
    if all(p.logprob is not None for p in problems):
        out["mean_logprob_pass@1"] = _with_ci(np.array([best_of_n(p.logprob, p.passed, len(p.values))
                                                        for p in problems]), seed)
    n_max = min(len(p.values) for p in problems)
    ns = [n for n in (2**k for k in range(12)) if n <= n_max] + ([n_max] if n_max & (n_max - 1) else [])
    out["best_of_n"] = {str(n): 100 * float(np.mean([best_of_n(p.values, p.passed, n) for p in problems]))
                        for n in ns}

    out["auroc_pooled"] = _auroc(values, labels)
    out |= _per_problem_auroc([p.values for p in problems], problems, seed)
    out["score_range"] = [float(values.min()), float(values.max())]
    out["scores_in_unit_interval"] = in_unit = bool(values.min() >= 0 and values.max() <= 1)
    out["brier"] = float(brier_score_loss(labels, values)) if in_unit else None
    out["log_loss"] = float(log_loss(labels, np.clip(values, 1e-7, 1 - 1e-7), labels=[0, 1])) if in_unit else None
    out["ece"], out["reliability"] = expected_calibration_error(values, labels) if in_unit else (None, None)

    if all(p.token_values is not None for p in problems):
        prm = {}
        for f in FRACTIONS:
            partial = [np.array([_value_at_fraction(tv, f) for tv in p.token_values]) for p in problems]
            # an empty completion has no prefix value: it ranks last
            sel = np.array([best_of_n(np.nan_to_num(v, nan=-np.inf), p.passed, len(v))
                            for v, p in zip(partial, problems, strict=True)])
            pooled = np.concatenate(partial)
            ok = ~np.isnan(pooled)
            prm[str(f)] = {"reranked_pass@1": _with_ci(sel, seed), "auroc_pooled": _auroc(pooled[ok], labels[ok]),
                           **_per_problem_auroc(partial, problems, seed)}
        out["process_reward"] = prm
        better = [f for f in FRACTIONS
                  if prm[str(f)]["reranked_pass@1"]["mean"] > out["random_pass@1"]["mean"]]
        out["prm_beats_random_from_fraction"] = better[0] if better else None

    by_diff: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        if p.difficulty:
            by_diff[p.difficulty].append(i)
    if len(by_diff) > 1 or (by_diff and "" not in by_diff):
        out["by_difficulty"] = {d: {"problems": len(ix), "reranked_pass@1": 100 * float(reranked[ix].mean()),
                                    "random_pass@1": 100 * float(random[ix].mean())}
                                for d, ix in sorted(by_diff.items())}
    return out


def paired_comparison(first: list[ProblemScores], other: list[ProblemScores], seed: int = 0) -> dict[str, Any]:
    """`other` against `first` on the same rollouts: the difference in reranked pass@1 per problem, its mean with
    a paired bootstrap interval (the same problem resamples for both critics, i.e. resampling the per-problem
    differences), and the share of problems where `other`'s pick passes more often, as often, less often."""
    if [p.problem_id for p in first] != [p.problem_id for p in other] or \
            any(not np.array_equal(a.passed, b.passed) for a, b in zip(first, other, strict=True)):
        raise ValueError("paired_comparison needs the same rollouts in the same order (see share_rollouts)")
    diff = _reranked(other) - _reranked(first)
    tol = 1e-12  # the picks' expected passes are exact fractions; float noise is not a win
    return {"problems": len(diff), "difference_pass@1": _with_ci(diff, seed),
            "wins": float(np.mean(diff > tol)), "ties": float(np.mean(np.abs(diff) <= tol)),
            "losses": float(np.mean(diff < -tol))}


# -------------------------------------------------------------------------------------------------- report


def _fmt(m: dict[str, float], sign: str = "") -> str:
    return f"{m['mean']:{sign}.1f} [{m['ci_low']:.1f}, {m['ci_high']:.1f}]"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _auc_ci(m: dict[str, Any]) -> str:
    if m["auroc_mean_per_problem"] is None:
        return "-"
    lo, hi = m["auroc_mean_per_problem_ci"]
    return f"{m['auroc_mean_per_problem']:.3f} [{lo:.3f}, {hi:.3f}]"


def write_report(results: dict[str, dict[str, Any]], out_dir: str | os.PathLike,
                 published: dict[str, float] | None = None) -> Path:
    """metrics.json, report.md and plots for one or several critics evaluated on the same rollouts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    first_name, first = next(iter(results.items()))
    every = " scored by every critic" if len(results) > 1 else ""
    lines = [f"# Critic report\n\n{first['problems']} problems, {first['rollouts']} rollouts{every}. "
             "Selection numbers are pass@1 in % with 95% bootstrap intervals over problems."]
    lost = [f"{name}: {_plural(m['input']['problems_dropped'], 'problem')}, "
            f"{_plural(m['input']['rollouts_dropped'], 'rollout')} dropped"
            for name, m in results.items() if m.get("input", {}).get("rollouts_dropped")]
    if lost:
        lines.append(f"Only rollouts that every file scored count ({'; '.join(lost)}).")
    if first["degenerate"]:
        lines.append(f"{first['degenerate'].capitalize()}: AUROC is undefined and no critic can do better or worse "
                     "than random choice.")
    lines += ["", "| critic | reranked pass@1 | vs random (abs) | rel. % | pooled AUROC | mean per-problem AUROC "
              "| Brier | ECE |", "|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        rel = "-" if m["relative_improvement_%"] is None else f"{m['relative_improvement_%']:+.1f}"
        lines.append(f"| {name} | {_fmt(m['reranked_pass@1'])} | {_fmt(m['improvement_over_random'])} | {rel} | "
                     f"{_num(m['auroc_pooled'])} | {_num(m['auroc_mean_per_problem'])} | {_num(m['brier'])} | "
                     f"{_num(m['ece'])} |")
    raw = [f"{name} (scores in [{m['score_range'][0]:.3g}, {m['score_range'][1]:.3g}])"
           for name, m in results.items() if not m["scores_in_unit_interval"]]
    if raw:
        lines.append(f"\nBrier and ECE only for scores in [0, 1]: not for {', '.join(raw)}; their selection and "
                     "AUROC use only the order of the scores.")
    lines += ["", "| baseline | pass@1 |", "|---|---|",
              f"| random choice (exact expectation) | {_fmt(first['random_pass@1'])} |",
              f"| oracle (some rollout passes) | {_fmt(first['oracle_pass@1'])} |"]
    if "first_sample_pass@1" in first:
        lines.append(f"| first sample | {_fmt(first['first_sample_pass@1'])} |")
    if "mean_logprob_pass@1" in first:
        lines.append(f"| generator mean log-probability | {_fmt(first['mean_logprob_pass@1'])} |")
    for name, value in (published or {}).items():
        lines.append(f"| {name} (published) | {value:.1f} |")
    pairs = {name: m["paired_vs_first"] for name, m in results.items() if "paired_vs_first" in m}
    if pairs:
        lines += ["", f"## Paired comparison with {first_name}", "",
                  f"Difference in reranked pass@1 (critic minus {first_name}, in points) with a paired bootstrap 95% "
                  "interval: the same problems and the same resamples for both critics. Wins / ties / losses: share "
                  f"of problems where the critic's pick passes more often / as often / less often than {first_name}'s "
                  "(in expectation over tied scores).", "",
                  "| critic | difference in reranked pass@1 | wins | ties | losses |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(c['difference_pass@1'], '+')} | {c['wins']:.0%} | {c['ties']:.0%} | "
                  f"{c['losses']:.0%} |" for name, c in pairs.items()]
    for name, m in results.items():
        if "process_reward" in m:
            lines += ["", f"## Process reward: {name}", "",
                      "| fraction of tokens | reranked pass@1 | pooled AUROC | mean per-problem AUROC |",
                      "|---|---|---|---|"]
            lines += [f"| {f} | {_fmt(r['reranked_pass@1'])} | {_num(r['auroc_pooled'])} | {_auc_ci(r)} |"
                      for f, r in m["process_reward"].items()]
            cross = m.get("prm_beats_random_from_fraction")
            lines.append(f"\nPartial-program selection beats random from {cross:.0%} of the tokens on."
                         if cross else "\nPartial-program selection never beats random choice.")
        if "by_difficulty" in m:
            lines += ["", f"## By difficulty: {name}", "", "| difficulty | problems | reranked | random |",
                      "|---|---|---|---|"]
            lines += [f"| {d} | {r['problems']} | {r['reranked_pass@1']:.1f} | {r['random_pass@1']:.1f} |"
                      for d, r in m["by_difficulty"].items()]
    lines += ["", "![best-of-n](best_of_n.png)"]
    if any(m["reliability"] is not None for m in results.values()):
        lines.append("![calibration](reliability.png)")
    if any("process_reward" in m for m in results.values()):
        lines.append("![process reward](process_reward.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(results, out)
    return out


def _plots(results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, m in results.items():
        ns = [int(n) for n in m["best_of_n"]]
        ax.plot(ns, list(m["best_of_n"].values()), marker="o", label=name)
    first = next(iter(results.values()))
    ax.axhline(first["random_pass@1"]["mean"], color="gray", ls="--", label="random")
    ax.axhline(first["oracle_pass@1"]["mean"], color="gray", ls=":", label="oracle")
    ax.set(xscale="log", xlabel="n rollouts to choose from", ylabel="pass@1 of the pick (%)", title="Best-of-n")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "best_of_n.png", dpi=120)
    plt.close(fig)

    calibrated = {n: m for n, m in results.items() if m["reliability"] is not None}  # scores in [0, 1]
    if calibrated:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], color="gray", ls="--")
        for name, m in calibrated.items():
            conf, acc, _ = zip(*m["reliability"], strict=True) if m["reliability"] else ([], [], [])
            ax.plot(conf, acc, marker="o", label=f"{name} (ECE {m['ece']:.3f})")
        ax.set(xlabel="predicted value", ylabel="observed pass rate", title="Reliability")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "reliability.png", dpi=120)
        plt.close(fig)

    with_prm = {n: m for n, m in results.items() if "process_reward" in m}
    if with_prm:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        for name, m in with_prm.items():
            fs = [float(f) for f in m["process_reward"]]
            sel = [r["reranked_pass@1"] for r in m["process_reward"].values()]
            line, = a1.plot(fs, [r["mean"] for r in sel], marker="o", label=name)
            a1.fill_between(fs, [r["ci_low"] for r in sel], [r["ci_high"] for r in sel], color=line.get_color(),
                            alpha=0.15)
            a2.plot(fs, [r["auroc_pooled"] or float("nan") for r in m["process_reward"].values()], marker="o",
                    label=name)
        a1.axhline(first["random_pass@1"]["mean"], color="gray", ls="--", label="random")
        a1.set(xlabel="fraction of tokens read", ylabel="reranked pass@1 (%)", title="Selection from prefixes")
        a2.axhline(0.5, color="gray", ls="--")
        a2.set(xlabel="fraction of tokens read", ylabel="pooled AUROC", title="Discrimination from prefixes")
        a1.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "process_reward.png", dpi=120)
        plt.close(fig)


def evaluate_files(paths: list[str | os.PathLike], out_dir: str | os.PathLike, names: list[str] | None = None,
                   published: dict[str, float] | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Evaluate each score file as a critic on the rollouts all files share, compare each with the first,
    write the report. Returns {critic name: metrics}, as in metrics.json."""
    names = names or [Path(p).stem for p in paths]
    if len(names) != len(paths):
        raise DataError(out_dir, f"{len(names)} names for {len(paths)} score files")
    if len(set(names)) != len(names):
        raise DataError(out_dir, f"critic names must differ, got {names}; name them with --names")
    rows, lost = share_rollouts(paths, [read_scores(p, need_ids=len(paths) > 1) for p in paths])
    problems = [group_problems(r) for r in rows]
    results = {name: evaluate_problems(ps, seed) | {"input": info}
               for name, ps, info in zip(names, problems, lost, strict=True)}
    for name, ps in zip(names[1:], problems[1:], strict=True):
        results[name]["paired_vs_first"] = {"against": names[0]} | paired_comparison(problems[0], ps, seed)
    write_report(results, out_dir, published)
    return results

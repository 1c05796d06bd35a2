"""Measure a critic the way the paper does: best-of-N selection, calibration, and the process reward.

    codevalue evaluate SCORES.jsonl [MORE.jsonl ...] [--names a b] -o REPORT_DIR

Input: `codevalue score --per-token` output (problem_id, passed, value, token_values), one file per
model. Output: REPORT_DIR/metrics.json, report.md and PNG plots. Every headline number comes with a
95% bootstrap interval over problems, beside random choice (the exact expectation: the mean pass rate)
and the oracle (some rollout passes). Report critics only on problems they never trained on
(`codevalue crossval` does that).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
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


def load_scores(path: str | os.PathLike, difficulty: dict[str, str] | None = None) -> list[ProblemScores]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for line, rec in read_jsonl(path):
        for name in ("problem_id", "passed", "value"):
            if name not in rec:
                raise DataError(path, "missing field (expected `codevalue score` output)", line=line, field=name)
        groups[str(rec["problem_id"])].append(rec)
    if not groups:
        raise DataError(path, "no scored rollouts")
    out = []
    for pid, recs in groups.items():
        tv = [r["token_values"] for r in recs] if all("token_values" in r for r in recs) else None
        first = next((i for i, r in enumerate(recs) if r.get("sample_index") == 0), None)
        lp = np.array([r["mean_logprob"] for r in recs]) if all("mean_logprob" in r for r in recs) else None
        out.append(ProblemScores(pid, np.array([float(r["value"]) for r in recs]),
                                 np.array([bool(r["passed"]) for r in recs]), tv, first, lp,
                                 (difficulty or {}).get(pid, str(recs[0].get("difficulty", "")))))
    return out


# ------------------------------------------------------------------------------------------------- metrics


def tie_averaged_order(values: np.ndarray, passed: np.ndarray) -> np.ndarray:
    """Pass labels sorted by value (best first), each replaced by the mean of its tie group: the
    expectation under random tie-breaking."""
    order = np.argsort(-values, kind="stable")
    v, y = values[order], passed[order].astype(float)
    out = y.copy()
    start = 0
    for i in range(1, len(v) + 1):
        if i == len(v) or v[i] != v[start]:
            out[start:i] = y[start:i].mean()
            start = i
    return out


def best_of_n(values: np.ndarray, passed: np.ndarray, n: int) -> float:
    """Exact expected pass of the top-scored rollout among a uniformly random n-subset.

    The rollout at rank i (0 = best) is the subset's top with probability C(N-1-i, n-1) / C(N, n).
    n = N is reranking all rollouts; n = 1 is random choice.
    """
    y = tie_averaged_order(values, passed)
    N = len(y)
    n = min(n, N)
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

    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def bootstrap_ci(per_problem: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over problems, resampling problems."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_problem), size=(n, len(per_problem)))
    means = per_problem[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _value_at_fraction(token_values: list[float], f: float) -> float:
    if not token_values:
        return float("nan")
    return token_values[max(0, math.ceil(f * len(token_values)) - 1)]


def _with_ci(per_problem: np.ndarray, seed: int = 0) -> dict[str, float]:
    lo, hi = bootstrap_ci(per_problem, seed=seed)
    return {"mean": 100 * float(per_problem.mean()), "ci_low": 100 * lo, "ci_high": 100 * hi}


def evaluate_problems(problems: list[ProblemScores], seed: int = 0) -> dict[str, Any]:
    """All metrics for one critic; percentages for selection metrics, raw for AUROC/Brier/ECE."""
    from sklearn.metrics import brier_score_loss, log_loss

    reranked = np.array([best_of_n(p.values, p.passed, len(p.values)) for p in problems])
    random = np.array([p.passed.mean() for p in problems])
    oracle = np.array([float(p.passed.any()) for p in problems])
    out: dict[str, Any] = {
        "problems": len(problems),
        "rollouts": int(sum(len(p.values) for p in problems)),
        "reranked_pass@1": _with_ci(reranked, seed),
        "random_pass@1": _with_ci(random, seed),
        "oracle_pass@1": _with_ci(oracle, seed),
        "improvement_over_random": _with_ci(reranked - random, seed),
    }
    out["relative_improvement_%"] = 100 * (reranked.mean() - random.mean()) / max(random.mean(), 1e-9)
    if all(p.first_index is not None for p in problems):
        out["first_sample_pass@1"] = _with_ci(np.array([p.passed[p.first_index] for p in problems]), seed)
    if all(p.logprob is not None for p in problems):
        out["mean_logprob_pass@1"] = _with_ci(np.array([best_of_n(p.logprob, p.passed, len(p.values))
                                                        for p in problems]), seed)
    n_max = min(len(p.values) for p in problems)
    ns = [n for n in (2**k for k in range(12)) if n <= n_max] + ([n_max] if n_max & (n_max - 1) else [])
    out["best_of_n"] = {str(n): 100 * float(np.mean([best_of_n(p.values, p.passed, n) for p in problems]))
                        for n in ns}

    values = np.concatenate([p.values for p in problems])
    labels = np.concatenate([p.passed for p in problems]).astype(float)
    per_problem_auc = [a for p in problems if (a := _auroc(p.values, p.passed.astype(float))) is not None]
    ece, diagram = expected_calibration_error(values, labels)
    out["auroc_pooled"] = _auroc(values, labels)
    out["auroc_mean_per_problem"] = float(np.mean(per_problem_auc)) if per_problem_auc else None
    out["auroc_problems"] = len(per_problem_auc)
    if per_problem_auc:
        lo, hi = bootstrap_ci(np.array(per_problem_auc), seed=seed)
        out["auroc_mean_per_problem_ci"] = [lo, hi]
    out["brier"] = float(brier_score_loss(labels, values))
    out["log_loss"] = float(log_loss(labels, np.clip(values, 1e-7, 1 - 1e-7), labels=[0, 1]))
    out["ece"] = ece
    out["reliability"] = diagram

    if all(p.token_values is not None for p in problems):
        prm = {}
        for f in FRACTIONS:
            partial = [np.array([_value_at_fraction(tv, f) for tv in p.token_values]) for p in problems]
            sel = np.array([best_of_n(np.nan_to_num(v, nan=-1.0), p.passed, len(v))
                            for v, p in zip(partial, problems, strict=True)])
            pooled = np.concatenate(partial)
            ok = ~np.isnan(pooled)
            prm[str(f)] = {"reranked_pass@1": 100 * float(sel.mean()),
                           "auroc_pooled": _auroc(pooled[ok], labels[ok])}
        out["process_reward"] = prm
        better = [f for f in FRACTIONS if prm[str(f)]["reranked_pass@1"] > out["random_pass@1"]["mean"]]
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


# -------------------------------------------------------------------------------------------------- report


def _fmt(m: dict[str, float]) -> str:
    return f"{m['mean']:.1f} [{m['ci_low']:.1f}, {m['ci_high']:.1f}]"


def write_report(results: dict[str, dict[str, Any]], out_dir: str | os.PathLike,
                 published: dict[str, float] | None = None) -> Path:
    """metrics.json, report.md and plots for one or several critics evaluated on the same rollouts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    first = next(iter(results.values()))
    lines = [f"# Critic report\n\n{first['problems']} problems, {first['rollouts']} rollouts. "
             "Selection numbers are pass@1 in % with 95% bootstrap intervals over problems.\n",
             "| critic | reranked pass@1 | vs random (abs) | rel. % | pooled AUROC | mean per-problem AUROC "
             "| Brier | ECE |", "|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        auc = f"{m['auroc_mean_per_problem']:.3f}" if m["auroc_mean_per_problem"] is not None else "-"
        pooled = f"{m['auroc_pooled']:.3f}" if m["auroc_pooled"] is not None else "-"
        lines.append(f"| {name} | {_fmt(m['reranked_pass@1'])} | {_fmt(m['improvement_over_random'])} | "
                     f"{m['relative_improvement_%']:+.1f} | {pooled} | {auc} | {m['brier']:.3f} | {m['ece']:.3f} |")
    lines += ["", "| baseline | pass@1 |", "|---|---|",
              f"| random choice (exact expectation) | {_fmt(first['random_pass@1'])} |",
              f"| oracle (some rollout passes) | {_fmt(first['oracle_pass@1'])} |"]
    if "first_sample_pass@1" in first:
        lines.append(f"| first sample | {_fmt(first['first_sample_pass@1'])} |")
    if "mean_logprob_pass@1" in first:
        lines.append(f"| generator mean log-probability | {_fmt(first['mean_logprob_pass@1'])} |")
    for name, value in (published or {}).items():
        lines.append(f"| {name} (published) | {value:.1f} |")
    for name, m in results.items():
        if "process_reward" in m:
            lines += ["", f"## Process reward: {name}", "",
                      "| fraction of tokens | reranked pass@1 | pooled AUROC |", "|---|---|---|"]
            for f, r in m["process_reward"].items():
                auc = f"{r['auroc_pooled']:.3f}" if r["auroc_pooled"] is not None else "-"
                lines.append(f"| {f} | {r['reranked_pass@1']:.1f} | {auc} |")
            cross = m.get("prm_beats_random_from_fraction")
            lines.append(f"\nPartial-program selection beats random from {cross:.0%} of the tokens on."
                         if cross else "\nPartial-program selection never beats random choice.")
        if "by_difficulty" in m:
            lines += ["", f"## By difficulty: {name}", "", "| difficulty | problems | reranked | random |",
                      "|---|---|---|---|"]
            lines += [f"| {d} | {r['problems']} | {r['reranked_pass@1']:.1f} | {r['random_pass@1']:.1f} |"
                      for d, r in m["by_difficulty"].items()]
    lines += ["", "![best-of-n](best_of_n.png)", "![calibration](reliability.png)"]
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

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="gray", ls="--")
    for name, m in results.items():
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
            a1.plot(fs, [r["reranked_pass@1"] for r in m["process_reward"].values()], marker="o", label=name)
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
                   published: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    names = names or [Path(p).stem for p in paths]
    if len(names) != len(paths):
        raise DataError(out_dir, f"{len(names)} names for {len(paths)} score files")
    if len(set(names)) != len(names):
        raise DataError(out_dir, f"critic names must differ, got {names}; name them with --names")
    results = {name: evaluate_problems(load_scores(path)) for name, path in zip(names, paths, strict=True)}
    write_report(results, out_dir, published)
    return results

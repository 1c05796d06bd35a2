"""Reference for the execution-aware critics: a logistic regression on the check features alone.

    .venv/bin/python benchmarks/feature_ranker.py runs/demo/checked.jsonl -o runs/feature_ranker.jsonl
    .venv/bin/codevalue evaluate runs/feature_ranker.jsonl -o runs/feature_ranker_report

Same folds as `codevalue crossval` (problems dealt by `assign_folds`, seed 0): each fold's problems are
scored by a model fitted on the other folds. Inputs: the `check_features` of `codevalue checks`, raw and
relative to the problem's best. This answers "how much of an execution-aware value model's gain is the
features themselves?" (the value model also reads the program). Prints reranked pass@1 of each single
feature and of the fitted model; writes the fitted model's scores for `codevalue evaluate`. `--loss listwise`
fits a conditional logit over each problem's rollouts instead (trained for the pick, not for pass/fail).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from sklearn.linear_model import LogisticRegression

from codevalue.checks import FEATURES
from codevalue.crossval import assign_folds
from codevalue.evaluate import best_of_n, bootstrap_ci
from codevalue.jsonl import read_jsonl, write_jsonl


def design(rows: list[dict]) -> np.ndarray:
    x = np.array([[r["check_features"][k] for k in FEATURES] for r in rows], dtype=float)
    return np.hstack([x, x - x.max(axis=0)])  # relative to the problem's best: selection is within a problem


def fit_listwise(problems: list[tuple[np.ndarray, np.ndarray]], l2: float = 1.0) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """A linear scorer trained for the selection itself (a conditional logit, as in listwise learning to rank):
    per problem with both passing and failing rollouts, minimise -log(softmax mass on the passing ones).
    Returns (weights, feature means, feature scales); problems where all or none pass carry no signal."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    useful = [(x, y.astype(bool)) for x, y in problems if 0 < y.sum() < len(y)]
    stacked = np.vstack([x for x, _ in useful])
    mean, scale = stacked.mean(axis=0), stacked.std(axis=0) + 1e-9
    useful = [((x - mean) / scale, y) for x, y in useful]

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = l2 * w @ w / 2, l2 * w
        for x, y in useful:
            s = x @ w
            loss += logsumexp(s) - logsumexp(s[y])
            grad = grad + softmax(s) @ x - softmax(s[y]) @ x[y]
        return loss / len(useful), grad / len(useful)

    result = minimize(loss_and_grad, np.zeros(stacked.shape[1]), jac=True, method="L-BFGS-B")
    w = result.x
    return w, mean, scale


def top_pick(groups: dict[str, list[dict]], values: dict[str, np.ndarray]) -> tuple[float, float, float]:
    per_problem = np.array([best_of_n(values[pid], np.array([r["passed"] for r in rows]), len(rows))
                            for pid, rows in groups.items()])
    lo, hi = bootstrap_ci(per_problem)
    return 100 * per_problem.mean(), 100 * lo, 100 * hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checked", help="`codevalue checks` output")
    parser.add_argument("-o", "--out", required=True, help="cross-validated scores JSONL")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss", choices=("pointwise", "listwise"), default="pointwise",
                        help="pointwise: logistic regression on pass/fail; listwise: a conditional logit over each "
                             "problem's rollouts (trained to put the top score on a passing one)")
    args = parser.parse_args()

    groups: dict[str, list[dict]] = defaultdict(list)
    for _, rec in read_jsonl(args.checked):
        groups[str(rec["problem_id"])].append(rec)
    fold_of = assign_folds(list(groups), args.folds, args.seed)
    print(f"{'critic':<34}{'reranked pass@1':>16}   95% CI")
    for name in FEATURES:
        values = {pid: np.array([r["check_features"][name] for r in rows]) for pid, rows in groups.items()}
        mean, lo, hi = top_pick(groups, values)
        print(f"{name:<34}{mean:>16.1f}   [{lo:.1f}, {hi:.1f}]")
    values = {}
    for k in range(args.folds):
        train = [pid for pid in groups if fold_of[pid] != k]
        if args.loss == "listwise":
            w, mu, sd = fit_listwise([(design(groups[pid]), np.array([r["passed"] for r in groups[pid]], dtype=float))
                                      for pid in train])
            for pid in groups:
                if fold_of[pid] == k:
                    values[pid] = ((design(groups[pid]) - mu) / sd) @ w  # a score, not a probability
            continue
        x = np.vstack([design(groups[pid]) for pid in train])
        y = np.array([r["passed"] for pid in train for r in groups[pid]])
        model = LogisticRegression(max_iter=5000).fit(x, y)
        for pid in groups:
            if fold_of[pid] == k:
                values[pid] = model.predict_proba(design(groups[pid]))[:, 1]
    mean, lo, hi = top_pick(groups, values)
    name = "logistic regression" if args.loss == "pointwise" else "listwise linear"
    print(f"{name + ' (cross-val.)':<34}{mean:>16.1f}   [{lo:.1f}, {hi:.1f}]")
    write_jsonl(args.out, [{"problem_id": pid, "rollout_id": r["rollout_id"], "passed": r["passed"],
                            "value": round(float(v), 6)}
                           for pid, rows in groups.items() for r, v in zip(rows, values[pid], strict=True)])


if __name__ == "__main__":
    main()

"""Critic metrics against hand-computed values: best-of-n, calibration, bootstrap, AUROC, process reward,
and the report files."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from codevalue.cli import main
from codevalue.errors import DataError
from codevalue.evaluate import (
    FRACTIONS,
    ProblemScores,
    _value_at_fraction,
    auroc_by_ranks,
    best_of_n,
    bootstrap_ci,
    evaluate_files,
    evaluate_problems,
    expected_calibration_error,
    load_scores,
    paired_comparison,
    tie_averaged_order,
    write_report,
)

T, F = True, False


def arr(*xs):
    return np.array(xs)


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------------------
# best_of_n


def brute_best_of_n(values, passed, n: int) -> float:
    """Average over every n-subset of the pass of its top-valued rollout, ties broken uniformly at random."""
    picks = []
    for subset in itertools.combinations(range(len(values)), n):
        top = max(values[i] for i in subset)
        tied = [i for i in subset if values[i] == top]
        picks.append(sum(bool(passed[i]) for i in tied) / len(tied))
    return sum(picks) / len(picks)


def test_tie_averaged_order():
    assert tie_averaged_order(arr(0.2, 0.9, 0.2, 0.5), arr(T, F, F, T)).tolist() == [0.0, 1.0, 0.5, 0.5]
    assert tie_averaged_order(arr(0.4), arr(T)).tolist() == [1.0]
    empty = tie_averaged_order(np.array([]), np.array([], dtype=bool))  # a critic with no rollouts for a problem
    assert empty.shape == (0,) and empty.dtype == float


def test_best_of_n_one_is_mean_pass_rate():
    values, passed = arr(0.3, 0.9, 0.1, 0.5, 0.7), arr(T, F, F, T, T)
    assert best_of_n(values, passed, 1) == pytest.approx(0.6)


def test_best_of_n_all_is_top_rollout():
    values, passed = arr(0.3, 0.9, 0.1, 0.5, 0.7), arr(T, F, F, T, T)
    assert best_of_n(values, passed, 5) == 0.0  # the 0.9 rollout fails
    assert best_of_n(values, ~passed, 5) == 1.0
    assert best_of_n(values, passed, 50) == 0.0  # n > N is clamped to N


def test_best_of_n_ties_at_top_averaged():
    assert best_of_n(arr(1.0, 1.0, 0.0), arr(T, F, T), 3) == pytest.approx(0.5)
    # n = 2: subsets {0,1} -> 0.5, {0,2} -> 1, {1,2} -> 0
    assert best_of_n(arr(1.0, 1.0, 0.0), arr(T, F, T), 2) == pytest.approx(0.5)
    assert best_of_n(arr(0.4, 0.4, 0.4, 0.4), arr(T, F, F, F), 2) == pytest.approx(0.25)


def test_best_of_n_middle_n_by_hand():
    # ranks (best first): passed F, T, F, T.  n = 2 weights C(3-i, 1)/C(4, 2) = 3/6, 2/6, 1/6, 0
    values, passed = arr(0.9, 0.7, 0.5, 0.3), arr(F, T, F, T)
    assert best_of_n(values, passed, 2) == pytest.approx(2 / 6)
    # n = 3 weights C(3-i, 2)/C(4, 3) = 3/4, 1/4, 0, 0
    assert best_of_n(values, passed, 3) == pytest.approx(1 / 4)


@pytest.mark.parametrize("seed", range(6))
def test_best_of_n_matches_subset_enumeration(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        N = int(rng.integers(1, 8))
        values = rng.integers(0, 3, size=N) / 2  # few distinct values: plenty of ties
        passed = rng.random(N) < 0.5
        for n in range(1, N + 1):
            assert best_of_n(values, passed, n) == pytest.approx(brute_best_of_n(values, passed, n)), (
                values, passed, n)


@pytest.mark.parametrize("N", [1, 4])
def test_best_of_n_all_pass_all_fail(N):
    values = np.linspace(0.1, 0.9, N)
    for n in range(1, N + 1):
        assert best_of_n(values, np.ones(N, bool), n) == pytest.approx(1.0)
        assert best_of_n(values, np.zeros(N, bool), n) == 0.0


def test_best_of_n_single_rollout():
    assert best_of_n(arr(0.3), arr(T), 1) == 1.0
    assert best_of_n(arr(0.3), arr(F), 1) == 0.0
    assert best_of_n(arr(0.3), arr(T), 8) == 1.0


# ---------------------------------------------------------------------------------------------------------
# calibration, bootstrap, prefixes


def test_expected_calibration_error_by_hand():
    probs = arr(0.05, 0.15, 0.2, 0.25, 0.85, 0.95, 1.0)
    labels = arr(0, 1, 1, 0, 1, 1, 1).astype(float)
    ece, table = expected_calibration_error(probs, labels)
    # bins: [0,.1): .05 -> acc 0 | [.1,.2): .15 -> 1 | [.2,.3): .2,.25 -> .5 | [.8,.9): .85 -> 1 | [.9,1]: .95,1 -> 1
    assert table == [pytest.approx((0.05, 0.0, 1)), pytest.approx((0.15, 1.0, 1)), pytest.approx((0.225, 0.5, 2)),
                     pytest.approx((0.85, 1.0, 1)), pytest.approx((0.975, 1.0, 2))]
    expected = (1 * 0.05 + 1 * 0.85 + 2 * 0.275 + 1 * 0.15 + 2 * 0.025) / 7
    assert ece == pytest.approx(expected)
    assert expected_calibration_error(arr(0.0, 1.0), arr(0.0, 1.0))[0] == 0.0  # perfectly calibrated


def test_bootstrap_ci_contains_mean_and_is_seeded():
    x = np.random.default_rng(1).random(30)
    lo, hi = bootstrap_ci(x, seed=3)
    assert lo < x.mean() < hi
    assert bootstrap_ci(x, seed=3) == (lo, hi)
    assert bootstrap_ci(x, seed=4) != (lo, hi)
    assert bootstrap_ci(np.full(5, 0.25)) == pytest.approx((0.25, 0.25))


@pytest.mark.parametrize("length,expected", [
    (10, {0.1: 0, 0.2: 1, 0.3: 2, 0.5: 4, 0.7: 6, 0.9: 8, 1.0: 9}),
    (4, {0.1: 0, 0.2: 0, 0.3: 1, 0.5: 1, 0.6: 2, 0.7: 2, 0.8: 3, 1.0: 3}),
    (3, {0.1: 0, 0.3: 0, 0.4: 1, 0.6: 1, 0.7: 2, 1.0: 2}),
    (1, {0.1: 0, 1.0: 0}),
])
def test_value_at_fraction_index_is_ceil_minus_one(length, expected):
    tv = [float(i) for i in range(length)]
    for f, index in expected.items():
        assert _value_at_fraction(tv, f) == index
    for f in FRACTIONS:  # no float surprises, e.g. 0.3 * 10 -> 3 exactly
        assert _value_at_fraction(tv, f) == max(0, -(-round(10 * f) * length // 10) - 1)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_by_ranks_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    scores, labels = rng.integers(0, 4, size=30) / 3, rng.random(30) < 0.4  # ties on purpose
    assert auroc_by_ranks(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc_by_ranks(arr(0.9, 0.5, 0.5), arr(T, T, F)) == pytest.approx(0.75)  # a tie counts 1/2
    assert auroc_by_ranks(arr(0.9, 0.5), arr(T, T)) is None


def test_value_at_fraction_empty_is_nan():
    assert math.isnan(_value_at_fraction([], 0.5))


# ---------------------------------------------------------------------------------------------------------
# evaluate_problems on hand-made problems

# P1 top passes (AUROC 1); P2 top fails, the passing one in the middle (AUROC 0.5); P3 all fail (no AUROC);
# P4 a tie at the top between a pass and a fail, plus a low pass (AUROC 0.25).
HAND = [
    ("P1", [0.9, 0.6, 0.3], [T, F, F], 1, "easy"),
    ("P2", [0.8, 0.4, 0.2], [F, T, F], 1, "easy"),
    ("P3", [0.7, 0.5, 0.1], [F, F, F], 0, "hard"),
    ("P4", [0.55, 0.55, 0.05], [T, F, T], 0, "hard"),
]


def hand_problems(token_values=False, first=False, difficulty=False, logprob=False) -> list[ProblemScores]:
    out = []
    for pid, values, passed, first_index, diff in HAND:
        # prefix values: anti-informative for the first half of the tokens (1 - final), the final value after
        tv = [[1 - v, 1 - v, v, v] for v in values] if token_values else None
        lp = np.array([0.0, -1.0, -2.0]) if logprob else None  # the generator prefers rollout 0
        out.append(ProblemScores(pid, np.array(values), np.array(passed), tv, first_index if first else None, lp,
                                 diff if difficulty else ""))
    return out


def pairwise_auroc(pos, neg) -> float:
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_evaluate_problems_selection():
    m = evaluate_problems(hand_problems())
    assert m["problems"] == 4 and m["rollouts"] == 12
    assert m["reranked_pass@1"]["mean"] == pytest.approx(100 * (1 + 0 + 0 + 0.5) / 4)
    assert m["random_pass@1"]["mean"] == pytest.approx(100 * (1 / 3 + 1 / 3 + 0 + 2 / 3) / 4)
    assert m["oracle_pass@1"]["mean"] == pytest.approx(75.0)
    assert m["improvement_over_random"]["mean"] == pytest.approx(37.5 - 100 / 3)
    assert m["relative_improvement_%"] == pytest.approx(12.5)
    for key in ("reranked_pass@1", "random_pass@1", "oracle_pass@1", "improvement_over_random"):
        assert m[key]["ci_low"] <= m[key]["mean"] + 1e-9 and m[key]["mean"] <= m[key]["ci_high"] + 1e-9
    # n_max = 3: powers of two up to 3, then 3 itself. n = 2 per problem: 2/3, 1/3, 0, 1/2
    assert m["best_of_n"] == pytest.approx({"1": 100 / 3, "2": 100 * (2 / 3 + 1 / 3 + 0.5) / 4, "3": 37.5})
    for key in ("first_sample_pass@1", "mean_logprob_pass@1", "process_reward", "by_difficulty"):
        assert key not in m


def test_evaluate_problems_auroc_and_calibration():
    m = evaluate_problems(hand_problems())
    # per problem: 1.0, 0.5, (P3 one class: excluded), 0.25
    assert m["auroc_problems"] == 3
    assert m["auroc_mean_per_problem"] == pytest.approx((1 + 0.5 + 0.25) / 3)
    lo, hi = m["auroc_mean_per_problem_ci"]
    assert 0.25 <= lo <= m["auroc_mean_per_problem"] <= hi <= 1.0
    # pooled over all 12 rollouts: 15.5 of 32 (pass, fail) pairs in order
    values = np.concatenate([np.array(v) for _, v, *_ in HAND])
    labels = np.concatenate([np.array(p) for _, _, p, *_ in HAND])
    assert pairwise_auroc(values[labels], values[~labels]) == pytest.approx(15.5 / 32)
    assert m["auroc_pooled"] == pytest.approx(15.5 / 32)
    assert m["brier"] == pytest.approx(float(np.mean((values - labels) ** 2)))
    assert m["ece"] == pytest.approx(expected_calibration_error(values, labels.astype(float))[0])
    expected_ll = -np.mean(np.where(labels, np.log(values), np.log(1 - values)))
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert sum(count for _, _, count in m["reliability"]) == 12


def test_evaluate_problems_auroc_none_without_both_classes():
    m = evaluate_problems([ProblemScores("a", arr(0.9, 0.1), arr(T, T)), ProblemScores("b", arr(0.2), arr(T))])
    assert m["auroc_pooled"] is None and m["auroc_mean_per_problem"] is None and m["auroc_problems"] == 0
    assert "auroc_mean_per_problem_ci" not in m
    assert m["reranked_pass@1"]["mean"] == m["random_pass@1"]["mean"] == m["oracle_pass@1"]["mean"] == 100.0
    assert m["best_of_n"] == {"1": 100.0}  # one problem has a single rollout


def test_evaluate_problems_first_sample_and_logprob():
    m = evaluate_problems(hand_problems(first=True, logprob=True))
    # first samples: P1[1] F, P2[1] T, P3[0] F, P4[0] T
    assert m["first_sample_pass@1"]["mean"] == pytest.approx(50.0)
    # the generator's pick (rollout 0): T, F, F, T
    assert m["mean_logprob_pass@1"]["mean"] == pytest.approx(50.0)


def test_evaluate_problems_process_reward():
    m = evaluate_problems(hand_problems(token_values=True))
    prm = m["process_reward"]
    assert list(prm) == [str(f) for f in FRACTIONS]
    # 4 tokens: fractions up to 0.5 read index 0 or 1 (1 - value), from 0.6 on index 2 or 3 (the value)
    for f in ("0.1", "0.2", "0.3", "0.4", "0.5"):
        # reversed order picks: P1 the 0.3 fail, P2 the 0.2 fail, P3 a fail, P4 the 0.05 pass
        assert prm[f]["reranked_pass@1"]["mean"] == pytest.approx(25.0), f
        assert prm[f]["auroc_pooled"] == pytest.approx(1 - 15.5 / 32), f
    for f in ("0.6", "0.7", "0.8", "0.9", "1.0"):
        assert prm[f]["reranked_pass@1"]["mean"] == pytest.approx(37.5), f
        assert prm[f]["auroc_pooled"] == pytest.approx(15.5 / 32), f
    assert m["prm_beats_random_from_fraction"] == 0.6


def test_evaluate_problems_process_reward_never_beats_random():
    problems = hand_problems(token_values=True)
    for p in problems:
        p.token_values = [[1 - v] * 4 for v in p.values]
    m = evaluate_problems(problems)
    assert m["prm_beats_random_from_fraction"] is None


def test_evaluate_problems_by_difficulty():
    m = evaluate_problems(hand_problems(difficulty=True))
    assert m["by_difficulty"] == {
        "easy": {"problems": 2, "reranked_pass@1": pytest.approx(50.0), "random_pass@1": pytest.approx(100 / 3)},
        "hard": {"problems": 2, "reranked_pass@1": pytest.approx(25.0), "random_pass@1": pytest.approx(100 / 3)},
    }
    problems = hand_problems()
    problems[0].difficulty = "easy"  # a single labelled difficulty is still reported
    assert evaluate_problems(problems)["by_difficulty"] == {
        "easy": {"problems": 1, "reranked_pass@1": 100.0, "random_pass@1": pytest.approx(100 / 3)}}


# ---------------------------------------------------------------------------------------------------------
# load_scores, report files, CLI


def score_records(values_by_problem: dict[str, list[float]], token_values: bool = True) -> list[dict]:
    records = []
    for pid, values in values_by_problem.items():
        passed = [T, F, F, T][:len(values)]
        for i, (v, p) in enumerate(zip(values, passed, strict=True)):
            rec = {"problem_id": pid, "rollout_id": f"{pid}/{i}", "passed": p, "value": v, "sample_index": i}
            if token_values:
                rec["token_values"] = [0.5, (0.5 + v) / 2, v]
            records.append(rec)
    return records


def test_load_scores_groups_problems(tmp_path):
    recs = score_records({"A": [0.9, 0.2, 0.4], "B": [0.1, 0.3]})
    recs[3]["difficulty"] = "interview"
    for r in recs:
        r["mean_logprob"] = -r["value"]
    recs[0]["sample_index"], recs[1]["sample_index"] = 1, 0
    path = write_lines(tmp_path / "s.jsonl", recs)
    a, b = load_scores(path)
    assert (a.problem_id, b.problem_id) == ("A", "B")
    assert a.values.tolist() == [0.9, 0.2, 0.4] and a.passed.tolist() == [T, F, F]
    assert a.passed.dtype == bool
    assert a.first_index == 1 and b.first_index == 0
    assert a.token_values[0] == [0.5, 0.7, 0.9]
    assert b.logprob.tolist() == [-0.1, -0.3]
    assert (a.difficulty, b.difficulty) == ("", "interview")
    a, b = load_scores(path, difficulty={"A": "intro"})
    assert (a.difficulty, b.difficulty) == ("intro", "interview")  # the record's own difficulty is the fallback


def test_load_scores_optional_fields_absent(tmp_path):
    recs = score_records({"A": [0.9, 0.2]}, token_values=False)
    recs[1]["token_values"] = [0.2]  # only some records have token values: none are used
    for r in recs:
        del r["sample_index"]
    [a] = load_scores(write_lines(tmp_path / "s.jsonl", recs))
    assert a.token_values is None and a.first_index is None and a.logprob is None


@pytest.mark.parametrize("field", ["value", "passed", "problem_id"])
def test_load_scores_missing_field(tmp_path, field):
    recs = score_records({"A": [0.9, 0.2]})
    del recs[1][field]
    path = write_lines(tmp_path / "s.jsonl", recs)
    with pytest.raises(DataError, match=f"record 2, field '{field}'") as e:
        load_scores(path)
    assert e.value.field == field and e.value.line == 2


TWO = {"A": [0.9, 0.2, 0.4, 0.6], "B": [0.1, 0.3, 0.8, 0.5], "C": [0.7, 0.6, 0.2, 0.9]}
TWO_OTHER = {"A": [0.1, 0.8, 0.4, 0.6], "B": [0.9, 0.3, 0.2, 0.5], "C": [0.1, 0.9, 0.2, 0.7]}


@pytest.fixture
def two_critics(tmp_path):
    return (write_lines(tmp_path / "good.jsonl", score_records(TWO)),
            write_lines(tmp_path / "bad.jsonl", score_records(TWO_OTHER)))


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_evaluate_files_writes_report(tmp_path, two_critics):
    out = tmp_path / "report"
    results = evaluate_files(list(two_critics), out, published={"CodeT": 36.7})
    assert list(results) == ["good", "bad"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(results))
    for name in ("best_of_n.png", "reliability.png", "process_reward.png"):
        assert is_png(out / name), name
    report = (out / "report.md").read_text()
    assert "3 problems, 12 rollouts" in report
    table = [line for line in report.split("## Paired")[0].splitlines() if line.startswith(("| good |", "| bad |"))]
    assert len(table) == 2
    assert "| CodeT (published) | 36.7 |" in report
    assert "## Process reward: good" in report and "## Process reward: bad" in report
    assert "![process reward](process_reward.png)" in report
    assert "| first sample |" in report
    # rollouts pass, fail, fail, pass. "good" tops: A 0.9 pass, B 0.8 fail, C 0.9 pass; "bad": only B's top passes
    assert results["good"]["reranked_pass@1"]["mean"] == pytest.approx(100 * 2 / 3)
    assert results["bad"]["reranked_pass@1"]["mean"] == pytest.approx(100 * 1 / 3)


@pytest.mark.slow
def test_write_report_without_token_values(tmp_path):
    out = write_report({"x": evaluate_problems(hand_problems(difficulty=True))}, tmp_path / "r")
    assert is_png(out / "best_of_n.png") and is_png(out / "reliability.png")
    assert not (out / "process_reward.png").exists()
    report = (out / "report.md").read_text()
    assert "process_reward.png" not in report and "## By difficulty: x" in report


def test_evaluate_files_names_must_match(tmp_path, two_critics):
    with pytest.raises(DataError, match="1 names for 2 score files"):
        evaluate_files(list(two_critics), tmp_path / "r", names=["only"])


@pytest.mark.slow
def test_evaluate_files_same_stem_is_refused_unless_named(tmp_path):
    """Two files both called scores.jsonl would be one critic under one name: refused, and with --names
    both are evaluated, each on its own scores."""
    paths = []
    for sub, values in (("cv1", TWO), ("cv2", TWO_OTHER)):
        (tmp_path / sub).mkdir()
        paths.append(write_lines(tmp_path / sub / "scores.jsonl", score_records(values)))
    with pytest.raises(DataError, match=r"critic names must differ, got \['scores', 'scores'\]"):
        evaluate_files(paths, tmp_path / "r")
    results = evaluate_files(paths, tmp_path / "r", names=["cv1", "cv2"])
    alone = {name: evaluate_files([path], tmp_path / name)[path.stem] for name, path in zip(["cv1", "cv2"], paths,
                                                                                              strict=True)}
    assert list(results) == ["cv1", "cv2"] and alone["cv1"]["reranked_pass@1"] != alone["cv2"]["reranked_pass@1"]
    for name in results:
        assert results[name]["reranked_pass@1"] == alone[name]["reranked_pass@1"]


def test_evaluate_files_empty_scores(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no scored rollouts"):
        evaluate_files([path], tmp_path / "r")


@pytest.mark.slow
def test_cli_evaluate(tmp_path, two_critics, capsys):
    out = tmp_path / "cli"
    assert main(["evaluate", *map(str, two_critics), "-o", str(out), "--names", "critic one", "critic two"]) == 0
    stdout = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in stdout
    assert list(json.loads((out / "metrics.json").read_text())) == ["critic one", "critic two"]
    report = (out / "report.md").read_text()
    assert "| critic one |" in report and "| critic two |" in report
    assert is_png(out / "process_reward.png")


def test_cli_evaluate_bad_input_exit_code(tmp_path, capsys):
    path = write_lines(tmp_path / "s.jsonl", [{"problem_id": "A", "passed": True}])
    assert main(["evaluate", str(path), "-o", str(tmp_path / "r")]) == 2
    assert "field 'value'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# research inputs (issue 12): real-valued scores, degenerate files, bad values, different rollout sets,
# duplicates, paired comparison, process-reward intervals


@pytest.mark.slow
def test_real_valued_scores_rank_like_any_monotone_transform_and_skip_calibration(tmp_path, capsys):
    problems = hand_problems(token_values=True)
    logprob_like = hand_problems(token_values=True)
    for p in logprob_like:  # mean log-probability style: negative, unbounded, same order
        p.values = np.log(p.values) - 5
        p.token_values = [[float(np.log(v) - 5) for v in tv] for tv in p.token_values]
    m, ref = evaluate_problems(logprob_like), evaluate_problems(problems)
    for key in ("reranked_pass@1", "best_of_n", "auroc_pooled", "auroc_mean_per_problem", "improvement_over_random"):
        assert m[key] == pytest.approx(ref[key]), key
    assert [r["reranked_pass@1"] for r in m["process_reward"].values()] == \
        [r["reranked_pass@1"] for r in ref["process_reward"].values()]
    assert m["scores_in_unit_interval"] is False and ref["scores_in_unit_interval"] is True
    assert m["brier"] is m["log_loss"] is m["ece"] is m["reliability"] is None
    recs = score_records({"A": [-0.3, -2.0, -1.1, -0.7], "B": [-4.0, -0.2, -0.9, -1.5]})
    out = tmp_path / "r"
    assert main(["evaluate", str(write_lines(tmp_path / "logprob.jsonl", recs)), "-o", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Brier and ECE only for scores in [0, 1]: not for logprob (scores in [-4, -0.2])" in report
    assert "| logprob | 50.0 [" in report  # A: top -0.3 passes, B: top -0.2 fails
    # pooled: passes at -0.3, -0.7, -4.0, -1.5 beat 3, 3, 0 and 1 of the fails at -2.0, -1.1, -0.2, -0.9: 7/16
    assert "reliability.png" not in report and "AUROC pooled 0.438" in capsys.readouterr().out


@pytest.mark.parametrize("passed,word", [(False, "fails"), (True, "passes")])
@pytest.mark.slow
def test_every_rollout_fails_or_passes_is_reported(tmp_path, capsys, passed, word):
    recs = score_records({"A": [0.9, 0.2, 0.4], "B": [0.1, 0.3]})
    for r in recs:
        r["passed"] = passed
    out = tmp_path / "r"
    assert main(["evaluate", str(write_lines(tmp_path / "s.jsonl", recs)), "-o", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())["s"]
    assert m["degenerate"] == f"every rollout {word}"
    assert m["auroc_pooled"] is None and m["auroc_mean_per_problem"] is None
    assert m["reranked_pass@1"]["mean"] == m["random_pass@1"]["mean"] == m["oracle_pass@1"]["mean"] == 100 * passed
    assert m["relative_improvement_%"] == (0.0 if passed else None)  # no random pass rate to improve on
    assert m["brier"] == pytest.approx(np.mean((np.array([0.9, 0.2, 0.4, 0.1, 0.3]) - passed) ** 2))
    assert f"Every rollout {word}: AUROC is undefined" in (out / "report.md").read_text()
    assert "AUROC pooled -, per problem -" in capsys.readouterr().out


@pytest.mark.parametrize("field,bad", [("value", None), ("value", float("nan")), ("value", float("inf")),
                                       ("value", "0.5"), ("value", True), ("passed", None),
                                       ("token_values", [0.1, None]), ("token_values", [0.1, "0.2"]),
                                       ("token_values", 0.5), ("mean_logprob", float("nan"))])
def test_bad_numbers_refused_naming_file_record_field(tmp_path, capsys, field, bad):
    recs = score_records({"A": [0.9, 0.2, 0.4]})
    recs[1][field] = bad
    path = write_lines(tmp_path / "s.jsonl", recs)
    with pytest.raises(DataError, match=f"s.jsonl, record 2, field '{field}': ") as e:
        load_scores(path)
    assert e.value.line == 2 and e.value.field == field
    assert main(["evaluate", str(path), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "record 2, field" in err


@pytest.mark.slow
def test_duplicate_rollout_id_refused(tmp_path):
    recs = score_records({"A": [0.9, 0.2], "B": [0.1, 0.3]})
    recs[3]["rollout_id"] = "B/0"
    with pytest.raises(DataError, match=r"s.jsonl, record 4, field 'rollout_id': duplicate rollout_id 'B/0' of "
                                        r"problem 'B' \(first on record 3\)"):
        evaluate_files([write_lines(tmp_path / "s.jsonl", recs)], tmp_path / "r")
    for r in recs:  # ids numbered per problem (0, 1, ... in each) are no duplicates: a rollout is (problem, id)
        r["rollout_id"] = r["sample_index"]
    assert evaluate_files([write_lines(tmp_path / "s.jsonl", recs)], tmp_path / "r")["s"]["rollouts"] == 4


@pytest.mark.slow
def test_different_rollout_sets_evaluated_on_the_shared_ones(tmp_path, capsys):
    first = score_records({"A": [0.9, 0.2, 0.4, 0.6], "B": [0.1, 0.3, 0.8, 0.5], "C": [0.7, 0.6, 0.2, 0.9]})
    # the second file lacks problem A and B's last rollout, and has a problem D the first never scored
    second = [r | {"value": 1 - r["value"]} for r in first if r["problem_id"] != "A" and r["rollout_id"] != "B/3"]
    second += score_records({"D": [0.5, 0.5]})
    paths = [write_lines(tmp_path / "one.jsonl", first), write_lines(tmp_path / "two.jsonl", second)]
    results = evaluate_files(paths, tmp_path / "r")
    # shared: B/0..B/2 (pass, fail, fail) and C/0..C/3 (pass, fail, fail, pass)
    for m in results.values():
        assert (m["problems"], m["rollouts"]) == (2, 7)
        assert m["random_pass@1"]["mean"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
        assert m["oracle_pass@1"]["mean"] == 100
    assert results["one"]["input"] == {"file": str(paths[0]), "problems_dropped": 1, "rollouts_dropped": 5}
    assert results["two"]["input"] == {"file": str(paths[1]), "problems_dropped": 1, "rollouts_dropped": 2}
    # one: B top 0.8 (B/2 fails), C top 0.9 (C/3 passes); two (1 - value): B top B/0 passes, C top C/2 fails
    assert results["one"]["reranked_pass@1"]["mean"] == pytest.approx(50)
    assert results["two"]["reranked_pass@1"]["mean"] == pytest.approx(50)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "2 problems, 7 rollouts scored by every critic" in report
    assert "one: 1 problem, 5 rollouts dropped" in report and "two: 1 problem, 2 rollouts dropped" in report
    assert main(["evaluate", *map(str, paths), "-o", str(tmp_path / "cli")]) == 0
    assert "two: left out 2 rollouts not scored by every critic (problems dropped: 1)" in capsys.readouterr().out


def test_no_shared_rollouts_is_an_error(tmp_path):
    paths = [write_lines(tmp_path / "one.jsonl", score_records({"A": [0.9, 0.2]})),
             write_lines(tmp_path / "two.jsonl", score_records({"B": [0.9, 0.2]}))]
    with pytest.raises(DataError, match="no rollout is in every score file"):
        evaluate_files(paths, tmp_path / "r")


def test_shared_rollout_must_agree_on_pass(tmp_path):
    recs = score_records({"A": [0.9, 0.2]})
    other = [dict(r) for r in recs]
    other[1]["passed"] = True
    paths = [write_lines(tmp_path / "one.jsonl", recs), write_lines(tmp_path / "two.jsonl", other)]
    with pytest.raises(DataError,
                       match=r"two.jsonl, record 2, field 'passed': rollout 'A/1' of problem 'A' passed here but"):
        evaluate_files(paths, tmp_path / "r")


@pytest.mark.slow
def test_several_files_need_rollout_ids(tmp_path):
    recs = score_records({"A": [0.9, 0.2]})
    del recs[1]["rollout_id"]
    paths = [write_lines(tmp_path / "one.jsonl", recs), write_lines(tmp_path / "two.jsonl", recs)]
    with pytest.raises(DataError, match="record 2, field 'rollout_id'"):
        evaluate_files(paths, tmp_path / "r")
    assert evaluate_files(paths[:1], tmp_path / "r")["one"]["rollouts"] == 2  # one file needs no ids


def test_paired_comparison_by_hand(tmp_path):
    first = hand_problems()
    second = hand_problems()
    second[1].values = np.array([0.4, 0.8, 0.2])  # P2: now the passing rollout is on top; the rest is the same
    m = evaluate_problems(first)
    pair = paired_comparison(first, second)
    # per problem: reranked 1, 0, 0, 1/2 against 1, 1, 0, 1/2: difference 0, 1, 0, 0
    assert pair["difference_pass@1"]["mean"] == pytest.approx(25.0)
    # resampling 4 problems: the number of P2 draws is Binomial(4, 1/4); P(0) = 0.32 > 2.5%, P(4) = 0.4% < 2.5% <
    # P(>= 3) = 5.1%: the paired interval is [0, 75] points
    assert (pair["difference_pass@1"]["ci_low"], pair["difference_pass@1"]["ci_high"]) == pytest.approx((0, 75))
    # paired: each resample draws the same problems for both critics (the rows behind every other interval)
    idx = np.random.default_rng(0).integers(0, 4, size=(2000, 4))
    r1, r2 = np.array([1, 0, 0, 0.5]), np.array([1, 1, 0, 0.5])
    assert m["reranked_pass@1"]["ci_low"] == pytest.approx(100 * np.percentile(r1[idx].mean(axis=1), 2.5))
    paired = r2[idx].mean(axis=1) - r1[idx].mean(axis=1)
    assert pair["difference_pass@1"]["ci_high"] == pytest.approx(100 * np.percentile(paired, 97.5))
    assert (pair["wins"], pair["ties"], pair["losses"], pair["problems"]) == (0.25, 0.75, 0.0, 4)
    same = paired_comparison(first, hand_problems())
    assert same["difference_pass@1"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0} and same["ties"] == 1.0


@pytest.mark.slow
def test_paired_comparison_in_report_and_metrics(tmp_path, two_critics):
    out = tmp_path / "r"
    results = evaluate_files(list(two_critics), out)
    assert "paired_vs_first" not in results["good"]
    pair = results["bad"]["paired_vs_first"]
    # rollouts pass, fail, fail, pass. good picks A 0.9 pass, B 0.8 fail, C 0.9 pass; bad: A fail, B pass, C fail
    assert pair["against"] == "good" and pair["difference_pass@1"]["mean"] == pytest.approx(-100 / 3)
    lo, hi = bootstrap_ci(np.array([-1.0, 1.0, -1.0]))  # the same resamples as every other interval
    assert (pair["difference_pass@1"]["ci_low"], pair["difference_pass@1"]["ci_high"]) == pytest.approx((100 * lo,
                                                                                                           100 * hi))
    assert (pair["wins"], pair["ties"], pair["losses"]) == pytest.approx((1 / 3, 0, 2 / 3))
    assert json.loads((out / "metrics.json").read_text())["bad"]["paired_vs_first"] == json.loads(json.dumps(pair))
    report = (out / "report.md").read_text()
    assert "## Paired comparison with good" in report
    assert f"| bad | -33.3 [{100 * lo:.1f}, {100 * hi:.1f}] | 33% | 0% | 67% |" in report


def test_process_reward_has_intervals():
    m = evaluate_problems(hand_problems(token_values=True))
    prm = m["process_reward"]
    early, late = np.array([0.0, 0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0, 0.5])  # per-problem picks (see above)
    for f, per_problem in (("0.1", early), ("0.5", early), ("0.6", late), ("1.0", late)):
        lo, hi = bootstrap_ci(per_problem)
        assert prm[f]["reranked_pass@1"] == pytest.approx({"mean": 100 * per_problem.mean(), "ci_low": 100 * lo,
                                                           "ci_high": 100 * hi}), f
    # per-problem AUROC: reversed values early (P1 0, P2 0.5, P4: passes at 0.45 and 0.95 vs a fail at 0.45: 0.75)
    assert prm["0.1"]["auroc_mean_per_problem"] == pytest.approx((0 + 0.5 + 0.75) / 3)
    assert prm["1.0"]["auroc_mean_per_problem"] == pytest.approx(m["auroc_mean_per_problem"])
    assert prm["1.0"]["auroc_mean_per_problem_ci"] == pytest.approx(m["auroc_mean_per_problem_ci"])


@pytest.mark.slow
def test_process_reward_table_shows_intervals(tmp_path):
    out = write_report({"x": evaluate_problems(hand_problems(token_values=True))}, tmp_path / "r")
    lo, hi = bootstrap_ci(np.array([1.0, 0.0, 0.0, 0.5]))
    row = f"| 1.0 | 37.5 [{100 * lo:.1f}, {100 * hi:.1f}] | 0.484 | 0.583 ["
    assert row in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------------
# the resamples behind every interval (mutation testing found these unchecked)


def resampled_means(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The means of the 2000 resamples that bootstrap_ci draws with `seed` (one row of problem indices each)."""
    return x[np.random.default_rng(seed).integers(0, len(x), size=(2000, len(x)))].mean(axis=1)


def test_bootstrap_ci_defaults_are_2000_resamples_of_seed_0():
    """Every interval of a report comes from the same rows: 2000 resamples drawn with seed 0, the 2.5th and
    97.5th percentiles of their means (a continuous sample, so another seed, count or percentile shows)."""
    x = np.random.default_rng(7).random(25)
    means = resampled_means(x)
    assert bootstrap_ci(x) == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)), abs=1e-12)
    assert bootstrap_ci(x, seed=5) == pytest.approx(
        (np.percentile(resampled_means(x, 5), 2.5), np.percentile(resampled_means(x, 5), 97.5)), abs=1e-12)


def random_critics(n_problems: int = 30, seed: int = 11) -> tuple[list[ProblemScores], list[ProblemScores]]:
    """Two critics on the same rollouts (6 per problem, at least one pass and one fail each), values on a grid
    of tenths: ties at the top make the per-problem differences fractions, not just -1, 0, 1."""
    rng = np.random.default_rng(seed)
    first, other = [], []
    for i in range(n_problems):
        passed = rng.random(6) < 0.5
        passed[:2] = True, False
        first.append(ProblemScores(f"P{i}", rng.integers(0, 4, 6) / 10, passed.copy()))
        other.append(ProblemScores(f"P{i}", rng.integers(0, 4, 6) / 10, passed.copy()))
    return first, other


def test_paired_comparison_interval_is_the_seeded_bootstrap_of_the_differences():
    first, other = random_critics()
    diff = np.array([best_of_n(b.values, b.passed, 6) - best_of_n(a.values, a.passed, 6)
                     for a, b in zip(first, other, strict=True)])
    assert len(np.unique(diff)) > 3  # wins, ties and losses of different sizes
    intervals = set()
    for seed, kwargs in ((0, {}), (0, {"seed": 0}), (5, {"seed": 5})):
        pair = paired_comparison(first, other, **kwargs)["difference_pass@1"]
        means = resampled_means(diff, seed)
        assert (pair["mean"], pair["ci_low"], pair["ci_high"]) == pytest.approx(
            (100 * diff.mean(), 100 * np.percentile(means, 2.5), 100 * np.percentile(means, 97.5)), abs=1e-9)
        intervals.add((pair["ci_low"], pair["ci_high"]))
    assert len(intervals) == 2  # seed 5's interval differs from seed 0's: the check can tell seeds apart
    m = paired_comparison(first, other)
    assert (m["wins"], m["ties"], m["losses"]) == pytest.approx(
        (np.mean(diff > 0), np.mean(diff == 0), np.mean(diff < 0)))


def test_paired_comparison_refuses_rollouts_that_differ():
    first, other = random_critics(4)
    message = "paired_comparison needs the same rollouts in the same order (see share_rollouts)"
    renamed = [ProblemScores(p.problem_id + "x", p.values, p.passed) for p in other]
    flipped = [ProblemScores(p.problem_id, p.values, ~p.passed) for p in other]
    for bad in (renamed, flipped, other[::-1], other[:3]):
        with pytest.raises(ValueError) as e:
            paired_comparison(first, bad)
        assert str(e.value) == message

"""Non-learned rerankers over check results: each method reads its feature; bad input is named."""

import json

import pytest

from codevalue.checks import NONE_VALUE, mbr_exec_scores, srank_scores
from codevalue.codet import codet_scores
from codevalue.errors import DataError


def _checked(tmp_path):
    path = tmp_path / "checked.jsonl"
    common = dict(error_frac=0, timeout_frac=0, codet_top=0.0, srank_top=0.0)
    feats = [dict(common, pass_frac=0.5, codet=1.0, agree_frac=0.2, overlap=0.3, srank=0.7),
             dict(common, pass_frac=0.9, codet=0.4, agree_frac=0.6, overlap=0.1, srank=1.0)]
    path.write_text("\n".join(json.dumps({"problem_id": "P", "rollout_id": f"P/{i}", "passed": i == 0,
                                          "completion": "x", "check_features": f}) for i, f in enumerate(feats)))
    return path


@pytest.mark.parametrize("method,values", [("codet", [1.0, 0.4]), ("srank-style", [0.7, 1.0]),
                                           ("agreement", [0.2, 0.6]), ("overlap", [0.3, 0.1]),
                                           ("passed", [0.5, 0.9])])
def test_codet_methods_write_their_feature_as_value(tmp_path, method, values):
    out = tmp_path / "scores.jsonl"
    summary = codet_scores(_checked(tmp_path), out, method=method)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["value"] for r in rows] == values and summary["rollouts"] == 2
    assert rows[0] == {"problem_id": "P", "rollout_id": "P/0", "passed": True, "value": values[0]}


def test_codet_needs_check_results(tmp_path):
    path = tmp_path / "labeled.jsonl"
    path.write_text(json.dumps({"problem_id": "P", "rollout_id": "P/0", "passed": True}) + "\n")
    with pytest.raises(DataError, match=r"labeled.jsonl, record 1, field 'check_features'.*codevalue checks"):
        codet_scores(path, tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="unknown method"):
        codet_scores(_checked(tmp_path), tmp_path / "o.jsonl", method="bogus")


# A hand-worked problem: 4 generated asserts on 3 distinct inputs (f(2) is asked twice, expecting 4 and 5).
INPUTS = [0, 1, 1, 2]
SQUARE = {"passed": "1101", "outputs": ["h1", "h4", "h4", "h9"], "inputs": INPUTS}
DOUBLE = {"passed": "0100", "outputs": ["h2", "h4", "h4", "h6"], "inputs": INPUTS}
ZERO = {"passed": "0000", "outputs": ["h0", "h0", "h0", "h0"], "inputs": INPUTS}
RAISES = {"passed": "1100", "outputs": ["h1", "h4", "h4", "E"], "inputs": INPUTS}
# rollouts: the square twice with the same text (a), once with another text (b), double, constant, raising
CHECKS = [SQUARE, SQUARE, SQUARE, DOUBLE, ZERO, RAISES]
TEXTS = ["a", "a", "b", "c", "d", "e"]


def test_srank_by_hand():
    """Clusters {a, b}, {c}, {e}; d is constant, so invalid. Cluster sizes count distinct texts: 2/4, 1/4, 1/4;
    pass rates 3/4, 1/4, 2/4, so V = (3/8, 1/16, 1/8). Overlap on the 3 distinct inputs: square-double 1/3,
    square-raising 2/3 (an error never matches), double-raising 1/3. I @ V = (23, 11, 19) / 48."""
    assert srank_scores(CHECKS, TEXTS) == pytest.approx([1, 1, 1, 11 / 23, 0, 19 / 23])


def test_srank_weighs_each_assert_by_the_test_samples_that_wrote_it():
    """As SRank's code, which appends every sample's asserts without dedupe: the first assert written by 3
    samples, the others by one (6 in all). Pass rates 5/6, 1/6, 4/6, so V = (10, 1, 4) / 24 and
    I @ V = (13/24, 17/72, 11/24): double 17/39 of the best (11/23 unweighted), raising 11/13 (19/23)."""
    written = [{**c, "written": [3, 1, 1, 1]} for c in CHECKS]
    assert srank_scores(written, TEXTS) == pytest.approx([1, 1, 1, 17 / 39, 0, 11 / 13])
    ones = [{**c, "written": [1, 1, 1, 1]} for c in CHECKS]
    assert srank_scores(ones, TEXTS) == srank_scores(CHECKS, TEXTS)  # files without the field: each once


def test_srank_without_recorded_inputs_compares_per_assert():
    """Files written before checks recorded `inputs`: every answered column is an input (f(2) counted twice):
    overlaps 2/4, 3/4, 2/4, so I @ V = (1/2, 5/16, 7/16)."""
    old = [{k: v for k, v in c.items() if k != "inputs"} for c in CHECKS]
    assert srank_scores(old, TEXTS) == pytest.approx([1, 1, 1, 0.625, 0, 0.875])


def test_srank_invalid_rollouts_and_no_tests_score_zero():
    none_or_error = {"passed": "000", "outputs": [NONE_VALUE, "E", "T"], "inputs": [0, 1, 2]}
    never_returns = {"passed": "0", "outputs": ["T"], "inputs": [0]}
    assert srank_scores([none_or_error, none_or_error], ["a", "b"]) == [0.0, 0.0]
    assert srank_scores([never_returns], ["a"]) == [0.0]
    no_tests = {"passed": "", "outputs": [], "inputs": []}
    assert srank_scores([no_tests, no_tests], ["a", "b"]) == [0.0, 0.0]


def test_mbr_exec_by_hand():
    """Shares of the 8 rollouts with the same results on the 3 distinct inputs; all-failing ones score 0."""
    fails = {"passed": "0000", "outputs": ["E", "E", "E", "T"], "inputs": INPUTS}
    assert mbr_exec_scores([*CHECKS, fails, fails]) == pytest.approx([3 / 8] * 3 + [1 / 8] * 3 + [0, 0])


def test_cluster_methods_read_checks_per_problem(tmp_path):
    path = tmp_path / "checked.jsonl"
    recs = [{"problem_id": "P", "rollout_id": f"P/{i}", "passed": i < 3, "completion": t, "checks": c}
            for i, (c, t) in enumerate(zip(CHECKS, TEXTS, strict=True))]
    recs.insert(2, {"problem_id": "Q", "rollout_id": "Q/0", "passed": False, "completion": "q", "checks": DOUBLE})
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    codet_scores(path, tmp_path / "s.jsonl", method="srank")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["rollout_id"] for r in rows] == [r["rollout_id"] for r in recs]
    assert [r["value"] for r in rows] == pytest.approx([1, 1, 1, 1, 11 / 23, 0, 19 / 23], abs=1e-6)
    assert rows[0] == {"problem_id": "P", "rollout_id": "P/0", "passed": True, "value": 1.0}
    codet_scores(path, tmp_path / "m.jsonl", method="mbr-exec")
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["value"] for r in rows] == pytest.approx([0.5, 0.5, 1.0, 0.5, 1 / 6, 1 / 6, 1 / 6], abs=1e-6)
    with pytest.raises(DataError, match="field 'checks'"):
        codet_scores(_checked(tmp_path), tmp_path / "o.jsonl", method="srank")

"""Non-learned rerankers over check results: each method reads its feature; bad input is named."""

import json

import pytest

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


@pytest.mark.parametrize("method,values", [("codet", [1.0, 0.4]), ("srank", [0.7, 1.0]), ("agreement", [0.2, 0.6]),
                                           ("overlap", [0.3, 0.1]), ("passed", [0.5, 0.9])])
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

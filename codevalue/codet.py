"""Non-learned rerankers over the check results of `codevalue checks` (CodeT and relatives).

    codevalue codet CHECKED.jsonl -o SCORES.jsonl [--method codet|srank|mbr-exec|srank-style|agreement|overlap|passed]

- codet: CodeT's dual agreement (Chen et al., 2022): programs passing exactly the same generated tests
  form a consensus set S, scored |rollouts in S| x |tests S passes|.
- srank: SRank as published (To et al., "Functional Overlap Reranking for Neural Code Generation"), after
  the method of their released code (FSoft-AI4Code/SRank-CodeRanker), see `checks.srank_scores`.
- mbr-exec: MBR-exec (Shi et al., 2022) with the hard execution loss: the rollouts whose results on the
  distinct test inputs agree exactly with the most rollouts, see `checks.mbr_exec_scores`.
- srank-style: our earlier approximation of SRank (the `srank` check feature): functional overlap with every
  rollout weighted by the tests that rollout passes, without SRank's clusters, validity filter or cluster size.
- agreement: how many rollouts return the same values and pass bits on every generated test.
- overlap: mean functional overlap with all rollouts (share of tests with equal outputs).
- passed: the share of generated tests passed.

Every rollout gets its score as `value` (normalised to the problem's best where the method is a count),
so `codevalue evaluate` reports it like any critic. The hidden tests are never run.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .checks import mbr_exec_scores, srank_scores
from .errors import DataError
from .jsonl import read_jsonl, write_jsonl
from .rollouts import evaluated_completion

FEATURE_METHODS = {"codet": "codet", "srank-style": "srank", "agreement": "agree_frac", "overlap": "overlap",
                   "passed": "pass_frac"}
CLUSTER_METHODS = ("srank", "mbr-exec")  # computed here from the per-test outputs of a problem's rollouts
METHODS = ("codet", "srank", "mbr-exec", "srank-style", "agreement", "overlap", "passed")
CARRIED = ("problem_id", "rollout_id", "passed", "verdict", "sample_index")


def codet_scores(checked: str | os.PathLike, out: str | os.PathLike, method: str = "codet") -> dict[str, Any]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    rows, groups = [], defaultdict(list)
    for line, rec in read_jsonl(checked):
        if method in CLUSTER_METHODS:
            checks = rec.get("checks")
            if not isinstance(checks, dict) or any(k not in checks for k in ("passed", "outputs")):
                raise DataError(checked, "no check results: run `codevalue checks` on the labelled file first",
                                line=line, field="checks")
            groups[rec.get("problem_id")].append(len(rows))
            rows.append({k: rec[k] for k in CARRIED if k in rec} | {"value": 0.0})
            rows[-1]["_in"] = (checks, evaluated_completion(rec) if "completion" in rec
                               or "completion_truncated" in rec else rec.get("rollout_id"))
            continue
        feats = rec.get("check_features")
        if not isinstance(feats, dict) or FEATURE_METHODS[method] not in feats:
            raise DataError(checked, "no check results: run `codevalue checks` on the labelled file first",
                            line=line, field="check_features")
        rows.append({k: rec[k] for k in CARRIED if k in rec} | {"value": feats[FEATURE_METHODS[method]]})
    for indices in groups.values():
        checks = [rows[i]["_in"][0] for i in indices]
        if method == "srank":
            values = srank_scores(checks, [rows[i]["_in"][1] for i in indices])
        else:
            values = mbr_exec_scores(checks)
        for i, v in zip(indices, values, strict=True):
            rows[i]["value"] = round(v, 6)
            del rows[i]["_in"]
    write_jsonl(out, rows)
    return {"rollouts": len(rows), "method": method, "out": str(Path(out))}

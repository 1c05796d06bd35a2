"""Non-learned rerankers over the check results of `codevalue checks` (CodeT and relatives).

    codevalue codet CHECKED.jsonl -o SCORES.jsonl [--method codet|srank|agreement|overlap|passed]

- codet: CodeT's dual agreement (Chen et al., 2022): programs passing exactly the same generated tests
  form a consensus set S, scored |rollouts in S| x |tests S passes|.
- agreement: how many rollouts return the same values on every generated test input (MBR-exec style).
- srank: functional overlap with every rollout weighted by the tests that rollout passes, after SRank
  (To et al., 2023); outputs compared on the generated tests' inputs.
- overlap: mean functional overlap with all rollouts (share of inputs with equal outputs).
- passed: the share of generated tests passed.

Every rollout gets its score as `value` (normalised to the problem's best where the method is a count),
so `codevalue evaluate` reports it like any critic. The hidden tests are never run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checks import FEATURES
from .errors import DataError
from .jsonl import read_jsonl, write_jsonl

METHODS = {"codet": "codet", "srank": "srank", "agreement": "agree_frac", "overlap": "overlap",
           "passed": "pass_frac"}
CARRIED = ("problem_id", "rollout_id", "passed", "verdict", "sample_index")


def codet_scores(checked: str | os.PathLike, out: str | os.PathLike, method: str = "codet") -> dict[str, Any]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    feature = METHODS[method]
    rows = []
    for line, rec in read_jsonl(checked):
        feats = rec.get("check_features")
        if not isinstance(feats, dict) or any(k not in feats for k in FEATURES):
            raise DataError(checked, "no check results: run `codevalue checks` on the labelled file first",
                            line=line, field="check_features")
        rows.append({k: rec[k] for k in CARRIED if k in rec} | {"value": feats[feature]})
    write_jsonl(out, rows)
    return {"rollouts": len(rows), "method": method, "out": str(Path(out))}

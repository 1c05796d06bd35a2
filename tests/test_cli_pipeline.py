"""`codevalue crossval` and `codevalue demo` run for real from the command line (beyond --help), small: a few
HumanEval problems, the 1m tiny model, one epoch. Programs run only in the project's sandbox (label, checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codevalue.cli import main
from codevalue.jsonl import read_jsonl
from codevalue.rollouts import bundled_codegen_rollouts

pytestmark = pytest.mark.slow  # labels, trains and scores

PIDS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"]
TINY = ["--tiny", "1m", "--epochs", "1", "--batch-size", "4", "--max-length", "96", "--quiet"]


def bundled_subset(out: Path, per_problem: int = 4) -> Path:
    """The first `per_problem` bundled CodeGen-16B samples of each of PIDS, as bundled_codegen_rollouts writes
    them (the real data, just less of it)."""
    everything = bundled_codegen_rollouts(out.with_suffix(".all.jsonl"))
    rows = [r for _, r in read_jsonl(everything) if r["problem_id"] in PIDS and r["sample_index"] < per_problem]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_crossval_command_scores_every_rollout_with_a_model_that_did_not_train_on_it(tmp_path, capsys):
    rollouts = bundled_subset(tmp_path / "rollouts.jsonl")
    labeled, targets, out = tmp_path / "labeled.jsonl", tmp_path / "targets.jsonl", tmp_path / "cv"
    assert main(["label", str(rollouts), "--problems", "humaneval", "-o", str(labeled), "--stop", "codex",
                 "--workers", "2", "--quiet"]) == 0
    assert main(["targets", str(labeled), "--problems", "humaneval", "-o", str(targets)]) == 0
    capsys.readouterr()
    assert main(["crossval", str(targets), "-o", str(out), "--folds", "2", "--name", "mine", *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.md'}" in printed and "mine (reranked)" in printed
    scores = [r for _, r in read_jsonl(out / "scores.jsonl")]
    assert sorted(r["rollout_id"] for r in scores) == sorted(r["rollout_id"] for _, r in read_jsonl(rollouts))
    assert all(0 <= r["value"] <= 1 for r in scores)
    summary = json.loads((out / "crossval.json").read_text())
    for fold, problems in summary["fold_problems"].items():  # each fold's model never saw the problems it scored
        meta = json.loads((out / f"fold-{fold}" / "model" / "codevalue.json").read_text())
        assert problems and not set(meta["train_problems"] + meta["eval_problems"]) & set(problems)
    assert sorted(p for ps in summary["fold_problems"].values() for p in ps) == PIDS
    for r in scores:  # the model that scored each rollout never trained (nor evaluated) on its problem
        meta = json.loads((out / f"fold-{r['fold']}" / "model" / "codevalue.json").read_text())
        assert r["problem_id"] not in meta["train_problems"] + meta["eval_problems"], r
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["mine"]["problems"] == 4 and metrics["mine"]["rollouts"] == 16


def test_demo_runs_the_whole_pipeline_on_the_bundled_samples(tmp_path, capsys, monkeypatch):
    """`codevalue demo` with the bundled samples cut to 4 problems x 4 samples: label (Codex stops), checks with
    the bundled generated tests, targets, cross-validated tiny critic, report with the CodeT baseline."""
    monkeypatch.setattr("codevalue.rollouts.bundled_codegen_rollouts", bundled_subset)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--workers", "2", *TINY]) == 0
    printed = capsys.readouterr().out
    for line in ["[1/5] label", "[2/5] checks", "[3/5] targets", "[4/5] crossval: 2 folds by problem, tiny-1m",
                 "[5/5] evaluate", "CodeT (ours) (reranked)", "oracle (any rollout passes)"]:
        assert line in printed, line
    labeled = [r for _, r in read_jsonl(out / "labeled.jsonl")]
    assert len(labeled) == 16 and {r["problem_id"] for r in labeled} == set(PIDS)
    from codevalue.rollouts import CODEX_STOP

    assert json.loads((out / "labeled.jsonl.meta.json").read_text())["settings"]["stop"] == list(CODEX_STOP)
    checked = [r for _, r in read_jsonl(out / "checked.jsonl")]
    assert len(checked) == 16 and all("checks" in r for r in checked)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert {m["problems"] for m in metrics.values()} == {4}

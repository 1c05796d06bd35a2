"""Cross-validation by problem: fold assignment, subsampling, and a tiny end-to-end run (tiny-1m models)."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

import codevalue.crossval as cv_mod
from codevalue.crossval import assign_folds, crossval, subsample
from codevalue.errors import CodevalueError
from codevalue.jsonl import read_jsonl
from codevalue.train import ValueTrainingArguments

# ---------------------------------------------------------------------------------------------------------
# assign_folds, subsample


def test_assign_folds_deterministic_balanced_complete():
    ids = [f"P{i}" for i in range(11)]
    folds = assign_folds(ids + ids[:3], 3, seed=7)  # duplicates count once
    assert set(folds) == set(ids)  # every problem in exactly one fold (a dict: one fold each)
    assert sorted(Counter(folds.values()).values()) == [3, 4, 4]
    assert assign_folds(list(reversed(ids)), 3, seed=7) == folds  # order of the input does not matter
    assert assign_folds(ids, 3, seed=7) == folds
    assert any(assign_folds(ids, 3, seed=s) != folds for s in range(1, 5))
    assert set(assign_folds(ids, 11).values()) == set(range(11))


@pytest.mark.parametrize("ids,folds,message", [
    (["a", "b", "c"], 1, "at least 2 folds"),
    (["a", "b", "c"], 0, "at least 2 folds"),
    (["a", "b", "a"], 3, "2 problems cannot fill 3 folds"),
])
def test_assign_folds_errors(ids, folds, message):
    with pytest.raises(CodevalueError, match=message):
        assign_folds(ids, folds)


def test_subsample_distinct_first_at_most_n():
    records = [{"problem_id": "A", "rollout_id": i, "completion_scored": c} for i, c in enumerate("xxxyyz")]
    records += [{"problem_id": "B", "rollout_id": i, "completion_scored": c} for i, c in enumerate("qq")]
    out = subsample(records, 3, seed=1)
    a = [r for r in out if r["problem_id"] == "A"]
    assert len(a) == 3 and {r["completion_scored"] for r in a} == {"x", "y", "z"}  # the 3 distinct ones
    assert sorted(r["rollout_id"] for r in out if r["problem_id"] == "B") == [0, 1]  # fewer than N: all kept
    assert subsample(records, 3, seed=1) == out
    two = subsample(records, 2, seed=0)
    assert Counter(r["problem_id"] for r in two) == {"A": 2, "B": 2}
    assert len({r["completion_scored"] for r in two if r["problem_id"] == "A"}) == 2
    five = [r for r in subsample(records, 5, seed=0) if r["problem_id"] == "A"]
    assert {r["completion_scored"] for r in five[:3]} == {"x", "y", "z"}  # duplicates only after
    assert subsample(records, None) is records and subsample(records, 0) is records


# ---------------------------------------------------------------------------------------------------------
# end to end


def synthetic_targets(n_problems: int = 6, rollouts: int = 4) -> list[dict]:
    records = []
    for i in range(n_problems):
        for j in range(rollouts):
            passed = j % 2 == 0
            completion = f"    return x + {j % 3}\n"  # rollouts 0 and 3 share a completion
            records.append({"problem_id": f"P{i}", "rollout_id": f"P{i}-{j}", "passed": passed,
                            "verdict": "passed" if passed else "failed", "sample_index": j,
                            "prompt": f"def f{i}(x):\n", "completion_scored": completion,
                            "value_targets": {"ends": [len(completion)], "values": [float(passed)]},
                            "label_class": 0 if passed else 1})
    return records


def make_args(out: Path, **overrides) -> ValueTrainingArguments:
    settings = dict(output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=4, max_length=64,
                    eval_fraction=0.0, report_to="none", disable_tqdm=True, use_cpu=True,
                    dataloader_pin_memory=False)
    return ValueTrainingArguments(**(settings | overrides))


def write_targets(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real 2-fold crossval with tiny-1m models; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("cv")
    targets = write_targets(root / "targets.jsonl", synthetic_targets())
    out = root / "run"
    logs: list[str] = []
    scores = crossval(targets, out, make_args(out), folds=2, tiny="1m", log=logs.append)
    return targets, out, scores, logs


def scored(path: Path) -> list[dict]:
    return [rec for _, rec in read_jsonl(path)]


def copy_run(run, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run[1], out)
    return out


def fake_trainer(calls: list, extra_train: list[str] | None = None, model_from: Path | None = None):
    """Stand-in for train_value_model: records the call, copies an existing model, returns its bookkeeping."""
    def fake(records, output_dir, args, base=None, tiny=None, resume=False):
        problems = sorted({str(r["problem_id"]) for r in records})
        calls.append(problems)
        meta = {"train_problems": sorted(problems + (extra_train or [])), "eval_problems": [], "train_seconds": 0}
        if model_from is not None:
            shutil.copytree(model_from, output_dir, dirs_exist_ok=True)
            sidecar = Path(output_dir) / "codevalue.json"
            sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | meta))
        return meta
    return fake


@pytest.mark.slow
def test_crossval_scores_every_rollout_once_by_a_model_that_never_saw_it(run):
    _, out, scores, logs = run
    records = synthetic_targets()
    rows = scored(scores)
    assert scores == out / "scores.jsonl"
    assert sorted(r["rollout_id"] for r in rows) == sorted(r["rollout_id"] for r in records)  # each exactly once
    summary = json.loads((out / "crossval.json").read_text())
    assert summary["folds"] == 2 and summary["per_problem"] is None
    fold_problems = {int(k): set(v) for k, v in summary["fold_problems"].items()}
    assert fold_problems[0] | fold_problems[1] == {f"P{i}" for i in range(6)}
    assert not fold_problems[0] & fold_problems[1] and len(fold_problems[0]) == len(fold_problems[1]) == 3
    assert fold_problems[0] == {p for p, f in assign_folds([f"P{i}" for i in range(6)], 2, 42).items() if f == 0}
    for k in (0, 1):
        meta = json.loads((out / f"fold-{k}" / "model" / "codevalue.json").read_text())
        seen = set(meta["train_problems"]) | set(meta["eval_problems"])
        assert seen == fold_problems[1 - k]  # trained on the other fold, all of it
        assert not seen & fold_problems[k]
        assert summary["train_seconds"][str(k)] == meta["train_seconds"]
    by_id = {r["rollout_id"]: r for r in records}
    for row in rows:
        assert row["problem_id"] in fold_problems[row["fold"]]
        src = by_id[row["rollout_id"]]
        assert (row["passed"], row["verdict"], row["sample_index"]) == (src["passed"], src["verdict"],
                                                                        src["sample_index"])
        assert "prompt" not in row and "value_targets" not in row
        assert 0 < row["value"] < 1 and row["token_values"]
        assert row["value"] == pytest.approx(row["token_values"][-1], abs=1e-4)
    # the same prompt + completion gets the same score
    first = {r["rollout_id"]: r["value"] for r in rows}
    assert all(first[f"P{i}-0"] == first[f"P{i}-3"] for i in range(6))
    assert [line for line in logs if "training" in line] == [
        "fold 1/2: training on 12 rollouts of 3 problems", "fold 2/2: training on 12 rollouts of 3 problems"]


@pytest.mark.slow
def test_crossval_rerun_reuses_fold_models(run, tmp_path, monkeypatch):
    targets, _, _, _ = run
    out = copy_run(run, tmp_path)
    weights = [out / f"fold-{k}" / "model" / "model.safetensors" for k in (0, 1)]
    mtimes = [w.stat().st_mtime_ns for w in weights]
    before = (out / "scores.jsonl").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was retrained")

    monkeypatch.setattr(cv_mod, "train_value_model", no_training)
    logs: list[str] = []
    crossval(targets, out, make_args(out), folds=2, tiny="1m", log=logs.append)
    assert logs == [f"fold 1/2: reusing {out / 'fold-0' / 'model'}", f"fold 2/2: reusing {out / 'fold-1' / 'model'}"]
    assert [w.stat().st_mtime_ns for w in weights] == mtimes
    assert (out / "scores.jsonl").read_text() == before


@pytest.mark.slow
def test_crossval_tampered_sidecar_retrains_instead_of_reusing(run, tmp_path, monkeypatch):
    """A fold model whose sidecar claims a held-out problem never matches the training problems, so it is
    retrained, not reused: tampering with the files cannot reach the 'trained on problems it is asked to
    score' guard (only a train_value_model that lies about its problems can; next test)."""
    targets, _, _, _ = run
    out = copy_run(run, tmp_path)
    sidecar = out / "fold-0" / "model" / "codevalue.json"
    meta = json.loads(sidecar.read_text())
    held_out = json.loads((out / "crossval.json").read_text())["fold_problems"]["0"]
    for tampered in ({"train_problems": sorted(meta["train_problems"] + held_out[:1])},
                     {"train_problems": meta["train_problems"][1:], "eval_problems": held_out[:1]}):
        sidecar.write_text(json.dumps(meta | tampered))
        calls: list = []
        monkeypatch.setattr(cv_mod, "train_value_model", fake_trainer(calls))
        logs: list[str] = []
        crossval(targets, out, make_args(out), folds=2, tiny="1m", log=logs.append)
        assert calls == [meta["train_problems"]]  # fold 0 retrained on its own training problems only
        assert logs[0].startswith("fold 1/2: training")
        assert logs[1].startswith("fold 1/2: scoring")  # a retrained fold never keeps its old scores
        assert logs[2].startswith("fold 2/2: reusing")


@pytest.mark.slow
def test_crossval_refuses_a_model_trained_on_held_out_problems(run, tmp_path, monkeypatch):
    targets, _, _, _ = run
    out = copy_run(run, tmp_path)
    (out / "fold-1" / "model" / "codevalue.json").unlink()  # fold 1 must be trained again
    held_out_of_fold_1 = json.loads((out / "crossval.json").read_text())["fold_problems"]["1"]
    calls: list = []
    monkeypatch.setattr(cv_mod, "train_value_model", fake_trainer(calls, extra_train=held_out_of_fold_1[:1]))
    with pytest.raises(CodevalueError, match="fold 1: the model trained on problems it is asked to score"):
        crossval(targets, out, make_args(out), folds=2, tiny="1m", log=lambda _: None)
    assert len(calls) == 1


@pytest.mark.slow
def test_crossval_rerun_with_new_folds_rescores(run, tmp_path, monkeypatch):
    targets, _, _, _ = run
    out = copy_run(run, tmp_path)
    ids = [f"P{i}" for i in range(6)]
    assert assign_folds(ids, 2, seed=1) != assign_folds(ids, 2, seed=42)
    donor = shutil.copytree(out / "fold-0" / "model", tmp_path / "donor")  # a loadable model for the fake
    calls: list = []
    monkeypatch.setattr(cv_mod, "train_value_model", fake_trainer(calls, model_from=donor))
    scores = crossval(targets, out, make_args(out, seed=1), folds=2, tiny="1m", log=lambda _: None)
    assert len(calls) == 2  # the folds changed, so both models were retrained
    fold_problems = json.loads((out / "crossval.json").read_text())["fold_problems"]
    rows = scored(scores)
    assert sorted(r["rollout_id"] for r in rows) == sorted(r["rollout_id"] for r in synthetic_targets())
    for row in rows:
        assert row["problem_id"] in fold_problems[str(row["fold"])]
        meta = json.loads((out / f"fold-{row['fold']}" / "model" / "codevalue.json").read_text())
        assert row["problem_id"] not in meta["train_problems"] + meta["eval_problems"]


def test_crossval_needs_enough_problems(tmp_path):
    records = [r for r in synthetic_targets() if r["problem_id"] in ("P0", "P1")]
    with pytest.raises(CodevalueError, match="2 problems cannot fill 3 folds"):
        crossval(records, tmp_path / "out", make_args(tmp_path / "out"), folds=3, tiny="1m")


@pytest.mark.slow
def test_crossval_retrains_when_the_recipe_changes(run, tmp_path, monkeypatch):
    targets, original, _, _ = run
    out = copy_run(run, tmp_path)
    calls: list = []
    monkeypatch.setattr(cv_mod, "train_value_model", fake_trainer(calls, model_from=original / "fold-0" / "model"))
    logs: list[str] = []
    crossval(targets, out, make_args(out, rank_weight=2.0), folds=2, tiny="1m", log=logs.append)
    assert len(calls) == 2 and [line for line in logs if "reusing" in line] == []
    assert json.loads((out / "fold-0" / "recipe.json").read_text())["rank_weight"] == 2.0
    logs.clear()
    crossval(targets, out, make_args(out, rank_weight=2.0), folds=2, tiny="1m", log=logs.append)
    assert len(calls) == 2 and len([line for line in logs if "reusing" in line]) == 2  # same recipe: reused


@pytest.mark.slow
def test_crossval_train_fraction_trains_on_fewer_problems_and_scores_the_same_folds(run, tmp_path, monkeypatch):
    """Learning curves: with 6 problems in 2 folds each model sees 3; at fraction 1/3 it sees one of them (seeded),
    still scores its whole held-out fold, and the fraction is part of the recipe (no reuse across fractions)."""
    targets, original, _, _ = run
    out = copy_run(run, tmp_path)
    calls: list = []
    monkeypatch.setattr(cv_mod, "train_value_model", fake_trainer(calls, model_from=original / "fold-0" / "model"))
    scores = crossval(targets, out, make_args(out), folds=2, tiny="1m", log=lambda _: None, train_fraction=1 / 3)
    folds = json.loads((out / "crossval.json").read_text())["fold_problems"]
    assert [len(c) for c in calls] == [1, 1]
    for k, trained in enumerate(calls):
        assert set(trained) <= {p for f, ps in folds.items() if int(f) != k for p in ps}
    assert len(scored(scores)) == len(synthetic_targets())
    assert json.loads((out / "fold-0" / "recipe.json").read_text())["train_fraction"] == pytest.approx(1 / 3)
    assert cv_mod.training_problems(["a", "b", "c", "d"], 0.5, 0) == cv_mod.training_problems(["d", "c", "b", "a"],
                                                                                              0.5, 0)
    assert len(cv_mod.training_problems(["a", "b", "c", "d"], 0.01, 0)) == 1
    with pytest.raises(CodevalueError, match="train_fraction"):
        crossval(targets, out, make_args(out), folds=2, tiny="1m", train_fraction=0)


def test_crossval_recipe_names_the_checks_text_only_when_read():
    assert "checks_text" not in cv_mod.training_recipe(make_args(Path("x")), None, "1m", None)
    recipe = cv_mod.training_recipe(make_args(Path("x"), read_checks=True), None, "1m", None)
    assert recipe["checks_text"] == cv_mod.CHECKS_TEXT_VERSION and "train_fraction" not in recipe

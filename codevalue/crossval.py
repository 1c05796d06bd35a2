"""Cross-validation by problem: every rollout is scored by a model that never saw its problem.

    codevalue crossval TARGETS.jsonl --folds 2 --tiny 4m -o runs/cv [train options]

Problems are shuffled (seeded) and dealt into K folds. For each fold a model is trained on the other
folds' problems and scores this fold's rollouts (each distinct prompt + completion once). Finished folds
are reused on a rerun. Output: OUT/scores.jsonl (like `codevalue score --per-token`, plus `fold`),
OUT/crossval.json (which problems each model trained on), OUT/fold-K/model.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from .checks import CHECKS_TEXT_VERSION
from .errors import CodevalueError
from .jsonl import read_jsonl, write_jsonl
from .model import ValueModel, input_suffix
from .train import MODE_OPTIONS, TRAIN_OPTIONS, ValueTrainingArguments, load_examples, train_value_model

KEPT_FIELDS = ("problem_id", "rollout_id", "passed", "verdict", "sample_index", "difficulty", "mean_logprob")


def assign_folds(problem_ids: list[str], folds: int, seed: int = 0) -> dict[str, int]:
    if folds < 2:
        raise CodevalueError("cross-validation needs at least 2 folds")
    ids = sorted(set(problem_ids))
    if len(ids) < folds:
        raise CodevalueError(f"{len(ids)} problems cannot fill {folds} folds")
    random.Random(seed).shuffle(ids)
    return {pid: i % folds for i, pid in enumerate(ids)}


def subsample(records: list[dict], per_problem: int | None, seed: int = 0) -> list[dict]:
    """At most `per_problem` rollouts of each problem, distinct completions first (duplicates add little)."""
    if not per_problem:
        return records
    rng = random.Random(seed)
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_problem[str(r["problem_id"])].append(r)
    out = []
    for recs in by_problem.values():
        seen, distinct, dupes = set(), [], []
        for r in recs:
            (dupes if r["completion_scored"] in seen else distinct).append(r)
            seen.add(r["completion_scored"])
        rng.shuffle(distinct)
        rng.shuffle(dupes)
        out += (distinct + dupes)[:per_problem]
    return out


def score_records(vm: ValueModel, records: list[dict], batch_size: int = 32) -> list[dict]:
    """Per-token scores for records with prompt + completion_scored (each distinct input scored once)."""
    scores = vm.score([r["prompt"] for r in records], [r["completion_scored"] for r in records], batch_size,
                      suffixes=[input_suffix(vm.spec, r, line=i) for i, r in enumerate(records, start=1)])
    out = []
    for r, s in zip(records, scores, strict=True):
        row = {k: r[k] for k in KEPT_FIELDS if k in r}
        row.update(value=round(s.final, 6), token_values=[round(v, 5) for v in s.values])
        out.append(row)
    return out


RECIPE_FIELDS = (*(name for name, option in TRAIN_OPTIONS.items() if option.get("recipe")), *MODE_OPTIONS,
                 "lora_alpha", "append_eos")


def training_recipe(args: ValueTrainingArguments, base: str | None, tiny: str | None,
                    per_problem: int | None, train_fraction: float = 1.0) -> dict[str, Any]:
    """What a fold model's training depended on besides its problems: a finished fold is reused only if
    this is unchanged (e.g. a rerun with --read-checks must not reuse models that never read checks, or
    models that read an older rendering of them)."""
    recipe = {"base": base, "tiny": tiny, "per_problem": per_problem} | {k: getattr(args, k) for k in RECIPE_FIELDS}
    if train_fraction != 1.0:  # absent at the default, so folds trained before the option are still reused
        recipe["train_fraction"] = train_fraction
    if args.read_checks:
        recipe["checks_text"] = CHECKS_TEXT_VERSION
    return recipe


def training_problems(problems: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of a fold's training problems (at least one), for learning curves: the held-out fold
    stays the same size, only the model sees fewer problems."""
    ids = sorted(problems)
    random.Random(seed).shuffle(ids)
    return set(ids[:max(1, round(fraction * len(ids)))])


def crossval(targets: str | os.PathLike | list[dict], out_dir: str | os.PathLike, args: ValueTrainingArguments,
             folds: int = 2, base: str | None = None, tiny: str | None = None, per_problem: int | None = None,
             batch_size: int = 32, log=print, train_fraction: float = 1.0) -> Path:
    """train_fraction < 1: each fold's model trains on that share of the other folds' problems (learning
    curves; the same held-out folds are scored)."""
    if not 0 < train_fraction <= 1:
        raise CodevalueError(f"train_fraction must be in (0, 1], not {train_fraction}")
    records = targets if isinstance(targets, list) else load_examples(targets)
    out = Path(out_dir)
    fold_of = assign_folds([str(r["problem_id"]) for r in records], folds, args.seed)
    all_scores: list[dict] = []
    summary: dict[str, Any] = {"folds": folds, "per_problem": per_problem, "train_fraction": train_fraction,
                               "fold_problems": {}, "train_seconds": {}}
    recipe = training_recipe(args, base, tiny, per_problem, train_fraction)
    for k in range(folds):
        fold_dir = out / f"fold-{k}"
        held_out = sorted(pid for pid, f in fold_of.items() if f == k)
        kept = training_problems([pid for pid, f in fold_of.items() if f != k], train_fraction, args.seed + k)
        train_recs = subsample([r for r in records if str(r["problem_id"]) in kept], per_problem, args.seed)
        test_recs = [r for r in records if fold_of[str(r["problem_id"])] == k]
        model_dir = fold_dir / "model"
        meta_path = model_dir / "codevalue.json"
        expected = sorted({str(r["problem_id"]) for r in train_recs})
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        scores_path = fold_dir / "scores.jsonl"
        recipe_path = fold_dir / "recipe.json"
        same_recipe = recipe_path.exists() and json.loads(recipe_path.read_text()) == recipe
        if meta is None or not same_recipe or sorted(meta["train_problems"] + meta["eval_problems"]) != expected:
            log(f"fold {k + 1}/{folds}: training on {len(train_recs)} rollouts of {len(expected)} problems")
            scores_path.unlink(missing_ok=True)  # scores of an earlier model must never be reused
            args.output_dir = str(fold_dir / "checkpoints")
            meta = train_value_model(train_recs, model_dir, args, base=base, tiny=tiny)
            recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
        else:
            log(f"fold {k + 1}/{folds}: reusing {model_dir}")
        if set(meta["train_problems"] + meta["eval_problems"]) & set(held_out):  # the whole point of crossval
            raise CodevalueError(f"fold {k}: the model trained on problems it is asked to score")
        if scores_path.exists() and sorted({str(r["problem_id"]) for _, r in read_jsonl(scores_path)}) != held_out:
            scores_path.unlink()  # written for another fold assignment
        if not scores_path.exists():
            log(f"fold {k + 1}/{folds}: scoring {len(test_recs)} rollouts of {len(held_out)} held-out problems")
            vm = ValueModel.from_pretrained(model_dir)
            write_jsonl(scores_path, [dict(r, fold=k) for r in score_records(vm, test_recs, batch_size)])
        all_scores += [rec for _, rec in read_jsonl(scores_path)]
        summary["fold_problems"][k] = held_out
        summary["train_seconds"][k] = meta.get("train_seconds")
    write_jsonl(out / "scores.jsonl", all_scores)
    (out / "crossval.json").write_text(json.dumps(summary | {"recipe": recipe}, indent=2) + "\n")
    return out / "scores.jsonl"

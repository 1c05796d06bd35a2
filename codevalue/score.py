"""Score rollouts with a trained value model.

    codevalue score MODEL_DIR ROLLOUTS.jsonl -o SCORES.jsonl [--per-token] [--problems humaneval]

Input: any rollouts file (`codevalue label` / `codevalue targets` output too). The prompt is the
record's `prompt` field when present, else taken from `--problems`; the completion is the text that
was run (`completion_truncated` when --stop cut it, else `completion`).
Output: the input fields plus `value` (the value at the last token: the outcome reward) and, with
--per-token, `token_values` and `token_offsets` ([start, end) character spans in the completion).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import read_jsonl, write_jsonl
from .model import ValueModel, input_suffix
from .problems import load_problems
from .targets import _prompt_of, evaluated_completion


def prompts_and_completions(numbered: list[tuple[int, dict]], source: object,
                            problems: str | None) -> tuple[list[str], list[str]]:
    """What the value model reads for each (line, record): the record's `prompt` (else its problem's, from
    `problems`) and the completion that was run. Errors name the file, line and field."""
    prompts_by_id = {p.problem_id: _prompt_of(p) for p in load_problems(problems)} if problems else {}
    prompts, completions = [], []
    for line, rec in numbered:
        if "completion" not in rec and "completion_scored" not in rec:
            raise DataError(source, "missing field", line=line, field="completion")
        prompt = rec.get("prompt")
        if prompt is None:
            pid = str(rec.get("problem_id"))
            if pid not in prompts_by_id:
                raise DataError(source, f"no prompt for problem {pid!r}: pass --problems", line=line,
                                field="problem_id")
            prompt = prompts_by_id[pid]
        prompts.append(prompt)
        completions.append(rec["completion_scored"] if "completion_scored" in rec else evaluated_completion(rec))
    return prompts, completions


def score_file(model: str | os.PathLike | ValueModel, rollouts: str | os.PathLike, out: str | os.PathLike,
               problems: str | None = None, per_token: bool = False, batch_size: int = 16,
               progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    vm = model if isinstance(model, ValueModel) else ValueModel.from_pretrained(model)
    numbered = list(read_jsonl(rollouts))
    records = [rec for _, rec in numbered]
    prompts, completions = prompts_and_completions(numbered, rollouts, problems)
    suffixes = [input_suffix(vm.spec, rec, rollouts, line) for line, rec in numbered]
    chunk = max(batch_size * 16, 256)
    for start in tqdm(range(0, len(records), chunk), disable=not progress, desc="score", unit="chunk"):
        end = start + chunk
        for rec, s in zip(records[start:end], vm.score(prompts[start:end], completions[start:end], batch_size,
                                                                  suffixes=suffixes[start:end]),
                          strict=True):
            rec["value"] = round(s.final, 6)
            if per_token:
                rec["token_values"] = [round(v, 5) for v in s.values]
                rec["token_offsets"] = [list(o) for o in s.offsets]
    write_jsonl(out, records)
    return {"rollouts": len(records), "out": str(Path(out))}

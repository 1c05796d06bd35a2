"""Mutation score per module from a finished `mutmut run` (what `make mutation` prints at the end).

    python benchmarks/mutation_scores.py [--survivors]

Reads mutmut 3's result files (mutants/codevalue/*.py.meta). Only the mutants `make mutation` asks for count:
every function of compare.py, targets.py and engine.py, the verdict functions of labels.py (judge, _judge_test,
_missing_verdict; the rest of labels.py is the engine stage), and evaluate.py's selection metrics (best-of-n with
its tie-averaged order, the bootstrap and the paired comparison; not the readers and the report writer).
A mutant that times out counts as killed (the tests noticed); one that no test reaches counts as a survivor.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

META = Path("mutants/codevalue")
SELECTED = {
    "compare": None,  # every function
    "targets": None,
    "labels": {"judge", "_judge_test", "_missing_verdict"},
    "evaluate": {"tie_averaged_order", "best_of_n", "_resamples", "bootstrap_ci", "_with_ci", "_reranked",
                 "paired_comparison"},
    "engine": None,
}
KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # failing tests, timeouts, caught by the type check
NOT_RUN = {None, 34}  # not checked yet, skipped
_NAME = re.compile(r"^codevalue\.(\w+)\.x(?:_|ǁ(\w+)ǁ)(\w+?)__mutmut_\d+$")


def function_of(mutant: str) -> tuple[str, str] | None:
    """(module, function) of a mutant name: codevalue.labels.x__judge_test__mutmut_3 -> ("labels", "_judge_test");
    a method's (codevalue.labels.xǁLabelStageǁjudge__mutmut_1) is "LabelStage.judge", never the function judge."""
    match = _NAME.match(mutant)
    if not match:
        return None
    module, cls, name = match.groups()
    return module, f"{cls}.{name}" if cls else name


def scores(meta_dir: Path = META) -> tuple[dict[str, Counter], dict[str, list[str]]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for module, functions in SELECTED.items():
        path = meta_dir / f"{module}.py.meta"
        if not path.exists():
            continue
        for mutant, code in json.loads(path.read_text())["exit_code_by_key"].items():
            where = function_of(mutant)
            if where is None or (functions is not None and where[1] not in functions):
                continue
            if code in NOT_RUN:
                counts[module]["not run"] += 1
            elif code in KILLED:
                counts[module]["killed"] += 1
            else:
                counts[module]["survived"] += 1
                survivors[module].append(mutant)
    return counts, survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants (see `mutmut show`)")
    args = parser.parse_args()
    counts, survivors = scores()
    if not counts:
        print(f"no mutmut results under {META}: run `make mutation` first")
        return 1
    print(f"{'module':<10} {'killed':>7} {'survived':>9} {'not run':>8} {'score':>7}")
    for module, c in counts.items():
        judged = c["killed"] + c["survived"]
        score = f"{100 * c['killed'] / judged:.1f}%" if judged else "-"
        print(f"{module:<10} {c['killed']:>7} {c['survived']:>9} {c['not run']:>8} {score:>7}")
    if args.survivors:
        for module, names in survivors.items():
            print(f"\n{module}:")
            print("\n".join(f"  {name}" for name in sorted(names, key=lambda n: (len(n), n))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Use the critic during search: reranking, PRM-guided early pruning, and an honest replay of pruning.

    codevalue rerank ROLLOUTS.jsonl -o BEST.jsonl [--model MODEL_DIR] [--problems humaneval]
    codevalue prune-replay SCORES.jsonl -o OUT [--every 32] [--thresholds 0.05 0.1] [--top-k 10 25] [--refill 10]

Reranking (`rerank`): score every rollout (each distinct prompt + completion once) and keep the
highest-valued rollout of each problem (ties: the first in file order). Without a model, the records'
`value` field is used (`codevalue score` output).

Early pruning (`prune`, `generate_with_pruning`): while N rollouts of a prompt are generated, every T
tokens each rollout still generating is scored as a prefix; those whose value is below `threshold`, or
outside the `top_k` best of those still generating, stop there. Rollouts that already finished are never
pruned (that saves nothing) and do not take top-k places. The budget saved is either kept (stop) or spent
on fresh rollouts that take the pruned ones' places (`refill`). The survivors are reranked by their final
value. Pruning never leaves a prompt without a candidate: when it would drop every rollout still
generating and none has finished, the best of them continues (so "reranked pass@1 of survivors" is never
an artefact of an empty set).

Replay (`prune_replay`): what pruning would have done, measured on recorded rollouts that were labelled and
scored per token (`codevalue crossval` / `codevalue score --per-token`: `token_values`, one value after
every completion token including the final end token). The value model is causal, so the value after token
t depends only on tokens <= t: `token_values[t - 1]` *is* the value the policy would have seen after
generating t tokens. Replay is therefore exact and needs no rescoring: truncate each rollout at the
checkpoints T, 2T, ..., read the prefix values, prune as the policy would, count the tokens generated
(a rollout pruned at t cost t tokens; one that finished cost all its tokens, the end token included),
rerank the survivors (tie-aware: `best_of_n` over survivors, the exact expectation under random
tie-breaking). Ties at the top-k boundary are broken by order in the file (generation order: random with
respect to content). The honest baseline is simply generating fewer rollouts: best-of-m without pruning,
whose expected cost is m/N of the tokens; each pruning row reports its gain over that curve at the same
token fraction. Left-truncated scores (programs longer than the model's input) are not detected.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CodevalueError, DataError
from .evaluate import best_of_n, bootstrap_ci
from .jsonl import read_jsonl, write_jsonl

# ------------------------------------------------------------------------------------------------- rerank


@dataclass
class RerankResult:
    picks: list[dict[str, Any]]  # one record per problem: the chosen rollout + value, n_candidates
    summary: dict[str, Any]


def rerank(rollouts: str | os.PathLike | list[dict], model: str | os.PathLike | Any | None = None,
           problems: str | None = None, out: str | os.PathLike | None = None, batch_size: int = 16) -> RerankResult:
    """Pick the highest-valued rollout of each problem.

    `model`: a `ValueModel` or checkpoint directory that scores every rollout (prompt: the record's `prompt`,
    else from `problems`; completion: `completion_scored`, else the text that was run), or None to use the
    records' `value` field. Picks keep their input fields plus `value` and `n_candidates`; `out` writes them
    as JSONL. When the rollouts are labelled (`passed`), the summary has the pass rate of the picks, the
    tie-aware expectation (`reranked_pass@1`), random choice and the oracle, in %.
    """
    source = rollouts if not isinstance(rollouts, list) else "<records>"
    records = [dict(r) for r in rollouts] if isinstance(rollouts, list) else [r for _, r in read_jsonl(rollouts)]
    for line, rec in enumerate(records, start=1):
        if "problem_id" not in rec:
            raise DataError(source, "missing field", line=line, field="problem_id")
    if model is not None:
        from .model import ValueModel, input_suffix
        from .score import prompts_and_completions

        vm = model if hasattr(model, "score") else ValueModel.from_pretrained(model)
        prompts, completions = prompts_and_completions(list(enumerate(records, start=1)), source, problems)
        suffixes = [input_suffix(vm.spec, rec, source, line) for line, rec in enumerate(records, start=1)]
        for rec, s in zip(records, vm.score(prompts, completions, batch_size, suffixes=suffixes), strict=True):
            rec["value"] = round(s.final, 6)
    else:
        for line, rec in enumerate(records, start=1):
            if not isinstance(rec.get("value"), (int, float)):
                raise DataError(source, "no value to rerank by: pass a model (--model) or score the rollouts "
                                        "first", line=line, field="value")
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        groups[str(rec["problem_id"])].append(rec)
    picks = []
    for recs in groups.values():
        values = np.array([float(r["value"]) for r in recs])
        best = int(np.argmax(values))  # first of the tied best
        picks.append(dict(recs[best], n_candidates=len(recs)))
    summary: dict[str, Any] = {"problems": len(groups), "rollouts": len(records)}
    if all("passed" in r for r in records):
        per = [(np.array([float(r["value"]) for r in recs]), np.array([bool(r["passed"]) for r in recs]))
               for recs in groups.values()]
        summary["picked_pass@1"] = 100 * float(np.mean([bool(p["passed"]) for p in picks]))
        summary["reranked_pass@1"] = 100 * float(np.mean([best_of_n(v, y, len(v)) for v, y in per]))
        summary["random_pass@1"] = 100 * float(np.mean([y.mean() for _, y in per]))
        summary["oracle_pass@1"] = 100 * float(np.mean([y.any() for _, y in per]))
    if out is not None:
        write_jsonl(out, picks)
        summary["out"] = str(out)
    return RerankResult(picks, summary)


# -------------------------------------------------------------------------------------------------- prune


def prune(values: Sequence[float] | np.ndarray, threshold: float | None = None, keep_top_k: int | None = None,
          min_keep: int = 0) -> np.ndarray:
    """Keep mask over rollouts still generating, from their values at a checkpoint.

    Dropped: value < threshold, or not among the `keep_top_k` highest (ties broken by position, earlier
    first). At least `min_keep` rollouts (the highest-valued) are kept whatever the rules say.

    >>> prune([0.9, 0.1, 0.5, 0.5], threshold=0.2, keep_top_k=2).tolist()
    [True, False, True, False]
    >>> prune([0.1, 0.05], threshold=0.5, min_keep=1).tolist()
    [True, False]
    """
    v = np.asarray(values, dtype=float)
    keep = np.ones(len(v), dtype=bool)
    if threshold is not None:
        keep &= v >= threshold
    order = np.argsort(-v, kind="stable")  # best first, earlier first among ties
    if keep_top_k is not None:
        keep[order[max(0, keep_top_k):]] = False
    if min_keep > 0 and keep.sum() < min(min_keep, len(v)):
        keep[order[:min_keep]] = True
    return keep


@dataclass(frozen=True)
class PrunePolicy:
    every: int = 32  # checkpoint every T generated tokens
    threshold: float | None = None
    top_k: int | None = None

    @property
    def name(self) -> str:
        parts = [f"every {self.every}"]
        if self.threshold is not None:
            parts.append(f"v<{self.threshold:g}")
        if self.top_k is not None:
            parts.append(f"top {self.top_k}")
        return ", ".join(parts)


@dataclass
class _Problem:
    problem_id: str
    token_values: list[np.ndarray]
    lengths: np.ndarray  # tokens each rollout generated (its token_values, end token included)
    final: np.ndarray  # final value (the `value` field)
    passed: np.ndarray


def _value_at(p: _Problem, i: int, t: int) -> float:
    return float(p.token_values[i][t - 1])


def replay_stop(p: _Problem, policy: PrunePolicy) -> tuple[np.ndarray, np.ndarray]:
    """Generate all N rollouts of a problem with pruning, no refill: (tokens generated per rollout,
    survivor mask)."""
    n = len(p.lengths)
    alive = np.ones(n, dtype=bool)
    generated = p.lengths.copy()
    t = policy.every
    while True:
        running = np.flatnonzero(alive & (p.lengths > t))
        if len(running) == 0:
            break
        finished_alive = bool((alive & (p.lengths <= t)).any())
        keep = prune([_value_at(p, i, t) for i in running], policy.threshold, policy.top_k,
                     min_keep=0 if finished_alive else 1)
        dropped = running[~keep]
        alive[dropped] = False
        generated[dropped] = t
        t += policy.every
    return generated, alive


def replay_refill(p: _Problem, policy: PrunePolicy, width: int, order: np.ndarray) -> tuple[int, np.ndarray]:
    """Start the first `width` rollouts of `order`, prune every T tokens, and start the next rollout of
    `order` in the place of each pruned one while the token budget lasts: what the first `width` rollouts
    cost without pruning (plain best-of-width on the same draws, which this is when nothing is pruned).
    A replacement starts only while budget is left and then runs to its end or its pruning, so the budget
    can be overshot; the tokens actually generated are returned with the survivor mask."""
    budget = int(p.lengths[order[:width]].sum())
    position = np.empty(len(order), dtype=int)
    position[order] = np.arange(len(order))
    progress: dict[int, int] = {int(i): 0 for i in order[:width]}
    survivors = np.zeros(len(p.lengths), dtype=bool)
    spent, nxt = 0, len(progress)
    while progress:
        for i in list(progress):
            step = min(policy.every, int(p.lengths[i]) - progress[i])
            progress[i] += step
            spent += step
            if progress[i] >= p.lengths[i]:
                survivors[i] = True
                del progress[i]
        if progress:
            running = np.array(sorted(progress, key=lambda i: position[i]))
            keep = prune([_value_at(p, i, progress[i]) for i in running], policy.threshold, policy.top_k,
                         min_keep=0 if survivors.any() else 1)
            for i in running[~keep]:
                del progress[int(i)]
                if nxt < len(order) and spent < budget:
                    progress[int(order[nxt])] = 0
                    nxt += 1
    return spent, survivors


def _load_problems(scores: str | os.PathLike | list[dict]) -> list[_Problem]:
    source = scores if not isinstance(scores, list) else "<records>"
    rows = scores if isinstance(scores, list) else [r for _, r in read_jsonl(scores)]
    groups: dict[str, list[dict]] = defaultdict(list)
    for line, rec in enumerate(rows, start=1):
        for name in ("problem_id", "passed", "token_values"):
            if name not in rec:
                raise DataError(source, "missing field (expected `codevalue crossval` or `codevalue score "
                                        "--per-token` output)", line=line, field=name)
        groups[str(rec["problem_id"])].append(rec)
    problems = []
    for pid, recs in groups.items():
        tvs = [np.asarray(r["token_values"], dtype=float) for r in recs]
        final = np.array([float(r["value"]) if "value" in r else (tv[-1] if len(tv) else 0.0)
                          for r, tv in zip(recs, tvs, strict=True)])
        problems.append(_Problem(pid, tvs, np.array([len(tv) for tv in tvs]), final,
                                 np.array([bool(r["passed"]) for r in recs])))
    if not problems:
        raise DataError(source, "no scored rollouts")
    return problems


def _ci(per_problem: np.ndarray, seed: int = 0) -> dict[str, float]:
    lo, hi = bootstrap_ci(per_problem, seed=seed)
    return {"mean": 100 * float(per_problem.mean()), "ci_low": 100 * lo, "ci_high": 100 * hi}


def prune_replay(scores: str | os.PathLike | list[dict], every: Iterable[int] = (32,),
                 thresholds: Iterable[float] = (0.05, 0.1, 0.2, 0.3), top_ks: Iterable[int] = (5, 10, 25, 50),
                 combine: bool = True, refill: int | None = None, permutations: int = 10,
                 seed: int = 0) -> dict[str, Any]:
    """Replay early pruning on recorded, per-token-scored rollouts (see the module docstring).

    Policies: every threshold alone, every top-k alone and (`combine`) each pair, at each checkpoint
    interval in `every`. Rows (`kind`):
      - "prune": all N rollouts generated with pruning, saved tokens not spent;
      - "refill" (with `refill=W`): W rollouts started, each pruned one replaced by a fresh rollout while
        less than the cost of W unpruned rollouts was spent; averaged over `permutations` random orders
        (a Monte Carlo estimate: with nothing pruned it is best-of-W up to that noise); top-k values >= W
        never bind and are left out;
      - "best_of_m": no pruning, m rollouts (the baseline curve; expected tokens m/N).
    Each row: tokens_generated, tokens_generated_fraction (of what generating every recorded rollout costs),
    survivors_per_problem, reranked_pass@1 (mean and 95% bootstrap interval over problems, in %),
    any_pass_survives (% of problems where a passing rollout survives) and, for pruning rows,
    gain_vs_best_of_m: pass@1 minus the best-of-m curve interpolated at the same token fraction.
    """
    problems = _load_problems(scores)
    total_tokens = int(sum(p.lengths.sum() for p in problems))
    n_max = max(len(p.lengths) for p in problems)
    rows: list[dict[str, Any]] = []

    # Baseline: best-of-m without pruning, every m (the curve the pruning rows are compared against).
    curve_f, curve_pass = [], []
    for m in range(1, n_max + 1):
        per = np.array([best_of_n(p.final, p.passed, m) for p in problems])
        tokens = sum(min(m, len(p.lengths)) / len(p.lengths) * p.lengths.sum() for p in problems)
        curve_f.append(tokens / total_tokens)
        curve_pass.append(100 * float(per.mean()))
        if m in (1, 2, 4, 8, 16, 32, 64, n_max):
            anyp = np.array([1 - math.comb(int((~p.passed).sum()), min(m, len(p.lengths)))
                             / math.comb(len(p.lengths), min(m, len(p.lengths))) for p in problems])
            rows.append({"kind": "best_of_m", "policy": f"best of {m}" + (" (rerank all)" if m == n_max else
                                                                          " (random)" if m == 1 else ""),
                         "m": m, "tokens_generated": round(tokens), "tokens_generated_fraction": tokens / total_tokens,
                         "survivors_per_problem": float(np.mean([min(m, len(p.lengths)) for p in problems])),
                         "reranked_pass@1": _ci(per, seed), "any_pass_survives": 100 * float(anyp.mean())})

    def gain(fraction: float, pass_at_1: float) -> float:
        return pass_at_1 - float(np.interp(fraction, curve_f, curve_pass))

    thresholds, top_ks = [None, *thresholds], [None, *top_ks]
    policies = [PrunePolicy(e, th, k) for e in every for th in thresholds for k in top_ks
                if (th is not None or k is not None) and (combine or th is None or k is None)]
    for policy in policies:
        if policy.every < 1:
            raise CodevalueError("--every must be at least 1")
        generated, per, anyp, surv = 0, [], [], []
        for p in problems:
            g, alive = replay_stop(p, policy)
            generated += int(g.sum())
            per.append(best_of_n(p.final[alive], p.passed[alive], int(alive.sum())))
            anyp.append(bool(p.passed[alive].any()))
            surv.append(int(alive.sum()))
        frac = generated / total_tokens
        r = _ci(np.array(per), seed)
        rows.append({"kind": "prune", "policy": policy.name, "every": policy.every, "threshold": policy.threshold,
                     "top_k": policy.top_k, "tokens_generated": generated, "tokens_generated_fraction": frac,
                     "survivors_per_problem": float(np.mean(surv)), "reranked_pass@1": r,
                     "any_pass_survives": 100 * float(np.mean(anyp)), "gain_vs_best_of_m": gain(frac, r["mean"])})
    if refill:
        rng = np.random.default_rng(seed)
        orders = {p.problem_id: [rng.permutation(len(p.lengths)) for _ in range(max(1, permutations))]
                  for p in problems}
        # top k >= W never binds with W running: such policies are the threshold alone (or no pruning)
        effective = {PrunePolicy(q.every, q.threshold, q.top_k if q.top_k is not None and q.top_k < refill else None)
                     for q in policies}
        for policy in sorted((q for q in effective if q.threshold is not None or q.top_k is not None),
                             key=lambda q: (q.every, q.threshold or 0, q.top_k or 0)):
            generated, per, anyp, surv = 0.0, [], [], []
            for p in problems:
                results = [replay_refill(p, policy, refill, o) for o in orders[p.problem_id]]
                generated += float(np.mean([s for s, _ in results]))
                per.append(np.mean([best_of_n(p.final[a], p.passed[a], int(a.sum())) for _, a in results]))
                anyp.append(np.mean([p.passed[a].any() for _, a in results]))
                surv.append(np.mean([a.sum() for _, a in results]))
            frac = generated / total_tokens
            r = _ci(np.array(per), seed)
            rows.append({"kind": "refill", "policy": f"width {refill}, {policy.name}", "width": refill,
                         "every": policy.every, "threshold": policy.threshold, "top_k": policy.top_k,
                         "tokens_generated": round(generated), "tokens_generated_fraction": frac,
                         "survivors_per_problem": float(np.mean(surv)), "reranked_pass@1": r,
                         "any_pass_survives": 100 * float(np.mean(anyp)), "gain_vs_best_of_m": gain(frac, r["mean"])})
    for r in rows:
        r["tokens_saved_fraction"] = 1 - r["tokens_generated_fraction"]
    return {"problems": len(problems), "rollouts": int(sum(len(p.lengths) for p in problems)),
            "total_tokens": total_tokens, "mean_tokens_per_rollout": total_tokens / sum(len(p.lengths)
                                                                                      for p in problems),
            "best_of_m_curve": {"tokens_generated_fraction": curve_f, "reranked_pass@1": curve_pass},
            "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    head = (f"{result['problems']} problems, {result['rollouts']} rollouts, {result['total_tokens']} tokens "
            f"({result['mean_tokens_per_rollout']:.1f} per rollout). pass@1 in % [95% CI over problems].\n")
    lines = [head, "| policy | tokens % | saved % | survivors | reranked pass@1 | vs best-of-m | any pass survives % |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        m = r["reranked_pass@1"]
        g = f"{r['gain_vs_best_of_m']:+.1f}" if "gain_vs_best_of_m" in r else "-"
        lines.append(f"| {r['policy']} | {100 * r['tokens_generated_fraction']:.1f} | "
                     f"{100 * r['tokens_saved_fraction']:.1f} | {r['survivors_per_problem']:.1f} | "
                     f"{m['mean']:.1f} [{m['ci_low']:.1f}, {m['ci_high']:.1f}] | {g} | {r['any_pass_survives']:.1f} |")
    return "\n".join(lines)


def plot_replay(result: dict[str, Any], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curve = result["best_of_m_curve"]
    ax.plot(100 * np.array(curve["tokens_generated_fraction"]), curve["reranked_pass@1"], color="gray",
            label="best-of-m, no pruning")
    markers = {"prune": "o", "refill": "s"}
    for kind in ("prune", "refill"):
        rows = [r for r in result["rows"] if r["kind"] == kind]
        for every in sorted({r["every"] for r in rows}):
            sel = [r for r in rows if r["every"] == every]
            ax.scatter([100 * r["tokens_generated_fraction"] for r in sel],
                       [r["reranked_pass@1"]["mean"] for r in sel], marker=markers[kind], s=18,
                       label=f"{'prune' if kind == 'prune' else 'prune + refill'}, every {every} tokens")
    ax.set(xlabel="tokens generated (% of all rollouts)", ylabel="reranked pass@1 of survivors (%)",
           title="PRM-guided early pruning (replay)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_replay(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prune_replay.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "prune_replay.md").write_text("# Early pruning, replayed\n\n" + format_table(result)
                                         + "\n\n![curve](prune_replay.png)\n")
    plot_replay(result, out / "prune_replay.png")
    return out


# ------------------------------------------------------------------------------------- pruned generation


@dataclass
class Candidate:
    index: int  # order in which the rollout was started
    token_ids: list[int] = field(default_factory=list)  # generated tokens, end token excluded
    text: str = ""  # the completion (cut at a stop sequence)
    tokens: int = 0  # tokens generated, end token included
    status: str = "running"  # running | finished (end token or stop sequence) | length | pruned
    value: float | None = None  # last value seen: prefix value, or the final value once finished
    checkpoints: list[tuple[int, float]] = field(default_factory=list)  # (tokens, prefix value)
    pruned_at: int | None = None


@dataclass
class PrunedGeneration:
    prompt: str
    candidates: list[Candidate]
    tokens_generated: int  # tokens sampled and kept, over all candidates (pruned ones included)
    prefill_tokens: int  # tokens re-read by the policy at the start of each round (no KV cache across rounds)
    rounds: int

    @property
    def survivors(self) -> list[Candidate]:
        return [c for c in self.candidates if c.status in ("finished", "length")]

    @property
    def best(self) -> Candidate | None:
        """The survivor with the highest final value (first started among ties)."""
        s = self.survivors
        return max(s, key=lambda c: (c.value, -c.index)) if s else None


def generate_with_pruning(model, tokenizer, value_model, prompt: str, n: int, every: int = 32,
                          threshold: float | None = None, top_k: int | None = None, max_new_tokens: int = 256,
                          refill: bool = False, budget_tokens: int | None = None, max_rollouts: int | None = None,
                          stop: Sequence[str] = (), value_prompt: str | None = None, do_sample: bool = True,
                          temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                          add_special_tokens: bool = True, score_batch_size: int = 16,
                          **generate_kwargs) -> PrunedGeneration:
    """Sample `n` completions of `prompt` from a Hugging Face causal LM, pruning with a value model.

    Generation runs in rounds of `every` new tokens: each round calls `model.generate` on the rollouts still
    running (their prompt + tokens so far, left-padded) with `max_new_tokens=every`. This re-reads each
    prefix once per round instead of keeping a KV cache across rounds (`prefill_tokens` counts that cost):
    simple, works with any `generate` backend, and on CPU the re-read costs little next to sampling. After
    each round the running rollouts are scored as prefixes (`value_model.score(..., finished=False)`,
    the value model reading `value_prompt`, default `prompt`, + the decoded completion so far) and pruned with
    `prune(values, threshold, top_k)`; finished ones are scored once as finished programs. A rollout ends at
    the end token, at a `stop` sequence (the text is cut there) or at `max_new_tokens` (status "length";
    still a candidate, scored as finished like any recorded rollout).

    `refill=True` spends the saved budget: a fresh rollout takes each pruned one's place while fewer than
    `budget_tokens` tokens (default `n * max_new_tokens`) were generated and fewer than `max_rollouts`
    (default `4 * n`) were started. Otherwise generation stops with the survivors.
    Returns every candidate with its status, values and token counts; `.best` is the reranked pick.
    """
    import torch

    if n < 1 or every < 1 or max_new_tokens < 1:
        raise ValueError("n, every and max_new_tokens must be at least 1")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    eos = generate_kwargs.pop("eos_token_id", tokenizer.eos_token_id)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    vprompt = prompt if value_prompt is None else value_prompt
    budget = n * max_new_tokens if budget_tokens is None else budget_tokens
    limit = 4 * n if max_rollouts is None else max_rollouts
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    sampling.update(generate_kwargs)
    candidates = [Candidate(i) for i in range(n)]
    generated = prefill = rounds = 0

    def score(cands: list[Candidate], finished: bool) -> None:
        if not cands:
            return
        scores = value_model.score([vprompt] * len(cands), [c.text for c in cands], score_batch_size, finished)
        for c, s in zip(cands, scores, strict=True):
            c.value = float(s.final)
            if not finished:
                c.checkpoints.append((c.tokens, c.value))

    while running := [c for c in candidates if c.status == "running"]:
        rounds += 1
        step = min(every, max(max_new_tokens - c.tokens for c in running))
        seqs = [prompt_ids + c.token_ids for c in running]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            if s:
                ids[row, width - len(s):] = torch.tensor(s)
                mask[row, width - len(s):] = 1
        prefill += int(mask.sum())
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=step,
                                 pad_token_id=pad, eos_token_id=sorted(eos_ids) or None, **sampling)
        newly_done = []
        for c, row in zip(running, out[:, width:].tolist(), strict=True):
            room = max_new_tokens - c.tokens
            hit = next((j for j, t in enumerate(row[:room]) if t in eos_ids), None)
            kept = row[:hit] if hit is not None else row[:room]
            c.token_ids += kept
            c.tokens += len(kept) + (hit is not None)
            text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
            cut = min((k for k in (text.find(s) for s in stop if s) if k >= 0), default=-1)
            c.text = text[:cut] if cut >= 0 else text
            if hit is not None or cut >= 0:
                c.status = "finished"
            elif c.tokens >= max_new_tokens:
                c.status = "length"
            if c.status != "running":
                newly_done.append(c)
            generated += len(kept) + (hit is not None)
        score(newly_done, finished=True)
        still = [c for c in running if c.status == "running"]
        score(still, finished=False)
        if still:
            any_survivor = any(c.status in ("finished", "length") for c in candidates)
            keep = prune([c.value for c in still], threshold, top_k, min_keep=0 if any_survivor else 1)
            for c, k in zip(still, keep, strict=True):
                if not k:
                    c.status, c.pruned_at = "pruned", c.tokens
                    if refill and len(candidates) < limit and generated < budget:
                        candidates.append(Candidate(len(candidates)))
    return PrunedGeneration(prompt, candidates, generated, prefill, rounds)


def generate_pruned_rollouts(problems: list, generator, out: str | os.PathLike, value_model: str | os.PathLike,
                             config, policy: PrunePolicy, refill: bool = False, chat: bool = True) -> dict[str, Any]:
    """`config.samples` rollouts per problem from a local HF `generator` (codevalue.generate.HFGenerator),
    pruned every `policy.every` tokens by the value model in directory `value_model`. Every candidate (pruned
    ones too, with `status` and `pruned_at`) is one rollout line, so `label` and `evaluate` read the output as
    usual. A problem's rollouts are written together: rerunning skips the problems already in `out`."""
    from .generate import build_prompt, problem_seed
    from .jsonl import JsonlAppender, read_completed_lines
    from .model import ValueModel
    from .rollouts import CODEX_STOP

    vm = ValueModel.from_pretrained(value_model)
    done = {str(r["problem_id"]) for r in read_completed_lines(out)}
    templated = bool(chat and getattr(generator.tokenizer, "chat_template", None))
    total = 0
    with JsonlAppender(out) as sink:
        for problem in problems:
            if problem.problem_id in done:
                continue
            prompt = build_prompt(problem, generator.tokenizer, chat)
            stop = config.stop if config.stop is not None else (CODEX_STOP if problem.kind == "check" else ())
            result = generate_with_pruning(
                generator.model, generator.tokenizer, vm, prompt, n=config.samples, every=policy.every,
                threshold=policy.threshold, top_k=policy.top_k, max_new_tokens=config.max_new_tokens,
                refill=refill, stop=stop, temperature=config.temperature, top_p=config.top_p,
                seed=problem_seed(config.seed, problem.problem_id), add_special_tokens=not templated,
                eos_token_id=sorted(generator.eos_ids))
            for c in result.candidates:
                sink.write({"problem_id": problem.problem_id, "rollout_id": f"{problem.problem_id}/p{c.index}",
                            "prompt": prompt, "completion": c.text, "status": c.status, "pruned_at": c.pruned_at,
                            "tokens_generated": c.tokens, "value": c.value,
                            "generator": {"name": generator.name, "backend": "hf",
                                          "pruned_with": str(value_model)},
                            "sampling": {"temperature": config.temperature, "top_p": config.top_p,
                                         "every": policy.every, "threshold": policy.threshold,
                                         "top_k": policy.top_k, "refill": refill}})
            sink.flush()
            total += len(result.candidates)
    return {"rollouts_written": total, "out": str(out)}


__all__ = ["rerank", "RerankResult", "prune", "PrunePolicy", "replay_stop", "replay_refill", "prune_replay",
           "format_table", "write_replay", "generate_with_pruning", "PrunedGeneration", "Candidate",
           "generate_pruned_rollouts"]

"""The `codevalue` command: one subcommand per pipeline stage, each a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CodevalueError

CODET_PUBLISHED = {"random pick (CodeT paper)": 22.8, "greedy": 29.7, "CodeT": 36.7,
                   "Coder-Reviewer": 42.6, "SRank": 43.1}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line, unless there is none to show (None, off, empty) or the help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or default == [] or "default" in help):
            return help
        return help + " (default: %(default)s)"


def _count(minimum: int):
    """argparse type: an integer >= minimum, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(ok: Callable[[float], bool], rule: str, kind: str = "a number") -> Callable[[str], float]:
    """argparse type: a float for which ok(value) holds, with a one-line error otherwise."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return parse


def _default(func: Callable, name: str) -> Any:
    """The default of parameter `name` of the Python function a command calls: each default is written once,
    in that signature, and the command line shows the same (a tuple default becomes a list, as nargs gives)."""
    default = inspect.signature(func).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{func.__qualname__}({name}) has no default")
    return list(default) if isinstance(default, tuple) else default


_seconds = _number(lambda v: v > 0, "must be positive", "seconds")
_positive = _number(lambda v: v > 0, "must be positive")
_fraction = _number(lambda v: 0 <= v < 1, "must be in [0, 1)")


def _add_label_options(p: argparse.ArgumentParser) -> None:
    from .labels import LabelConfig

    p.add_argument("--format", choices=["apps", "humaneval", "mbpp"], help="problem format (default: detect)")
    _add_field_options(p, LabelConfig, {"mode": str, "timeout": _seconds, "program_timeout": _seconds})
    stop = next(f for f in dataclasses.fields(LabelConfig) if f.name == "stop")
    p.add_argument("--stop", action="append", default=[], help=stop.metadata["help"])


def _add_ray_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the programs on a Ray cluster: auto (an existing one), local (start one here) or "
                        "HOST:PORT; one sandbox actor per node (needs pip install 'codevalue[ray]')")


def _add_field_options(p: argparse.ArgumentParser, cls: type, types: dict[str, Any]) -> None:
    """One option per field of dataclass `cls` named in `types`: --field-name, with the field's default and its
    metadata's help (and choices), checked by types[name]: each default and help text is written once, there."""
    for f in dataclasses.fields(cls):
        if f.name in types:
            p.add_argument("--" + f.name.replace("_", "-"), type=types[f.name], default=f.default,
                           choices=f.metadata.get("choices"), help=f.metadata["help"])


SANDBOX_OPTIONS = {"workers": _count(0), "memory_mb": _count(1), "output_limit": _count(1),
                   "stuck_seconds": _number(lambda v: v > 0, "must be > 0")}


def _add_sandbox_options(p: argparse.ArgumentParser) -> None:
    from .sandbox import SandboxConfig

    _add_field_options(p, SandboxConfig, SANDBOX_OPTIONS)


def _sandbox_config(args: argparse.Namespace):
    from .sandbox import SandboxConfig

    return SandboxConfig(**{name: getattr(args, name) for name in SANDBOX_OPTIONS})


def _label_config(args: argparse.Namespace):
    """The LabelConfig of the options `_add_label_options` and `_add_sandbox_options` added."""
    from .labels import LabelConfig
    from .rollouts import parse_stop

    return LabelConfig(mode=args.mode, timeout=args.timeout, program_timeout=args.program_timeout,
                       stop=parse_stop(args.stop), sandbox=_sandbox_config(args))


def cmd_label(args: argparse.Namespace) -> int:
    from .labels import label_rollouts

    if (args.rollouts is None) == (args.rollouts_option is None):
        raise CodevalueError("label: give the rollouts file once, as `codevalue label ROLLOUTS` (or --rollouts)")
    args.rollouts = args.rollouts or args.rollouts_option
    summary = label_rollouts(args.problems, args.rollouts, args.out, _label_config(args), progress=not args.quiet,
                             problem_format=args.format, ray=args.ray)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print(f"labelled {summary['rollouts']} rollouts of {summary['problems']} problems "
          f"({summary['executed_programs']} distinct programs run, {summary['resumed']} resumed) "
          f"in {summary['wall_seconds']} s")
    print(f"pass rate {100 * summary['pass_rate']:.1f}%  verdicts: "
          + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()))
    print(f"sandbox: {summary['sandbox']['description']}")
    nodes = summary["executor"]["nodes"]
    if summary["executor"]["kind"] != "local":
        print(f"executor: {summary['executor']['kind']}, {len(nodes)} nodes: "
              + ", ".join(f"{node[:12]} {n}" for node, n in nodes.items()))
    print(f"-> {summary['out']} (+ .meta.json, .programs.jsonl)")


def cmd_problems(args: argparse.Namespace) -> int:
    from collections import Counter

    from .problems import export_problems, load_problems

    problems = load_problems(args.source, format=args.format, split=args.split)
    by_id = {p.problem_id: p for p in problems}
    for pid in args.show:
        if pid not in by_id:
            raise CodevalueError(f"{args.source}: no problem {pid!r} (ids look like {problems[0].problem_id!r}; "
                                 "--list shows them all)")
    if args.export:
        n = export_problems(args.source, args.export, ids=args.show or None, format=args.format, split=args.split)
        print(f"wrote {n} problem records -> {args.export}")
        return 0
    if args.show:
        for pid in args.show:
            _show_problem(by_id[pid])
        return 0
    if args.list:
        for p in problems:
            print(f"{p.problem_id}\t{p.kind}\t{p.n_tests} tests\t{p.entry_point or '-'}")
        return 0
    kinds = Counter(p.kind for p in problems)
    no_tests = [p.problem_id for p in problems if p.n_tests == 0]
    print(f"{len(problems)} problems: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    if no_tests:
        print(f"{len(no_tests)} problems have NO tests (their rollouts are labelled infra_error): "
              + ", ".join(no_tests[:20]) + (" ..." if len(no_tests) > 20 else ""))
    return 0


def _show_problem(p, tests: int = 3) -> None:
    """One problem as a reader wants it: what the model is asked, and what decides pass."""
    print(f"== {p.problem_id} ({p.source}, {p.kind}{', entry point ' + p.entry_point if p.entry_point else ''}, "
          f"{p.n_tests} tests)")
    print(p.model_prompt.rstrip())
    if p.kind == "check":
        print(f"-- check code (runs after prompt + completion)\n{p.check_code.rstrip()}")
    for i, t in enumerate(p.tests[:tests]):
        print(f"-- test {i}: input {t.input!r}\n   expected {t.output!r}")
    if len(p.tests) > tests:
        print(f"-- ... {len(p.tests) - tests} more tests")


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox import Sandbox, describe_isolation

    with Sandbox(_sandbox_config(args)) as box:
        print(describe_isolation(box.isolation))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Your own problems and rollouts through the whole pipeline, each finished stage reused."""
    return run_pipeline(args, args.problems, Path(args.rollouts), args.tests, _label_config(args),
                        headline=f"{args.rollouts} on {args.problems}")


def cmd_demo(args: argparse.Namespace) -> int:
    """`run` on the bundled CodeGen-16B HumanEval samples and their generated tests."""
    from .checks import BUNDLED_TESTS
    from .labels import LabelConfig
    from .rollouts import CODEX_STOP, bundled_codegen_rollouts

    rollouts = Path(args.out) / "rollouts.jsonl"
    if not rollouts.exists():
        rollouts.parent.mkdir(parents=True, exist_ok=True)
        bundled_codegen_rollouts(rollouts)
    config = LabelConfig(stop=CODEX_STOP, sandbox=_sandbox_config(args))
    return run_pipeline(args, "humaneval", rollouts, BUNDLED_TESTS, config, published=CODET_PUBLISHED,
                        headline="HumanEval, CodeGen-16B samples (100 per problem)",
                        label_note="the 16,400 samples (truncated at the Codex stop list)")


def _input_digest(*paths: Path) -> str:
    """sha256 of the files' bytes: a derived file is rebuilt only when what it was made from changed."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def run_pipeline(args: argparse.Namespace, problems: str, rollouts: Path, tests: str | Path | None, config,
                 published: dict | None = None, headline: str = "", label_note: str = "the rollouts") -> int:
    """label, checks (when there are generated tests), targets, a cross-validated critic, the report, in
    args.out; label and checks resume, targets are rebuilt only when their input changed, crossval reuses
    finished folds."""
    from .checks import run_checks
    from .codet import codet_scores
    from .crossval import crossval
    from .evaluate import evaluate_files
    from .labels import label_rollouts
    from .targets import build_targets

    if args.read_checks and not tests:
        raise CodevalueError("--read-checks needs generated tests (--tests): the model reads their results")
    out = Path(args.out)
    labeled, checked = out / "labeled.jsonl", out / "checked.jsonl"
    steps = 5 if tests else 4
    step = iter(range(1, steps + 1))
    print(f"[{next(step)}/{steps}] label: run {label_note} against the hidden tests")
    _print_summary(label_rollouts(problems, rollouts, labeled, config, progress=not args.quiet,
                                  problem_format=getattr(args, "format", None)))
    baselines = {}
    if tests:
        print(f"[{next(step)}/{steps}] checks: run them on the generator's own tests (what is known at selection "
              "time)")
        summary = run_checks(labeled, problems, checked, tests=tests, sandbox=config.sandbox, progress=not args.quiet)
        print(f"{summary['programs_run']} programs run ({summary['resumed']} rollouts already checked), median "
              f"{summary['tests_per_problem']} generated tests per problem, {summary['wall_seconds']} s")
        for method, name in (("codet", "CodeT (ours)"), ("srank", "SRank (ours, as published)")):
            baselines[name] = out / f"{method}.jsonl"
            codet_scores(checked, baselines[name], method=method)
    print(f"[{next(step)}/{steps}] targets: per-prefix Monte-Carlo values")
    source = checked if args.read_checks else labeled
    targets = out / ("targets-checked.jsonl" if args.read_checks else "targets.jsonl")
    stamp = targets.with_name(targets.name + ".input.sha256")
    digest = _input_digest(source)
    if not targets.exists() or not stamp.exists() or stamp.read_text() != digest:
        build_targets(source, problems, targets)
        stamp.write_text(digest)
    reads = " reading the check results" if args.read_checks else ""
    print(f"[{next(step)}/{steps}] crossval: {args.folds} folds by problem, "
          f"{args.base or 'tiny-' + (args.tiny or args.tiny_default)} value models{reads}")
    scores = crossval(targets, out / "crossval", _training_args(args, out / "crossval"), folds=args.folds,
                      base=args.base, tiny=args.tiny, per_problem=args.per_problem,
                      batch_size=args.score_batch_size)
    print(f"[{next(step)}/{steps}] evaluate")
    name = f"value model ({args.tiny or args.base}{' + checks' if args.read_checks else ''})"
    results = evaluate_files([scores, *baselines.values()], out / "report", names=[name, *baselines],
                             published=published)
    print(f"\n{headline}; the value model is cross-validated by problem")
    _print_results(results, published)
    print(f"\nreport with plots: {out / 'report' / 'report.md'}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import build_targets

    summary = build_targets(args.labeled, args.problems, args.out, smooth=args.smooth)
    print(f"wrote value targets for {summary['rollouts']} rollouts of {summary['problems']} problems to "
          f"{args.out} ({summary['dropped_infra_error']} infra_error rollouts dropped)")
    return 0


def _add_train_options(p: argparse.ArgumentParser, tiny_default: str | None = None) -> None:
    """The training options, generated from ValueTrainingArguments' fields and train.TRAIN_OPTIONS (importing
    train.py costs seconds: build_parser does it only for the commands that train)."""
    from .model import TINY_SIZES
    from .train import DEFAULT_TINY, MODE_OPTIONS, TRAIN_OPTIONS, ValueTrainingArguments

    g = p.add_mutually_exclusive_group()
    g.add_argument("--base", help="HF causal LM name or path as backbone (e.g. microsoft/Phi-4-mini-instruct)")
    tiny_default = tiny_default or DEFAULT_TINY
    g.add_argument("--tiny", choices=list(TINY_SIZES), default=None,
                   help=f"offline tiny Phi-3 backbone (default: {tiny_default})")
    p.set_defaults(tiny_default=tiny_default)
    fields = {f.name: f for f in dataclasses.fields(ValueTrainingArguments)}
    g2 = p.add_mutually_exclusive_group()
    for name, option in MODE_OPTIONS.items():
        _add_field_option(g2, fields[name], option)
    g2.add_argument("--full", action="store_true", help="train every parameter")
    for name, option in TRAIN_OPTIONS.items():
        _add_field_option(p, fields[name], option)


def _add_field_option(p, f: dataclasses.Field, option: dict[str, Any]) -> None:
    """One training option: the field's default and help unless `option` gives the command line's own."""
    default = option.get("default", f.default)
    flag = option.get("flag", "--" + f.name.replace("_", "-"))
    kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": option.get("help", f.metadata.get("help"))}
    check = option.get("check")
    if isinstance(default, bool) or default is None:  # a switch (transformers leaves some unset: None)
        kwargs["default"] = bool(default)
        kwargs["action"] = argparse.BooleanOptionalAction if option.get("negatable") else "store_true"
    elif "choices" in option:
        kwargs["choices"] = option["choices"]
    else:
        kwargs["metavar"] = flag[2:].upper().replace("-", "_")
        kwargs["type"] = {"positive": _positive, "fraction": _fraction}.get(check) or (
            _count(check) if isinstance(check, int) else type(default))
    p.add_argument(flag, **kwargs)


def _training_args(args: argparse.Namespace, output_dir: Path, save_checkpoints: bool = False):
    from .train import TRAIN_OPTIONS, ValueTrainingArguments

    if not args.base and not args.tiny:
        args.tiny = args.tiny_default
    try:
        return ValueTrainingArguments(
            output_dir=str(output_dir), **{name: getattr(args, name) for name in TRAIN_OPTIONS},
            per_device_eval_batch_size=args.per_device_train_batch_size,
            train_last_layers=-1 if args.full else args.train_last_layers, lora_r=args.lora_r,
            weight_decay=0.01, warmup_steps=0.05, lr_scheduler_type="cosine", logging_steps=10,
            save_strategy="epoch" if save_checkpoints else "no", eval_strategy="epoch", disable_tqdm=args.quiet)
    except ValueError as e:  # transformers' checks of the arguments (e.g. --bf16 on a machine without support)
        raise CodevalueError(f"training options: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_value_model

    targs = _training_args(args, Path(args.out) / "checkpoints", args.save_checkpoints)
    meta = train_value_model(args.targets, args.out, targs, base=args.base, tiny=args.tiny, resume=args.resume)
    if targs.process_index != 0:  # launched on several processes: rank 0 reports
        return 0
    m = meta["metrics"]
    print(f"trained {meta['backbone']} ({meta['parameters']:,} parameters, {meta['trainable']}) on "
          f"{meta['train_examples']} rollouts / {meta['train_tokens']:,} tokens in {meta['train_seconds']} s; "
          f"train loss {m.get('train_loss')}, eval loss {m.get('eval_loss')} on {len(meta['eval_problems'])} "
          f"held-out problems -> {args.out}")
    if meta["processes"] > 1:
        print(f"{meta['processes']} processes, global batch {meta['global_batch_size']}, "
              f"{meta['optimizer_steps']} optimizer steps")
    return 0


def _add_crossval_options(p: argparse.ArgumentParser) -> None:
    """The cross-validation options of crossval, run and demo, with crossval()'s defaults."""
    from .crossval import crossval

    p.add_argument("--folds", type=_count(2), default=_default(crossval, "folds"),
                   help="cross-validation folds (models trained; more: slower, more training data per model)")
    p.add_argument("--per-problem", type=_count(1), default=_default(crossval, "per_problem"),
                   help="train on at most N rollouts per problem")
    p.add_argument("--score-batch-size", type=_count(1), default=_default(crossval, "batch_size"),
                   help="rollouts per forward pass when scoring")


def cmd_crossval(args: argparse.Namespace) -> int:
    from .crossval import crossval
    from .evaluate import evaluate_files

    out = Path(args.out)
    scores = crossval(args.targets, out, _training_args(args, out), folds=args.folds, base=args.base,
                      tiny=args.tiny, per_problem=args.per_problem, batch_size=args.score_batch_size,
                      train_fraction=args.train_fraction)
    results = evaluate_files([scores], out / "report", names=[args.name])
    _print_results(results)
    print(f"report: {out / 'report' / 'report.md'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_files

    results = evaluate_files(args.scores, args.out, names=args.names)
    _print_results(results)
    for name, m in results.items():
        if m["input"]["rollouts_dropped"]:
            print(f"{name}: left out {m['input']['rollouts_dropped']} rollouts not scored by every critic "
                  f"(problems dropped: {m['input']['problems_dropped']})")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _print_results(results: dict, published: dict | None = None) -> None:
    first = next(iter(results.values()))
    print(f"\n{'selection':<40}{'pass@1 %':>9}   95% CI (problems)")

    def row(name: str, m: dict) -> None:
        print(f"{name:<40}{m['mean']:>9.1f}   [{m['ci_low']:.1f}, {m['ci_high']:.1f}]")

    row("random pick (exact expectation)", first["random_pass@1"])
    if "first_sample_pass@1" in first:
        row("first sample", first["first_sample_pass@1"])

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"  # None: undefined (one class) or not a probability

    for name, m in results.items():
        row(f"{name} (reranked)", m["reranked_pass@1"])
        print(f"{'':<40}AUROC pooled {num(m['auroc_pooled'])}, per problem {num(m['auroc_mean_per_problem'])}, "
              f"ECE {num(m['ece'])}")
        if "paired_vs_first" in m:
            c, d = m["paired_vs_first"], m["paired_vs_first"]["difference_pass@1"]
            print(f"{'':<40}vs {c['against']}: {d['mean']:+.1f} points [{d['ci_low']:.1f}, {d['ci_high']:.1f}] "
                  f"(paired), wins {c['wins']:.0%} of problems, ties {c['ties']:.0%}")
    row("oracle (any rollout passes)", first["oracle_pass@1"])
    for name, value in (published or {}).items():
        print(f"{name + ' (published)':<40}{value:>9.1f}")


def cmd_checks(args: argparse.Namespace) -> int:
    from .checks import BUNDLED_TESTS, run_checks

    summary = run_checks(args.labeled, args.problems, args.out, tests=args.tests or BUNDLED_TESTS,
                         limit=args.max_tests, sandbox=_sandbox_config(args), progress=not args.quiet,
                         ray=args.ray, per_sample=args.tests_per_sample)
    print(f"checked {summary['rollouts']} rollouts ({summary['programs_run']} programs run, median "
          f"{summary['tests_per_problem']} generated tests per problem, {summary['problems_without_tests']} "
          f"problems without any, {summary['wall_seconds']} s) -> {summary['out']}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import pretrain_tiny_lm

    r = pretrain_tiny_lm(args.out, size=args.tiny, corpus=args.corpus, max_steps=args.max_steps,
                         batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
                         max_chars=args.max_chars, seed=args.seed, quiet=args.quiet)
    print(f"tiny-{r['size']} causal LM on {r['files']} files of {r['corpus']} ({r['corpus_tokens']:,} tokens): "
          f"{r['trained_tokens']:,} tokens in {r['seconds']} s, loss {r['first_loss']:.3f} -> {r['final_loss']:.3f}; "
          f"use it with --base {r['out']}")
    return 0


def cmd_codet(args: argparse.Namespace) -> int:
    from .codet import codet_scores

    summary = codet_scores(args.checked, args.out, method=args.method)
    print(f"{summary['method']} scores for {summary['rollouts']} rollouts -> {summary['out']}; "
          "rank them with `codevalue evaluate`")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .score import score_file

    summary = score_file(args.model, args.rollouts, args.out, problems=args.problems, per_token=args.per_token,
                         batch_size=args.batch_size, progress=not args.quiet, chunk_size=args.chunk_size,
                         ray_address=args.ray, ray_actors=args.ray_actors)
    print(f"scored {summary['rollouts']} rollouts -> {summary['out']}")
    return 0


MODEL_COMMANDS = ("train", "crossval", "score", "demo", "run", "pretrain", "rerank", "generate", "serve")


@contextlib.contextmanager
def _quiet_libraries(args: argparse.Namespace) -> Iterator[None]:
    """--quiet also silences the progress bars of transformers (weight loading) and huggingface_hub, restored
    afterwards (main() may be called again in the same process)."""
    if not getattr(args, "quiet", False) or args.command not in MODEL_COMMANDS:
        yield  # commands that load no model do not pay for importing transformers
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    was_on, hub_was_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
        if hub_was_on:
            enable_progress_bars()


# -----------------------------------------------------------------------------------------------------------
# generate, rerank, prune-replay, serve


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import EndpointGenerator, GenerateConfig, Generator, HFGenerator, generate_rollouts
    from .model import load_tokenizer
    from .problems import load_problems
    from .rollouts import parse_stop

    stop = None if args.stop is None else (() if args.stop == ["none"] else parse_stop(args.stop))
    config = GenerateConfig(mode=args.mode, stop=stop, **{name: getattr(args, name) for name in GENERATE_OPTIONS})
    chat = not args.no_chat_template
    if args.endpoint:
        if not args.model_name:
            raise CodevalueError("--endpoint needs --model-name (the model name the server serves)")
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        gen: Generator = EndpointGenerator(args.endpoint, args.model_name,
                                           api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                                           retries=args.retries, timeout=args.timeout, concurrency=args.concurrency,
                                           tokenizer=tokenizer, chat_template=chat)
    else:
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        gen = HFGenerator(args.model, tokenizer, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                          chat_template=chat)
    problems = load_problems(args.problems, format=args.format)[: args.limit]
    if args.prune_with:
        if args.endpoint:
            raise CodevalueError("--prune-with needs a local --model (the HF backend)")
        from .search import PrunePolicy, generate_pruned_rollouts

        policy = PrunePolicy(args.prune_every, args.prune_threshold, args.prune_top_k)
        s = generate_pruned_rollouts(problems, gen, args.out, args.prune_with, config, policy,
                                     refill=args.prune_refill, chat=chat)
        print(f"generated {s['rollouts_written']} rollouts with pruning by {args.prune_with} -> {args.out}")
        return 0
    s = generate_rollouts(problems, gen, args.out, config, progress=not args.quiet, tokenizer=tokenizer)
    print(f"generated {s['rollouts_written']} rollouts for {s['generated_problems']} problems "
          f"({s['skipped_problems']} already complete) in {s['wall_seconds']} s -> {s['out']}")
    return 0


GENERATE_OPTIONS = {"branches": _count(1), "per_branch": _count(1), "samples": _count(1), "temperature": float,
                    "top_p": float, "max_new_tokens": _count(1), "seed": int, "group_size": _count(1)}


def _add_generate_parser(subparsers) -> None:
    from .generate import EndpointGenerator, GenerateConfig, HFGenerator
    from .search import PrunePolicy

    p = subparsers.add_parser("generate", help="sample rollouts (the paper's branching trees) for a problem set")
    p.add_argument("--problems", required=True, help="problems file, bundled name (humaneval, apps-intro-train, "
                                                     "...) or hub dataset id")
    p.add_argument("-o", "--out", required=True, help="rollouts JSONL to write (resumed if it exists)")
    p.add_argument("--format", choices=["apps", "humaneval", "mbpp"], help="problem format (default: detect)")
    p.add_argument("--limit", type=int, help="only the first N problems")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="HF causal LM name or path, run locally")
    g.add_argument("--endpoint", help="OpenAI-compatible server URL (http://host:8000, .../v1 or .../v1/completions)")
    p.add_argument("--model-name", help="model name to request from --endpoint")
    p.add_argument("--tokenizer", help="tokenizer for prompts (default: --model's; with --endpoint only needed "
                                       "for a chat template)")
    p.add_argument("--no-chat-template", action="store_true", help="APPS prompts in the plain QUESTION/ANSWER "
                                                                   "format even if the tokenizer has a chat template")
    fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
    p.add_argument("--sampling", "--mode", dest="mode", default=fields["mode"].default,
                   choices=fields["mode"].metadata["choices"], help=fields["mode"].metadata["help"])
    _add_field_options(p, GenerateConfig, GENERATE_OPTIONS)
    p.add_argument("--stop", action="append", help=fields["stop"].metadata["help"])
    p.add_argument("--batch-size", type=_count(1), default=_default(HFGenerator, "batch_size"),
                   help="--model: sequences per generate() call")
    p.add_argument("--device", help="--model: torch device (default cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default=_default(HFGenerator, "dtype"),
                   help="--model: weights dtype (auto = bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--api-key", help="--endpoint: bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--retries", type=_count(0), default=_default(EndpointGenerator, "retries"),
                   help="--endpoint: retries on 429/5xx/connection errors")
    p.add_argument("--request-timeout", "--timeout", dest="timeout", type=_seconds,
                   default=_default(EndpointGenerator, "timeout"), help="--endpoint: seconds per HTTP request")
    p.add_argument("--concurrency", type=_count(1), default=_default(EndpointGenerator, "concurrency"),
                   help="--endpoint: requests in flight")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("PRM-guided early pruning (HF backend; --samples rollouts per problem)")
    g.add_argument("--prune-with", help="value model directory: prune rollouts while generating")
    g.add_argument("--prune-every", type=_count(1), default=_default(PrunePolicy, "every"),
                   help="score and prune every T new tokens")
    g.add_argument("--prune-threshold", type=float, help="drop rollouts whose value falls below this")
    g.add_argument("--prune-top-k", type=int, help="keep at most k running rollouts")
    g.add_argument("--prune-refill", action="store_true", help="spend the saved budget on fresh rollouts")
    p.set_defaults(func=cmd_generate)


def cmd_rerank(args: argparse.Namespace) -> int:
    from .search import rerank

    result = rerank(args.rollouts, model=args.model, problems=args.problems, out=args.out,
                    batch_size=args.batch_size)
    s = result.summary
    print(f"picked the best of {s['rollouts']} rollouts for {s['problems']} problems -> {args.out}")
    if "reranked_pass@1" in s:
        print(f"pass@1 %: picks {s['picked_pass@1']:.1f}, reranked (tie-aware expectation) "
              f"{s['reranked_pass@1']:.1f}, random {s['random_pass@1']:.1f}, oracle {s['oracle_pass@1']:.1f}")
    return 0


def cmd_prune_replay(args: argparse.Namespace) -> int:
    from .search import format_table, prune_replay, write_replay

    result = prune_replay(args.scores, every=args.every, thresholds=args.thresholds, top_ks=args.top_k,
                          combine=not args.no_combine, refill=args.refill, permutations=args.permutations,
                          seed=args.seed)
    result["source"] = str(args.scores)
    out = write_replay(result, args.out)
    print(format_table(result))
    print(f"\nwrote {out / 'prune_replay.json'}, {out / 'prune_replay.md'}, {out / 'prune_replay.png'}")
    return 0


def _add_search_parsers(subparsers) -> None:
    from .search import prune_replay, rerank

    p = subparsers.add_parser("rerank", help="pick the best rollout of each problem with a value model")
    p.add_argument("rollouts", help="rollouts JSONL (label/targets/score output works too)")
    p.add_argument("-o", "--out", required=True, help="JSONL of the picks, one per problem")
    p.add_argument("--model", help="codevalue model directory (default: use the records' `value` field)")
    p.add_argument("--problems", help="problems, when the rollouts carry no `prompt` field")
    p.add_argument("--batch-size", type=_count(1), default=_default(rerank, "batch_size"),
                   help="rollouts per forward pass")
    p.set_defaults(func=cmd_rerank)

    p = subparsers.add_parser(
        "prune-replay", help="replay PRM-guided early pruning on per-token scores",
        description="What PRM-guided early pruning would have saved and cost, replayed exactly on labelled rollouts "
                    "scored per token (the value model is causal: the value after token t is what the policy would "
                    "have seen). Each pruning policy is compared with generating fewer rollouts at the same token "
                    "budget. Details: the docstring of codevalue/search.py.")
    p.add_argument("scores", help="`codevalue crossval` scores.jsonl or `codevalue score --per-token` output "
                                  "of labelled rollouts")
    p.add_argument("-o", "--out", required=True, help="directory for prune_replay.json/.md/.png")
    p.add_argument("--every", type=int, nargs="+", default=_default(prune_replay, "every"),
                   help="checkpoint every T tokens (several: a curve for each)")
    p.add_argument("--thresholds", type=float, nargs="*", default=_default(prune_replay, "thresholds"),
                   help="drop rollouts whose value is below this")
    p.add_argument("--top-k", type=int, nargs="*", default=_default(prune_replay, "top_ks"),
                   help="keep only the k best rollouts still generating")
    p.add_argument("--no-combine", action="store_true", help="no threshold + top-k pairs")
    p.add_argument("--refill", type=int, metavar="W",
                   help="also replay W rollouts at a time with pruned ones replaced (spend the saved budget)")
    p.add_argument("--permutations", type=int, default=_default(prune_replay, "permutations"),
                   help="random generation orders for --refill")
    p.add_argument("--seed", type=int, default=_default(prune_replay, "seed"), help="seed of the --refill orders")
    p.set_defaults(func=cmd_prune_replay)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from .model import ValueModel
    from .rewards import ExecutionReward
    from .rollouts import parse_stop
    from .serve import API_KEY_ENV, create_app, resolve_api_key

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        hint = "pip install fastapi uvicorn"
        raise CodevalueError(f"`codevalue serve` needs FastAPI and uvicorn ({e}): {hint}") from None

    if args.model is None and args.problems is None:
        raise CodevalueError("serve: give a value model (MODEL), problems for execution rewards (--problems), or both")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    api_key = resolve_api_key(args.api_key)
    vm = ValueModel.from_pretrained(args.model, device=args.device, dtype=dtype) if args.model else None
    with contextlib.ExitStack() as stack:
        execution = None
        if args.problems is not None:
            execution = stack.enter_context(ExecutionReward(
                args.problems, mode=args.mode, shaping=args.shaping, timeout=args.timeout,
                program_timeout=args.program_timeout, stop=parse_stop(args.stop), sandbox=_sandbox_config(args),
                problem_format=args.format, max_infra_batches=args.max_infra_batches))
        app = create_app(vm, max_items=args.max_items, max_tokens=args.max_tokens, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_mb * 2**20,
                         model_name=args.name or str(args.model or "execution"), forward_batch=args.forward_batch,
                         max_padding=args.max_padding, api_key=api_key, execution=execution, combine=args.combine,
                         strip=parse_stop(args.strip), infra_reward=args.infra_reward)
        served = " + ".join(filter(None, [args.model and f"{args.model} on {vm.device}",
                                          execution and f"execution rewards on {args.problems}"]))
        print(f"codevalue: serving {served} at http://{args.host}:{args.port} "
              f"({'POST /v1/score, ' if vm else ''}POST /get_reward, GET /health)"
              + ("; requests need 'Authorization: Bearer KEY'" if api_key else ""), flush=True)
        if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"codevalue: warning: {args.host} is reachable from other machines and there is no API key "
                  f"(--api-key or {API_KEY_ENV})", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _add_serve_parser(subparsers) -> argparse.ArgumentParser:
    from . import serve
    from .rewards import SHAPINGS, ExecutionReward

    p = subparsers.add_parser(
        "serve", help="serve a value model and/or execution rewards over HTTP (reward server, OpenRLHF protocol)",
        description="Serve a value model over HTTP: POST /v1/score (values of prompt + completion items, per token "
                    "on request), POST /get_reward (OpenRLHF's remote reward-model protocol), GET /health. "
                    "Concurrent requests share forward passes. With --problems, /get_reward runs each response "
                    "against its problem's tests in the sandbox (execution rewards, as `codevalue label`). "
                    "Details: the docstring of codevalue/serve.py.")
    p.add_argument("model", nargs="?", help="codevalue model directory (optional with --problems)")
    p.add_argument("--problems", help="problems (file, directory or bundled name): /get_reward then runs each "
                                      "response against the problem its `labels` entry names, in the sandbox")
    p.add_argument("--shaping", choices=SHAPINGS, default=_default(ExecutionReward, "shaping"),
                   help="execution reward: 1/0 (binary) or the fraction of tests passed")
    p.add_argument("--combine", type=_number(lambda v: 0 <= v <= 1, "must be in [0, 1]"),
                   default=_default(serve.create_app, "combine"),
                   help="with MODEL and --problems: reward = (1 - W) * execution + W * value")
    p.add_argument("--strip", action="append", default=[],
                   help="end-of-response text to cut from queries (repeatable; the model's end and padding "
                        "tokens always are)")
    p.add_argument("--infra-reward", type=float, default=_default(serve.create_app, "infra_reward"),
                   help="execution reward of a program the sandbox could not run (extra_logs.infra_error is 1)")
    p.add_argument("--max-infra-batches", type=_count(0), default=_default(ExecutionReward, "max_infra_batches"),
                   help="answer 500 after this many requests in a row in which no program could run (0: never)")
    _add_label_options(p)
    # rewards: ExecutionReward's mode (real scripts, no tolerance a policy could learn to exploit)
    p.set_defaults(mode=_default(ExecutionReward, "mode"))
    _add_sandbox_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (set an API key before binding another address)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (default: the "
                        f"environment variable {serve.API_KEY_ENV}, which other users cannot see in `ps`)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: the checkpoint's)")
    p.add_argument("--max-items", type=int, default=serve.DEFAULT_MAX_ITEMS, help="items per request (else 413)")
    p.add_argument("--max-tokens", type=int, default=serve.DEFAULT_MAX_TOKENS, help="tokens per item (else 422)")
    p.add_argument("--max-body-mb", type=int, default=serve.DEFAULT_MAX_BODY_BYTES // 2**20,
                   help="request body size in MiB (else 413)")
    p.add_argument("--max-batch", type=int, default=serve.DEFAULT_MAX_BATCH, help="items per shared forward pass")
    p.add_argument("--forward-batch", type=int, default=None,
                   help="items per forward pass within a batch, sorted by length (default: --max-batch)")
    p.add_argument("--max-padding", type=float, default=_default(serve.create_app, "max_padding"),
                   help="padding a forward pass may add, as a fraction of its real tokens")
    p.add_argument("--max-wait-ms", type=float, default=serve.DEFAULT_MAX_WAIT_MS,
                   help="how long a batch waits for more items after its first, in ms")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--name", help="model name reported by /health and /v1/score (default: MODEL)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    p.set_defaults(func=cmd_serve)
    return p


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. command: the subcommand about to be parsed; the training options (generated from
    train.py's fields, whose import costs seconds) are built for it alone ("": for none). None: for every one."""
    from .checks import run_checks
    from .codet import codet_scores
    from .model import TINY_SIZES  # --tiny choices (torch is imported by the serve parser anyway)
    from .pretrain import pretrain_tiny_lm
    from .problems import load_problems
    from .score import score_file
    from .targets import build_targets

    def trains(name: str) -> bool:
        return command is None or command == name

    parser = argparse.ArgumentParser(prog="codevalue", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", help="run rollouts against their problems' tests and write verdicts")
    p.add_argument("--problems", required=True,
                   help="problems file (JSONL/JSONL.gz/Parquet), bundled name (humaneval, mbpp, "
                        "apps-intro-test, ...) or hub dataset id")
    p.add_argument("rollouts", nargs="?", help="rollouts JSONL: problem_id, rollout_id, completion")
    p.add_argument("--rollouts", dest="rollouts_option", metavar="ROLLOUTS", help="the same, as an option")
    p.add_argument("-o", "--out", required=True, help="labelled JSONL to write (resumed if it exists)")
    _add_label_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_sandbox_options(p)
    _add_ray_option(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("targets", help="per-prefix value targets from labelled rollouts")
    p.add_argument("labeled", help="`codevalue label` output")
    p.add_argument("--problems", required=True, help="the problems the rollouts answer (for their prompts)")
    p.add_argument("-o", "--out", required=True, help="targets JSONL to write")
    p.add_argument("--smooth", type=float, default=_default(build_targets, "smooth"),
                   help="Beta-prior strength pulling rarely seen prefixes toward the problem's pass rate")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("train", help="train a value model on `codevalue targets` output")
    p.add_argument("targets", help="`codevalue targets` output")
    p.add_argument("-o", "--out", required=True, help="model directory to write (a standard HF checkpoint)")
    if trains("train"):
        _add_train_options(p)
    p.add_argument("--save-checkpoints", action="store_true", help="keep a checkpoint per epoch (for --resume)")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in OUT/checkpoints")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("crossval", help="K models on problem folds; each problem scored by one that never saw it")
    p.add_argument("targets", help="`codevalue targets` output")
    p.add_argument("-o", "--out", required=True, help="directory for fold models, scores.jsonl and the report")
    p.add_argument("--name", default="value model", help="critic name in the report")
    p.add_argument("--quiet", action="store_true")
    if trains("crossval"):
        from .crossval import crossval

        _add_crossval_options(p)
        p.add_argument("--train-fraction", type=_number(lambda v: 0 < v <= 1, "must be in (0, 1]"),
                       default=_default(crossval, "train_fraction"),
                       help="each fold's model trains on this share of the other folds' problems (learning curves)")
        _add_train_options(p)
    p.set_defaults(func=cmd_crossval)

    p = sub.add_parser("evaluate", help="best-of-N, calibration and process-reward report from score files")
    p.add_argument("scores", nargs="+", help="`codevalue score --per-token` outputs, one per critic")
    p.add_argument("-o", "--out", required=True, help="report directory")
    p.add_argument("--names", nargs="+", help="critic names (default: file names)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("checks", help="run rollouts on the generator's own tests (selection-time checks)")
    p.add_argument("labeled", help="`codevalue label` output (its `passed` is only carried along)")
    p.add_argument("--problems", required=True, help="the problems (HumanEval/MBPP layout)")
    p.add_argument("--tests", help="generated tests JSONL (task_id, text); default: the bundled CodeGen-16B ones")
    p.add_argument("--max-tests", type=_count(1), default=_default(run_checks, "limit"),
                   help="generated tests kept per problem")
    p.add_argument("--tests-per-sample", type=_count(1), default=None, metavar="N",
                   help="keep only the first N asserts of each test-writing sample (CodeT's and SRank's code: 5); "
                        "default: all of them")
    p.add_argument("-o", "--out", required=True, help="checked JSONL to write (resumed if it exists)")
    p.add_argument("--quiet", action="store_true")
    _add_sandbox_options(p)
    _add_ray_option(p)
    p.set_defaults(func=cmd_checks)

    p = sub.add_parser("pretrain", help="language-model warm start of a tiny backbone on local Python code")
    pretrain_default = functools.partial(_default, pretrain_tiny_lm)
    p.add_argument("--tiny", choices=list(TINY_SIZES), default=pretrain_default("size"), help="backbone size")
    p.add_argument("-o", "--out", required=True, help="checkpoint directory (then: --base OUT)")
    p.add_argument("--corpus", default=pretrain_default("corpus"),
                   help="stdlib, site-packages, or a directory of .py files; never the benchmark data")
    p.add_argument("--max-steps", type=_count(1), default=pretrain_default("max_steps"), help="optimizer steps")
    p.add_argument("--batch-size", type=_count(1), default=pretrain_default("batch_size"), help="sequences per step")
    p.add_argument("--block-size", type=_count(8), default=pretrain_default("block_size"),
                   help="tokens per training sequence")
    p.add_argument("--lr", type=_positive, default=pretrain_default("lr"), help="peak learning rate")
    p.add_argument("--max-chars", type=_count(1), default=pretrain_default("max_chars"),
                   help="characters of the corpus to read")
    p.add_argument("--seed", type=int, default=pretrain_default("seed"),
                   help="seed of the data order and initialisation")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("codet", help="non-learned rerankers (CodeT dual agreement, ...) over check results")
    p.add_argument("checked", help="`codevalue checks` output")
    p.add_argument("--method", default=_default(codet_scores, "method"),
                   choices=["codet", "srank", "mbr-exec", "srank-style", "agreement", "overlap", "passed"],
                   help="codet: dual agreement; srank: SRank as published (clusters, functional overlap, size x "
                        "tests passed); mbr-exec: most rollouts with identical results (Shi et al.); srank-style: "
                        "our earlier overlap weighted by tests passed; agreement: share with identical outputs; "
                        "overlap: mean output similarity; passed: tests passed")
    p.add_argument("-o", "--out", required=True, help="scores JSONL for `codevalue evaluate`")
    p.set_defaults(func=cmd_codet)

    p = sub.add_parser("score", help="values of rollouts under a trained model")
    p.add_argument("model", help="codevalue model directory")
    p.add_argument("rollouts", help="rollouts JSONL (label/targets output works too)")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--problems", help="problems, when the rollouts carry no `prompt` field")
    p.add_argument("--per-token", action="store_true", help="also write the value after every token")
    p.add_argument("--batch-size", type=_count(1), default=_default(score_file, "batch_size"),
                   help="rollouts per forward pass")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="score on a Ray cluster, one model replica per actor: auto (a running cluster), local "
                        "(start one here) or HOST:PORT; MODEL must be at the same path on every node")
    p.add_argument("--ray-actors", type=_count(1), help="model replicas (default: one per GPU, else one per node)")
    p.add_argument("--chunk-size", type=_count(1),
                   help="rollouts per model call, the unit sent to a Ray actor (default 16 batches, at least 256)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_score)

    _add_generate_parser(sub)
    _add_serve_parser(sub)
    _add_search_parsers(sub)

    p = sub.add_parser("problems", help="load a problem set and report what it holds")
    p.add_argument("source", help="file, bundled name or hub dataset id")
    p.add_argument("--format", choices=["apps", "humaneval", "mbpp"])
    p.add_argument("--split", default=_default(load_problems, "split"), help="split, for hub datasets")
    p.add_argument("--list", action="store_true", help="one line per problem: id, kind, tests, entry point")
    p.add_argument("--show", action="append", default=[], metavar="ID",
                   help="print this problem: prompt, check code or first tests (repeatable)")
    p.add_argument("--export", metavar="OUT.jsonl",
                   help="write the problems' records unchanged (only the --show ones, when given)")
    p.set_defaults(func=cmd_problems)

    p = sub.add_parser("sandbox", help="show the isolation in force on this machine")
    _add_sandbox_options(p)
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("run", help="label, checks, targets, a cross-validated critic and its report, on your data")
    p.add_argument("--problems", required=True, help="problems file, bundled name or hub dataset id")
    p.add_argument("--rollouts", required=True, help="rollouts JSONL: problem_id, rollout_id, completion")
    p.add_argument("--tests", help="generated tests JSONL (task_id, text) for selection-time checks and the CodeT / "
                                   "SRank-style baselines; none: no checks")
    p.add_argument("-o", "--out", required=True, help="working directory (finished stages are reused)")
    _add_label_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_sandbox_options(p)
    if trains("run"):
        _add_crossval_options(p)
        _add_train_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="`run` on the bundled HumanEval samples and generated tests (see README)")
    p.add_argument("--out", default="runs/demo", help="working directory (finished stages are reused)")
    p.add_argument("--quiet", action="store_true")
    _add_sandbox_options(p)
    if trains("demo"):
        _add_crossval_options(p)
        _add_train_options(p, tiny_default="1m")
    # The best cross-validated recipe so far (benchmarks/RESULTS.md): group-wise batches + listwise loss,
    # reading the generated-test results after the program.
    p.set_defaults(per_problem=32, num_train_epochs=3, train_last_layers=-1, max_length=1024, learning_rate=1e-3,
                   group_size=8, per_device_train_batch_size=2, rank_weight=3.0, read_checks=True)
    p.set_defaults(func=cmd_demo)
    for p in sub.choices.values():  # subcommands added elsewhere too
        p.formatter_class = _HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        command = next((a for a in argv if not a.startswith("-")), "")  # subcommands come before their options
        args = build_parser(command).parse_args(argv)
        with _quiet_libraries(args):
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except CodevalueError as e:
        print(f"codevalue: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `codevalue ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a program killed by the closed pipe
    except KeyboardInterrupt:
        print("\ncodevalue: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

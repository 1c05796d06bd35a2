"""The `codevalue` command: exit codes, messages and the label/problems subcommands on tiny inputs."""

import argparse
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import codevalue
from codevalue.cli import _sandbox_config, _training_args, build_parser, main
from codevalue.problems import BUNDLED, load_problems

FIXTURES = Path(__file__).parent / "fixtures"


def canonical(task_id: str) -> str:
    with gzip.open(BUNDLED["humaneval"], "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["task_id"] == task_id:
                return record["canonical_solution"]
    raise KeyError(task_id)


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize("argv,line", [
    (["problems", "humaneval"], "164 problems: check 164"),
    (["problems", "mbpp"], "427 problems: check 427"),
    (["problems", "apps-test-mixed"], "449 problems: call 255, stdin 194"),
    (["problems", str(FIXTURES / "mbpp_original.jsonl")], "2 problems: check 2"),
    (["problems", str(FIXTURES / "mbpp_original.jsonl"), "--format", "mbpp"], "2 problems: check 2"),
])
def test_problems(capsys, argv, line):
    assert main(argv) == 0
    assert capsys.readouterr().out == line + "\n"


def test_problems_reports_problems_without_tests(tmp_path, capsys):
    path = write_lines(tmp_path / "apps.jsonl", [
        {"problem_id": 1, "question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": ["1"]})},
        {"problem_id": 2, "question": "q", "input_output": ""},
    ])
    assert main(["problems", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2 problems: stdin 2",
        "1 problems have NO tests (their rollouts are labelled infra_error): 2",
    ]


@pytest.mark.slow
def test_label_tiny_file(tmp_path, capsys):
    body = canonical("HumanEval/2")
    rollouts = write_lines(tmp_path / "r.jsonl", [
        {"problem_id": "HumanEval/2", "rollout_id": "a", "completion": body + "\ndef junk(:\n"},
        {"problem_id": "HumanEval/2", "rollout_id": "b", "completion": body},  # same program once truncated
        {"problem_id": "HumanEval/0", "rollout_id": "c", "completion": "    return True\n"},
    ])
    out = tmp_path / "labelled.jsonl"
    argv = ["label", "--problems", "humaneval", "--rollouts", str(rollouts), "--out", str(out),
            "--stop", "codex", "--workers", "2", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("labelled 3 rollouts of 2 problems (2 distinct programs run, 0 resumed) in ")
    assert printed[1] == "pass rate 66.7%  verdicts: pass 2, wrong_answer 1"
    assert printed[2].startswith("sandbox: ")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["rollout_id"], r["verdict"]) for r in records] == [("a", "pass"), ("b", "pass"),
                                                                   ("c", "wrong_answer")]
    meta = json.loads((tmp_path / "labelled.jsonl.meta.json").read_text())
    assert meta["stop"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert meta["sandbox"]["workers"] == 2


@pytest.mark.parametrize("argv", [[], ["label"], ["problems"], ["sandbox"], ["demo"], ["checks"], ["codet"],
                                  ["pretrain"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(["usage: codevalue"] + argv))
    if argv == ["label"]:
        assert "--mode {apps,lcb,strict}" in out and "--stop STOP" in out


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["label", "--problems", "humaneval", "--rollouts", "r", "--out", "o", "--mode", "fast"])
    assert e.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_missing_problems_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["problems", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codevalue: error: {missing}: file not found")


def test_bad_rollouts_file(tmp_path, capsys):
    rollouts = write_lines(tmp_path / "r.jsonl", [
        {"problem_id": "HumanEval/0", "rollout_id": "a", "completion": ""}, '{"problem_id": "HumanEval/0", '])
    out = tmp_path / "out.jsonl"
    argv = ["label", "--problems", "humaneval", "--rollouts", str(rollouts), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codevalue: error: {rollouts}, record 2: invalid JSON")
    assert not out.exists()


def test_bad_problems_record(capsys):
    assert main(["problems", str(FIXTURES / "mbpp_original.jsonl"), "--format", "apps"]) == 2
    err = capsys.readouterr().err
    assert f"{FIXTURES / 'mbpp_original.jsonl'}, record 1, field 'problem_id': missing field" in err


@pytest.mark.parametrize("name,data", [("r.jsonl.gz", b"not gzip at all\n"),
                                       ("r.jsonl", b'{"problem_id": "\xff"}\n')])
def test_unreadable_rollouts_file(tmp_path, capsys, name, data):
    rollouts = tmp_path / name
    rollouts.write_bytes(data)
    argv = ["label", "--problems", "humaneval", "--rollouts", str(rollouts),
            "--out", str(tmp_path / "o.jsonl")]
    assert main(argv) == 2
    assert str(rollouts) in capsys.readouterr().err


@pytest.mark.slow
def test_sandbox_command(capsys):
    """`codevalue sandbox` prints the isolation that a sandbox with the same options has in force."""
    from codevalue.sandbox import Sandbox, describe_isolation

    argv = ["sandbox", "--workers", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip()
    with Sandbox(_sandbox_config(build_parser().parse_args(argv))) as box:
        iso = box.isolation
    assert {"AS", "CPU", "FSIZE", "NOFILE"} <= set(iso["rlimits"])  # the limits every program runs under
    # the uid a sandbox claims depends on the sandboxes alive at the time (other tests, other users)
    same_uid = re.compile(r"uid [0-9, ]+")
    assert same_uid.sub("uid N", printed) == same_uid.sub("uid N", describe_isolation(iso))


@pytest.mark.slow
def test_cli_checks_then_codet_on_bundled_humaneval(tmp_path, capsys):
    """Real HumanEval/0 with its bundled generated tests: the canonical solution sits in the consensus."""
    labeled = write_lines(tmp_path / "labeled.jsonl", [
        {"problem_id": "HumanEval/0", "rollout_id": "a", "completion": canonical("HumanEval/0"), "passed": True},
        {"problem_id": "HumanEval/0", "rollout_id": "b", "completion": canonical("HumanEval/0"), "passed": True},
        {"problem_id": "HumanEval/0", "rollout_id": "c", "completion": "    return True\n", "passed": False}])
    checked, scores = tmp_path / "checked.jsonl", tmp_path / "scores.jsonl"
    assert main(["checks", str(labeled), "--problems", "humaneval", "-o", str(checked), "--workers", "2",
                 "--quiet"]) == 0
    assert "checked 3 rollouts (2 programs run" in capsys.readouterr().out
    assert main(["codet", str(checked), "--method", "srank", "-o", str(scores)]) == 0
    values = {r["rollout_id"]: r["value"] for r in map(json.loads, scores.read_text().splitlines())}
    assert values["a"] == values["b"] == 1.0 > values["c"]


# ---------------------------------------------------------------------------------------------------------
# habits every command shares (issue 12)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"codevalue {codevalue.__version__}\n"


@pytest.mark.parametrize("argv", [["problems", "humaneval"], ["problems", "humaneval", "--list"]])
@pytest.mark.slow
def test_closed_pipe_exits_quietly(argv):
    """`codevalue ... | head`: the reader is gone before the output is written; no traceback, no message."""
    proc = subprocess.Popen([sys.executable, "-m", "codevalue", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child (still importing) writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_default_is_shown_in_help(name):
    """An option with a default (not None / off / empty) says it in --help."""
    p = subcommands()[name]
    text = " ".join(p.format_help().split())
    for action in p._actions:
        if action.option_strings and not (action.default is None or action.default is False
                                          or action.default in ([], argparse.SUPPRESS)):
            line = " ".join(p._get_formatter()._format_action(action).split())
            assert "default" in line, f"{name} {action.option_strings[0]}: {line}"
    assert len(text) < 6000  # a summary of the options, not a manual (prune-replay printed its module docstring)


@pytest.mark.slow
def test_label_takes_a_positional_input_and_short_out(tmp_path, capsys):
    rollouts = write_lines(tmp_path / "r.jsonl", [
        {"problem_id": "HumanEval/0", "rollout_id": "c", "completion": "    return True\n"}])
    for i, argv in enumerate([[str(rollouts), "-o"], ["--rollouts", str(rollouts), "--out"]]):
        out = tmp_path / f"o{i}.jsonl"
        assert main(["label", *argv, str(out), "--problems", "humaneval", "--quiet", "--workers", "1"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == f"-> {out} (+ .meta.json, .programs.jsonl)"
        assert json.loads(out.read_text())["verdict"] == "wrong_answer"
    for argv in [[], [str(rollouts), "--rollouts", str(rollouts)]]:
        assert main(["label", *argv, "-o", str(tmp_path / "x.jsonl"), "--problems", "humaneval"]) == 2
        assert capsys.readouterr().err == ("codevalue: error: label: give the rollouts file once, as "
                                           "`codevalue label ROLLOUTS` (or --rollouts)\n")


@pytest.mark.parametrize("argv,expected", [([], -1), (["--train-last-layers", "4"], 4), (["--full"], -1)])
def test_demo_training_mode_options_are_used(argv, expected, tmp_path):
    """demo trains every parameter by default; --train-last-layers K used to be ignored (full=True won)."""
    args = build_parser().parse_args(["demo", *argv])
    assert _training_args(args, tmp_path).train_last_layers == expected


def test_demo_lora_rank_is_used(tmp_path):
    args = _training_args(build_parser().parse_args(["demo", "--lora-r", "8"]), tmp_path)
    assert args.lora_r == 8


def test_problems_list_show_export(tmp_path, capsys):
    assert main(["problems", "humaneval", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 164 and lines[0] == "HumanEval/0\tcheck\t1 tests\thas_close_elements"
    assert main(["problems", "humaneval", "--show", "HumanEval/2"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("== HumanEval/2 (humaneval, check, entry point truncate_number, 1 tests)\n")
    assert "def truncate_number(number: float) -> float:" in shown and "def check(candidate):" in shown
    out = tmp_path / "two.jsonl"
    assert main(["problems", "humaneval", "--show", "HumanEval/2", "--show", "HumanEval/0", "--export", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 2 problem records -> {out}\n"
    exported = load_problems(str(out))
    by_id = {p.problem_id: p for p in load_problems("humaneval")}
    assert exported == [by_id["HumanEval/2"], by_id["HumanEval/0"]]  # records unchanged: same problems back
    assert main(["problems", "humaneval", "--show", "HumanEval/999"]) == 2
    assert "no problem 'HumanEval/999' (ids look like 'HumanEval/0'" in capsys.readouterr().err


def test_problems_show_apps_tests(capsys):
    first = load_problems("apps-test-mixed")[0]
    assert main(["problems", "apps-test-mixed", "--show", first.problem_id]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"== {first.problem_id} (apps, {first.kind}")
    assert f"-- test 0: input {first.tests[0].input!r}" in shown


@pytest.mark.slow
def test_humaneval_label_sidecar_records_the_mode_that_applies(tmp_path, capsys):
    rollouts = write_lines(tmp_path / "r.jsonl", [
        {"problem_id": "HumanEval/0", "rollout_id": "c", "completion": "    return True\n"}])
    out = tmp_path / "o.jsonl"
    assert main(["label", str(rollouts), "-o", str(out), "--problems", "humaneval", "--quiet", "--workers", "1"]) == 0
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text())
    assert meta["settings"]["mode"] == meta["mode"] == "humaneval"
    # a sidecar written before (it said the --mode value, "apps") is upgraded, not refused; nothing runs again
    meta["settings"]["mode"] = meta["mode"] = "apps"
    (tmp_path / "o.jsonl.meta.json").write_text(json.dumps(meta))
    assert main(["label", str(rollouts), "-o", str(out), "--problems", "humaneval", "--quiet", "--workers", "1"]) == 0
    assert "(0 distinct programs run, 1 resumed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o.jsonl.meta.json").read_text())["settings"]["mode"] == "humaneval"


@pytest.mark.parametrize("argv,message", [
    (["train", "t.jsonl", "-o", "m", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["train", "t.jsonl", "-o", "m", "--epochs", "-1"], "argument --epochs: must be positive, got -1"),
    (["train", "t.jsonl", "-o", "m", "--eval-fraction", "1"], "argument --eval-fraction: must be in [0, 1), got 1"),
    (["crossval", "t.jsonl", "-o", "m", "--folds", "1"], "argument --folds: must be at least 2, got 1"),
    (["score", "m", "r.jsonl", "-o", "s", "--batch-size", "x"], "argument --batch-size: expected an integer, got 'x'"),
    (["label", "r.jsonl", "-o", "o", "--stuck-seconds", "0"], "argument --stuck-seconds: must be > 0, got 0"),
    (["serve", "--problems", "p", "--max-infra-batches", "-1"],
     "argument --max-infra-batches: must be at least 0, got -1"),
])
def test_bad_numbers_are_refused_before_anything_runs(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"codevalue {argv[0]}: error: {message}"


def _imports(module: Path) -> list[tuple[str, str]]:
    """(imported module, name) for every relative import in `module`, at any depth of the code."""
    import ast

    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found += [(node.module or "", alias.name) for alias in node.names]
    return found


PACKAGE = Path(codevalue.__file__).parent


def test_cli_is_the_only_command_line_module_and_no_private_names_cross_modules():
    for module in sorted(PACKAGE.glob("*.py")):
        if module.name in ("cli.py", "__main__.py"):
            continue
        assert "argparse" not in module.read_text(), module.name
        for source, name in _imports(module):
            assert not name.startswith("_") or name == "__version__", f"{module.name} imports {source}.{name}"


@pytest.mark.parametrize("importer,imported", [("checks", "targets"), ("score", "targets"), ("generate", "targets"),
                                               ("generate", "search")])
def test_import_arrows_that_went_away(importer, imported):
    assert imported not in {source.split(".")[0] for source, _ in _imports(PACKAGE / f"{importer}.py")}


# ---------------------------------------------------------------------------------------------------------
# codevalue run: the whole pipeline on the user's own files


def run_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Two rollouts per problem (the canonical solution, a wrong one) of four HumanEval problems, and a few
    generated tests for them."""
    pids = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"]
    rollouts = write_lines(tmp_path / "mine.jsonl", [
        {"problem_id": pid, "rollout_id": f"{pid}/{k}", "completion": body}
        for pid in pids for k, body in enumerate([canonical(pid), "    return None\n"])])
    tests = write_lines(tmp_path / "tests.jsonl", [
        {"task_id": "HumanEval/2", "text": "truncate_number(3.5) == 0.5"},
        {"task_id": "HumanEval/0", "text": "has_close_elements([1.0, 2.0], 0.5) == False"}])
    return rollouts, tests


TRAIN_TINY = ["--tiny", "1m", "--epochs", "1", "--batch-size", "4", "--max-length", "96", "--workers", "2", "--quiet"]


@pytest.mark.slow
def test_run_on_own_files_then_reuses_finished_stages(tmp_path, capsys):
    rollouts, tests = run_inputs(tmp_path)
    out = tmp_path / "run"
    argv = ["run", "--problems", "humaneval", "--rollouts", str(rollouts), "--tests", str(tests), "-o", str(out),
            *TRAIN_TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for line in ["[1/5] label: run the rollouts against the hidden tests", "pass rate 50.0%", "[2/5] checks",
                 "[3/5] targets", "[4/5] crossval: 2 folds by problem, tiny-1m",
                 "[5/5] evaluate", f"{rollouts} on humaneval; the value model is cross-validated by problem",
                 "value model (1m) (reranked)", "CodeT (ours) (reranked)", "oracle (any rollout passes)"]:
        assert line in printed, line
    report = out / "report" / "report.md"
    assert report.exists() and (out / "crossval" / "scores.jsonl").exists()
    before = report.stat().st_mtime_ns, (out / "targets.jsonl").stat().st_mtime_ns
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "(0 distinct programs run, 8 resumed)" in printed  # label reused
    assert "0 programs run (8 rollouts already checked)" in printed  # checks reused
    assert "fold 1/2: reusing" in printed and "fold 2/2: reusing" in printed  # crossval reused
    assert (out / "targets.jsonl").stat().st_mtime_ns == before[1]  # targets: same input, not rebuilt
    assert report.stat().st_mtime_ns > before[0]


@pytest.mark.slow
def test_run_without_tests_skips_checks(tmp_path, capsys):
    rollouts, _ = run_inputs(tmp_path)
    argv = ["run", "--problems", "humaneval", "--rollouts", str(rollouts), "-o", str(tmp_path / "run"), *TRAIN_TINY]
    assert main([*argv, "--read-checks"]) == 2
    assert capsys.readouterr().err == ("codevalue: error: --read-checks needs generated tests (--tests): the model "
                                       "reads their results\n")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/4] label" in printed and "[4/4] evaluate" in printed and "checks" not in printed
    assert not (tmp_path / "run" / "checked.jsonl").exists()


def test_readme_command_table_matches_the_commands():
    """Every subcommand is in the README's pipeline table, and the table names no command that does not exist."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("## Pipeline"):readme.index("Every command has")]
    assert set(re.findall(r"`codevalue ([a-z-]+)", table)) == set(subcommands())


def test_generate_names_its_sampling_and_http_options_apart_from_label():
    """label's --mode is the verdict mode and --timeout seconds per test; generate says --sampling and
    --request-timeout (the old names still parse)."""
    parser = build_parser()
    for argv in (["--sampling", "plain", "--request-timeout", "30"], ["--mode", "plain", "--timeout", "30"]):
        args = parser.parse_args(["generate", "--problems", "humaneval", "-o", "r.jsonl", "--model", "m", *argv])
        assert (args.mode, args.timeout) == ("plain", 30.0)
    text = subcommands()["generate"].format_help()
    assert "--sampling {tree,plain}" in text and "--request-timeout" in text


def test_demo_is_run_on_the_bundled_data(tmp_path, monkeypatch):
    """`make demo` = `run` on the bundled samples, their generated tests, the Codex stops and the demo recipe."""
    import codevalue.cli as cli
    from codevalue.checks import BUNDLED_TESTS
    from codevalue.rollouts import CODEX_STOP

    calls = []
    monkeypatch.setattr(cli, "run_pipeline", lambda *a, **k: calls.append((a, k)) or 0)
    monkeypatch.setattr("codevalue.rollouts.bundled_codegen_rollouts", lambda out: Path(out).write_text(""))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--workers", "1"]) == 0
    [((args, problems, rollouts, tests, config), kwargs)] = calls
    assert (problems, rollouts, tests) == ("humaneval", tmp_path / "demo" / "rollouts.jsonl", BUNDLED_TESTS)
    assert config.stop == CODEX_STOP and config.sandbox.workers == 1
    assert kwargs["published"] == cli.CODET_PUBLISHED
    assert (args.read_checks, args.tiny_default, args.group_size, args.folds) == (True, "1m", 8, 2)


@pytest.mark.parametrize("command", ["label", "checks", "sandbox", "run", "demo"])
def test_label_and_sandbox_options_come_from_the_config_fields(command):
    """The defaults and help of --mode/--timeout/--program-timeout/--stop and --workers/--memory-mb/--output-limit
    are LabelConfig's and SandboxConfig's fields (written once, there); cli.py writes none of them."""
    import dataclasses

    from codevalue.labels import LabelConfig
    from codevalue.sandbox import SandboxConfig

    fields = {f.name: f for cls in (LabelConfig, SandboxConfig) for f in dataclasses.fields(cls)}
    options = {a.dest: a for a in subcommands()[command]._actions}
    generated = [name for name in ("mode", "timeout", "program_timeout", "workers", "memory_mb", "output_limit",
                                   "stuck_seconds") if name in options]
    assert {"workers", "memory_mb", "output_limit", "stuck_seconds"} <= set(generated)
    for name in generated:
        assert options[name].default == fields[name].default and options[name].help == fields[name].metadata["help"]
    source = (PACKAGE / "cli.py").read_text()
    for flag in ("--mode", "--timeout", "--program-timeout", "--workers", "--memory-mb", "--output-limit"):
        assert f'"{flag}"' not in source.split("def _add_generate_parser")[0], flag  # generate's are its own


@pytest.mark.parametrize("command", ["train", "crossval", "run", "demo"])
def test_training_options_come_from_the_training_arguments(command):
    """Each training option's default and help are ValueTrainingArguments' field's, or train.TRAIN_OPTIONS' for the
    command line (each written once); demo's recipe is its own set_defaults."""
    import dataclasses

    from codevalue.train import MODE_OPTIONS, TRAIN_OPTIONS, ValueTrainingArguments

    fields = {f.name: f for f in dataclasses.fields(ValueTrainingArguments)}
    actions = {a.dest: a for a in subcommands()[command]._actions}
    demo = {"num_train_epochs": 3, "train_last_layers": -1, "learning_rate": 1e-3, "group_size": 8,
            "per_device_train_batch_size": 2, "rank_weight": 3.0, "read_checks": True}
    for name, option in {**TRAIN_OPTIONS, **MODE_OPTIONS}.items():
        default = option.get("default", fields[name].default) or (False if fields[name].default is None else 0)
        if command == "demo" and name in demo:
            default = demo[name]
        assert actions[name].default == default, name
        assert actions[name].help == option.get("help", fields[name].metadata.get("help")), name


def test_crossval_recipe_is_derived_from_the_training_options():
    from codevalue.crossval import RECIPE_FIELDS

    assert set(RECIPE_FIELDS) == {  # what a finished fold's model was keyed on before: reused as it was
        "num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
        "train_last_layers", "lora_r", "lora_alpha", "max_length", "aux_weight", "eval_fraction", "append_eos",
        "group_size", "rank_weight", "rank_loss", "center_targets", "read_checks", "seed"}


def test_training_arguments_transformers_refuses_are_one_line_errors(tmp_path, capsys, monkeypatch):
    from codevalue.train import ValueTrainingArguments

    def refuse(self):  # what transformers says for --bf16 on a machine without bf16 (a traceback before)
        raise ValueError("Your setup doesn't support bf16/gpu.")

    monkeypatch.setattr(ValueTrainingArguments, "__post_init__", refuse)
    targets = write_lines(tmp_path / "t.jsonl", [])
    assert main(["train", str(targets), "-o", str(tmp_path / "m"), "--bf16"]) == 2
    assert capsys.readouterr().err == "codevalue: error: training options: Your setup doesn't support bf16/gpu.\n"


@pytest.mark.slow
def test_commands_that_do_not_train_do_not_import_the_trainer():
    code = ("import sys; from codevalue.cli import main; main(['problems', 'humaneval']); "
            "print('codevalue.train' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "False"


def test_generate_options_come_from_generate_config():
    import dataclasses

    from codevalue.generate import GenerateConfig

    actions = {a.dest: a for a in subcommands()["generate"]._actions}
    for f in dataclasses.fields(GenerateConfig):
        if f.name != "stop":  # --stop: a list of presets or sequences, parsed into the field
            assert (actions[f.name].default, actions[f.name].help) == (f.default, f.metadata["help"]), f.name


# Options that exist on the command line alone (the server's address and log level, a report's name, the demo's
# working directory, ...): the only ones whose default cli.py may write as a literal.
CLI_ONLY_DEFAULTS = {"--host", "--port", "--dtype", "--threads", "--log-level", "--name", "--out"}


def test_cli_writes_no_default_that_the_python_api_also_has():
    """Every other default is read from the signature (or config field) of the Python function the command calls,
    so it is written once: a literal `default=` in cli.py for any other option fails here."""
    import ast

    def literal(node: ast.expr):  # a number, string, list, -1, 2**20 ...: anything written out in place
        try:
            return ast.literal_eval(node)
        except ValueError:
            return None if not isinstance(node, ast.BinOp) else literal(node.left)

    written = set()
    for node in ast.walk(ast.parse((PACKAGE / "cli.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for keyword in node.keywords:
                value = literal(keyword.value) if keyword.arg == "default" else None
                if value is not None and value is not False and value != []:
                    written.add(node.args[0].value)
    assert written <= CLI_ONLY_DEFAULTS, sorted(written - CLI_ONLY_DEFAULTS)
    # the one set_defaults with literals is demo's own recipe (written once, there; see the test above)


def _api_defaults():
    import inspect

    from codevalue.checks import run_checks
    from codevalue.crossval import crossval
    from codevalue.generate import EndpointGenerator, HFGenerator
    from codevalue.pretrain import pretrain_tiny_lm
    from codevalue.rewards import ExecutionReward
    from codevalue.score import score_file
    from codevalue.search import PrunePolicy, prune_replay, rerank
    from codevalue.serve import create_app
    from codevalue.targets import build_targets

    def default(func, name):
        value = inspect.signature(func).parameters[name].default
        return list(value) if isinstance(value, tuple) else value

    rows = [("targets", "smooth", default(build_targets, "smooth")),
            ("checks", "max_tests", default(run_checks, "limit")),
            ("score", "batch_size", default(score_file, "batch_size")),
            ("rerank", "batch_size", default(rerank, "batch_size")),
            ("problems", "split", default(load_problems, "split")),
            ("generate", "batch_size", default(HFGenerator, "batch_size")),
            ("generate", "timeout", default(EndpointGenerator, "timeout")),
            ("generate", "concurrency", default(EndpointGenerator, "concurrency")),
            ("generate", "prune_every", default(PrunePolicy, "every")),
            ("serve", "max_padding", default(create_app, "max_padding")),
            ("serve", "infra_reward", default(create_app, "infra_reward")),
            ("serve", "max_infra_batches", default(ExecutionReward, "max_infra_batches"))]
    rows += [("prune-replay", dest, default(prune_replay, name)) for dest, name in
             [("every", "every"), ("thresholds", "thresholds"), ("top_k", "top_ks"), ("permutations", "permutations")]]
    rows += [("pretrain", dest, default(pretrain_tiny_lm, name)) for dest, name in
             [("tiny", "size"), ("corpus", "corpus"), ("max_steps", "max_steps"), ("lr", "lr"), ("seed", "seed")]]
    rows += [(command, dest, default(crossval, name)) for command in ("crossval", "run") for dest, name in
             [("folds", "folds"), ("per_problem", "per_problem"), ("score_batch_size", "batch_size")]]
    return rows


@pytest.mark.parametrize("command, dest, expected", _api_defaults())
def test_option_defaults_are_the_python_api_defaults(command, dest, expected):
    """The command line's default is the one a Python caller of the same function gets."""
    actions = {a.dest: a for a in subcommands()[command]._actions}
    assert actions[dest].default == expected


def test_demo_recipe_overrides_are_shown_in_its_help():
    """demo's own choices (32 rollouts per problem, 3 epochs, ...) are what its --help says."""
    actions = {a.dest: a for a in subcommands()["demo"]._actions}
    assert (actions["per_problem"].default, actions["num_train_epochs"].default) == (32, 3)
    assert subcommands()["crossval"]._option_string_actions["--per-problem"].default is None

"""The `codevalue` command: exit codes, messages and the label/problems subcommands on tiny inputs."""

import gzip
import json
import re
from pathlib import Path

import pytest

from codevalue.cli import _sandbox_config, build_parser, main
from codevalue.problems import BUNDLED

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

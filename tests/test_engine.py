"""The execution engine: nothing finished is lost, nothing stale is reused, bad arguments get one clear line.

Programs run only through the project's sandbox (via `label_rollouts` / the `codevalue` command).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codevalue.cli import main
from codevalue.engine import content_key
from codevalue.errors import CodevalueError, DataError
from codevalue.labels import LabelConfig, label_rollouts
from codevalue.problems import Problem
from codevalue.sandbox import SandboxConfig

CONFIG = LabelConfig(sandbox=SandboxConfig(workers=2))


def _problem(pid: str = "T/0", expected: int = 2) -> Problem:
    return Problem(pid, "humaneval", "check", prompt="def inc(x):\n",
                   check_code=f"def check(f):\n    assert f(1) == {expected}\ncheck(inc)", entry_point="inc",
                   completion_continues_prompt=True)


def _write(path: Path, rows: list[tuple[str, str]], pid: str = "T/0") -> Path:
    path.write_text("".join(json.dumps({"problem_id": pid, "rollout_id": r, "completion": c}) + "\n"
                            for r, c in rows))
    return path


RIGHT, WRONG = "    return x + 1\n", "    return x * 3\n"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_another_rollouts_file_into_an_existing_output_is_refused(tmp_path):
    a = _write(tmp_path / "a.jsonl", [("a1", RIGHT), ("a2", WRONG)])
    b = _write(tmp_path / "b.jsonl", [("b1", RIGHT)])
    out = tmp_path / "o.jsonl"
    label_rollouts([_problem()], a, out, CONFIG, progress=False)
    before = out.read_bytes()
    with pytest.raises(CodevalueError, match=r"already holds 2 rollouts that are not in .*b\.jsonl"):
        label_rollouts([_problem()], b, out, CONFIG, progress=False)
    assert out.read_bytes() == before  # the labels of a are still there


@pytest.mark.slow
def test_an_empty_rollouts_file_does_not_wipe_an_output(tmp_path):
    a = _write(tmp_path / "a.jsonl", [("a1", RIGHT)])
    out = tmp_path / "o.jsonl"
    assert label_rollouts([_problem()], a, out, CONFIG, progress=False)["pass_rate"] == 1.0  # one rollout
    before = out.read_bytes()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CodevalueError, match="already holds 1 rollouts"):
        label_rollouts([_problem()], empty, out, CONFIG, progress=False)
    assert out.read_bytes() == before


@pytest.mark.slow
def test_an_edited_completion_is_labelled_again(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT), ("r2", RIGHT)])
    out = tmp_path / "o.jsonl"
    label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    assert [r["verdict"] for r in _rows(out)] == ["pass", "pass"]
    _write(rollouts, [("r1", WRONG), ("r2", RIGHT)])  # same ids, r1's program changed
    summary = label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    assert (summary["executed_programs"], summary["resumed"]) == (1, 1)
    assert [(r["completion"], r["verdict"]) for r in _rows(out)] == [(WRONG, "wrong_answer"), (RIGHT, "pass")]
    assert (summary["pass_rate"], summary["verdicts"]) == (0.5, {"wrong_answer": 1, "pass": 1})


@pytest.mark.slow
def test_other_tests_for_a_problem_are_never_answered_from_old_results(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    out = tmp_path / "o.jsonl"
    label_rollouts([_problem(), _problem("T/1")], rollouts, out, CONFIG, progress=False)
    assert _rows(out)[0]["verdict"] == "pass"
    changed = [_problem(expected=3), _problem("T/1")]  # T/0 now expects inc(1) == 3
    with pytest.raises(CodevalueError, match="other settings .*problems_digest"):
        label_rollouts(changed, rollouts, out, CONFIG, progress=False)
    assert _rows(out)[0]["verdict"] == "pass"  # refused: untouched
    out.unlink()
    summary = label_rollouts(changed, rollouts, out, CONFIG, progress=False)
    assert (summary["executed_programs"], summary["resumed"]) == (1, 0)
    assert _rows(out)[0]["verdict"] == "wrong_answer"


@pytest.mark.slow
def test_other_verdict_settings_are_refused_for_an_existing_output(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    out = tmp_path / "o.jsonl"
    label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    with pytest.raises(CodevalueError, match=r"timeout: None -> 1\.5"):
        label_rollouts([_problem()], rollouts, out, LabelConfig(timeout=1.5, sandbox=CONFIG.sandbox), progress=False)


@pytest.mark.slow
def test_output_in_a_missing_directory_is_created(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    out = tmp_path / "new" / "deeper" / "o.jsonl"
    summary = label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    assert summary["rollouts"] == 1 and _rows(out)[0]["verdict"] == "pass"
    assert out.with_name("o.jsonl.meta.json").exists()


def test_output_equal_to_input_is_refused(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    before = rollouts.read_bytes()
    with pytest.raises(CodevalueError, match="is the input file"):
        label_rollouts([_problem()], rollouts, rollouts, CONFIG, progress=False)
    assert rollouts.read_bytes() == before


def test_duplicate_rollout_ids_are_refused_before_running(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT), ("r1", WRONG)])
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], rollouts, tmp_path / "o.jsonl", CONFIG, progress=False)
    assert str(e.value) == f"{rollouts}, record 2, field 'rollout_id': duplicate rollout_id 'r1' (first on record 1)"
    assert not (tmp_path / "o.jsonl.programs.jsonl").exists()


def test_an_existing_output_is_read_line_by_line_skipping_blank_and_torn_lines(tmp_path):
    """The rollouts an existing output holds: a blank line is skipped (not the end), a torn last line (no
    newline: a crash mid-write) is not a rollout; one stranger is enough to refuse, counted and named."""
    rollouts = _write(tmp_path / "r.jsonl", [("a1", RIGHT)])
    out = tmp_path / "o.jsonl"
    out.write_text('{"rollout_id": "a1"}\n\n{"rollout_id": "zz"}\n{"rollout_id": "torn"')
    with pytest.raises(CodevalueError) as e:
        label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    assert str(e.value).startswith(f"{out} already holds 1 rollouts that are not in {rollouts} (e.g. 'zz'); ")


@pytest.mark.parametrize("line", ['{"x": 1}', "[1]", "not json"])
def test_an_existing_output_that_is_not_ours_is_refused_naming_the_record(tmp_path, line):
    rollouts = _write(tmp_path / "r.jsonl", [("a1", RIGHT)])
    out = tmp_path / "o.jsonl"
    out.write_text(f'{{"rollout_id": "a1"}}\n{line}\n')
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    assert str(e.value) == (f"{out}, record 2: existing output has a line without a rollout_id; it is not a "
                            "codevalue output: choose another --out")


@pytest.mark.slow
def test_the_sandbox_settings_reach_the_sandbox_and_rows_name_this_host(tmp_path):
    """label_rollouts runs programs in a sandbox built from its config (here: --memory-mb), and the sidecar
    counts the programs per node under this machine's name."""
    import socket

    hungry = "    hoard = bytearray(400 * 2**20)\n    return x + 1\n"  # right, but needs 400 MiB
    rollouts = _write(tmp_path / "r.jsonl", [("r1", hungry)])
    for memory_mb, verdict in ((2048, "pass"), (128, "memory_exceeded")):
        out = tmp_path / f"o{memory_mb}.jsonl"
        config = LabelConfig(sandbox=SandboxConfig(workers=1, memory_mb=memory_mb))
        label_rollouts([_problem()], rollouts, out, config, progress=False)
        assert _rows(out)[0]["verdict"] == verdict
        meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
        assert meta["executor"]["nodes"] == {socket.gethostname(): 1}


def test_a_result_missing_from_the_program_log_is_one_line_naming_the_log(tmp_path):
    """Only a log edited during a run can lose a result the run recorded: named, with the way out."""
    from codevalue.engine import ProgramLog, _fields_of

    log = ProgramLog(tmp_path / "o.jsonl.programs.jsonl")
    assert _fields_of(log, "0123456789abcdef", {"verdict": "pass"}) == {"verdict": "pass"}  # known: no lookup
    with pytest.raises(CodevalueError) as e:
        _fields_of(log, "0123456789abcdef", None)
    log.close()
    assert str(e.value) == f"{log.path}: no result for program 0123456789ab; run the command again"


def test_program_log_lines_hold_key_node_and_fields_and_survive_a_reopen(tmp_path):
    """OUT.programs.jsonl, one line per program: {"key", "node", "fields"}, any text (a lone surrogate from a
    program's output included) read back as written, found again after a reopen, a torn last line cut off."""
    from codevalue.engine import ProgramLog

    path = tmp_path / "o.jsonl.programs.jsonl"
    odd = {"verdict": "runtime_error", "reason": "printed \ud800 and \u00fcn\u00efcode \u2713"}
    log = ProgramLog(path)
    log.append("k1", odd, "node-a")
    log.append("k2", {"verdict": "pass"}, "node-b")
    assert log.read("k1") == odd
    log.close()
    assert log._f.closed and log._reader.closed  # descriptors released (every append was flushed already)
    lines = [json.loads(line) for line in path.read_bytes().decode("utf-8", "surrogatepass").splitlines()]
    assert lines == [{"key": "k1", "node": "node-a", "fields": odd},
                     {"key": "k2", "node": "node-b", "fields": {"verdict": "pass"}}]
    with open(path, "ab") as f:
        f.write(b'{"key": "k3", "node": "x", "fie')  # the process died mid-write
    again = ProgramLog(path)
    assert (set(again.offsets), again.read("k2"), again.read("k1")) == ({"k1", "k2"}, {"verdict": "pass"}, odd)
    again.close()
    assert path.read_bytes().endswith(b'"pass"}}\n')  # the torn line is gone


@pytest.mark.parametrize("line", [b"not json\n", b'{"no": "key"}\n', b"[1, 2]\n"])
def test_an_unreadable_program_log_is_refused_naming_the_file(tmp_path, line):
    """A line of OUT.programs.jsonl that is not a result (not a torn last line: that is cut off) stops the run
    with one message naming the file and the way out, and the file is left as it was."""
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    log = tmp_path / "o.jsonl.programs.jsonl"
    log.write_bytes(line)
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], rollouts, tmp_path / "o.jsonl", CONFIG, progress=False)
    assert str(e.value) == (f"{log}: invalid line in a previous run's program results (delete the file to run "
                            "everything again)")
    assert log.read_bytes() == line


@pytest.mark.slow
def test_identical_programs_run_once_and_every_rollout_gets_one_row(tmp_path):
    rows = [(f"r{i}", RIGHT if i % 3 else WRONG) for i in range(12)]
    rollouts = _write(tmp_path / "r.jsonl", rows)
    out = tmp_path / "o.jsonl"
    summary = label_rollouts([_problem()], rollouts, out, CONFIG, progress=False)
    assert (summary["executed_programs"], summary["distinct_programs"]) == (2, 2)
    assert [r["rollout_id"] for r in _rows(out)] == [r for r, _ in rows]
    assert [r["passed"] for r in _rows(out)] == [bool(i % 3) for i in range(12)]
    assert len((tmp_path / "o.jsonl.programs.jsonl").read_text().splitlines()) == 2
    assert (summary["pass_rate"], summary["verdicts"]) == (8 / 12, {"pass": 8, "wrong_answer": 4})


def test_content_key_separates_every_part():
    assert content_key("a", "bc") != content_key("ab", "c")
    assert content_key({"x": 1, "y": 2}) == content_key({"y": 2, "x": 1})
    assert content_key("p", None) != content_key("p", "")


@pytest.mark.parametrize("args, message", [
    (["--workers", "-3"], "--workers: must be at least 0, got -3"),
    (["--timeout", "-1"], "--timeout: must be positive, got -1"),
    (["--program-timeout", "0"], "--program-timeout: must be positive, got 0"),
    (["--memory-mb", "0"], "--memory-mb: must be at least 1, got 0"),
])
def test_bad_label_arguments_get_one_line(tmp_path, capsys, args, message):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    with pytest.raises(SystemExit) as e:
        main(["label", "--problems", "humaneval", "--rollouts", str(rollouts), "--out", str(tmp_path / "o.jsonl"),
              *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_empty_stop_sequence_and_output_on_input_are_one_line_errors(tmp_path, capsys):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    base = ["label", "--problems", "humaneval", "--rollouts", str(rollouts)]
    assert main([*base, "--out", str(tmp_path / "o.jsonl"), "--stop", ""]) == 2
    assert "--stop ''" in capsys.readouterr().err
    assert main([*base, "--out", str(rollouts)]) == 2
    err = capsys.readouterr().err
    assert "is the input file" in err and len(err.strip().splitlines()) == 1


def _problems_file(path: Path, n: int) -> Path:
    """HumanEval-layout problems whose rollouts each take ~0.3 s, so a run can be interrupted mid-way."""
    path.write_text("".join(json.dumps({
        "task_id": f"S/{i}", "prompt": "import time\ndef f():\n", "entry_point": "f",
        "test": "def check(c):\n    time.sleep(0.3)\n    assert c() == 1\n"}) + "\n" for i in range(n)))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_label_keeps_every_finished_program(tmp_path, sig):
    n = 48  # about 7 s of programs on 2 workers: room to interrupt mid-run even on a loaded machine
    problems = _problems_file(tmp_path / "problems.jsonl", n)
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text("".join(json.dumps({"problem_id": f"S/{i}", "rollout_id": f"r{i}",
                                            "completion": "    return 1\n"}) + "\n" for i in range(n)))
    out, log = tmp_path / "o.jsonl", tmp_path / "o.jsonl.programs.jsonl"
    command = [sys.executable, "-m", "codevalue", "label", "--problems", str(problems), "--rollouts",
               str(rollouts), "--out", str(out), "--workers", "2", "--quiet"]
    # A shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: give
    # the child the default disposition, as an interactive user's Ctrl-C would find it.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    finished = len([line for line in log.read_bytes().split(b"\n")[:-1] if line])
    assert 4 <= finished < n, err.decode()  # killed mid-run, with finished results on disk (not in a buffer)
    assert not out.exists()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"rerun the same command to resume" in err

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    meta = json.loads(out.with_name("o.jsonl.meta.json").read_text())
    assert meta["executed_programs"] == n - finished and meta["resumed"] == finished
    assert [r["rollout_id"] for r in _rows(out)] == [f"r{i}" for i in range(n)]
    assert all(r["verdict"] == "pass" for r in _rows(out))
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == n  # every program once, none lost, none run twice

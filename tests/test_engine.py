"""The execution engine: nothing finished is lost, nothing stale is reused, bad arguments get one clear line.

Programs run only through the project's sandbox (via `label_rollouts` / the `codevalue` command).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from codevalue.cli import main
from codevalue.engine import Plan, content_key
from codevalue.errors import CodevalueError, DataError
from codevalue.labels import LabelConfig, label_rollouts
from codevalue.problems import Problem
from codevalue.sandbox import ExecutionResult, Job, SandboxConfig, describe_isolation

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
    assert str(e.value) == (f"{out} already holds 1 rollouts that are not in {rollouts} (e.g. 'zz'); they would be "
                            "lost: write to another --out, or merge the inputs and label them together")


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


def test_content_key_is_the_sha256_of_the_parts_as_utf8_json_each_ended_by_nul():
    """The exact bytes hashed (keys in OUT.programs.jsonl of earlier runs stay valid): UTF-8 (not \\u-escaped)
    JSON with sorted keys, a lone surrogate passed through, str() of what JSON cannot encode."""
    hashed = b'"\xc3\xa9"\0"\xed\xa0\x80"\0"sub/p"\0{"a": 1, "b": [1, 2]}\0'
    expected = hashlib.sha256(hashed).hexdigest()[:32]
    assert content_key("\u00e9", "\ud800", Path("sub/p"), {"b": [1, 2], "a": 1}) == expected
    assert len(expected) == 32


def test_a_missing_input_a_gzip_output_and_a_directory_output_are_refused_before_anything_is_written(tmp_path):
    rollouts = _write(tmp_path / "r.jsonl", [("r1", RIGHT)])
    missing, gz, directory = tmp_path / "missing.jsonl", tmp_path / "o.jsonl.gz", tmp_path / "d"
    directory.mkdir()
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], missing, tmp_path / "o.jsonl", CONFIG, progress=False)
    assert str(e.value) == f"{missing}: file not found"
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], rollouts, gz, CONFIG, progress=False)
    assert str(e.value) == f"{gz}: output cannot be gzip-compressed (it is resumable); use a .jsonl path"
    with pytest.raises(CodevalueError) as e:
        label_rollouts([_problem()], rollouts, directory, CONFIG, progress=False)
    assert str(e.value) == f"--out {directory} is a directory: give a file path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "r.jsonl"]
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("pick", [min, max])
def test_rollout_ids_find_a_repeated_id_wherever_its_hash_sorts(pick):
    """freeze() returns the hashes seen twice whether the repeated id sorts first or last among 20."""
    from codevalue.engine import RolloutIds

    names = [f"r{i}" for i in range(20)]
    repeated = pick(names, key=RolloutIds.hash)
    ids = RolloutIds()
    for name in [*names, repeated]:
        ids.add(name)
    assert ids.freeze() == {RolloutIds.hash(repeated)}
    assert all(name in ids for name in names) and "r20" not in ids


def test_a_rollout_id_with_a_lone_surrogate_is_hashed_and_its_duplicate_named(tmp_path):
    """Any JSON string is a valid rollout id, a lone surrogate (escaped in the file) included."""
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text("".join(json.dumps({"problem_id": "T/0", "rollout_id": "\ud800", "completion": c}) + "\n"
                                for c in (RIGHT, WRONG)))
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], rollouts, tmp_path / "o.jsonl", CONFIG, progress=False)
    assert str(e.value) == (f"{rollouts}, record 2, field 'rollout_id': duplicate rollout_id '\\ud800' "
                            "(first on record 1)")


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


# ---------------------------------------------------------------------------------------------------------------
# run_stage's bookkeeping, without a sandbox: a stage of its own, an executor that "runs" a program by looking at
# its text, and a clock that moves only when the executor starts (0.125 s) or finishes a program (1.0625 s each).

SETTINGS = {"mode": "strict", "timeout": 2.0, "n": 1}
ISOLATION = {"rlimits": ["CPU"], "cleanup": "test"}


class _Stage:
    """Programs "ok..." pass, others fail, "KNOWN" is decided without running (a Plan without job)."""

    name = "fake-stage"

    def __init__(self, settings: dict = SETTINGS):
        self._settings = settings

    def settings(self) -> dict:
        return dict(self._settings)

    def plan(self, path, line, record):
        program, problem_id = record["program"], record["problem_id"]
        extra = {"source": path.name, "line": line}
        if program == "KNOWN":
            return Plan(problem_id, "", None, {"verdict": "syntax_error", "passed": False}, extra)
        return Plan(problem_id, content_key("fake", self._settings, problem_id, program),
                    lambda: Job(program, "check", "humaneval", tag=line), None, extra)

    def judge(self, job, result):
        ok = job.program.startswith("ok")
        return {"verdict": "pass" if ok else "wrong_answer", "passed": ok, "cpu": result.cpu_seconds,
                "first": job.tag}

    def row(self, record, plan, fields):
        return {"rollout_id": record["rollout_id"], "problem_id": plan.problem_id, **plan.extra, **fields}


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _Executor:
    kind = "fake"
    isolation = ISOLATION
    steps = (1.0625, 1.0625, 1.0625)  # seconds each program takes

    def __init__(self, clock: _Clock, meta: Path):
        self.clock, self.meta, self.ran, self.meta_during_run, self.entered = clock, meta, [], None, 0

    def __enter__(self):
        self.entered += 1
        self.clock.now += 0.125
        return self

    def __exit__(self, *exc):
        self.entered -= 1

    def map(self, jobs):
        for i, job in enumerate(jobs):
            self.meta_during_run = self.meta_during_run or self.meta.read_text()
            self.ran.append(job.program)
            self.clock.now += self.steps[i]
            yield job, ExecutionResult("ok", cpu_seconds=(0.004, 0.5, 1.0)[i]), "node-b" if i % 2 else "n\u0153ud-a"


class _Reporting(_Executor):
    report = {"workers": 7}


def _records(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(json.dumps({"rollout_id": r, "problem_id": p, "program": c}) + "\n" for r, p, c in rows))
    return path


def _fake_run(monkeypatch, inputs, out, executor_class=_Executor, stage=None, clock=None, **kwargs):
    """run_stage with the fake executor and clock (the progress bar's too, its monitor thread off); returns
    (summary, executor, make_executor's arguments)."""
    import tqdm.std

    from codevalue import engine

    clock, made = clock or _Clock(), []
    executor = executor_class(clock, Path(out).with_name(Path(out).name + ".meta.json"))
    monkeypatch.setattr(engine, "time", clock)
    monkeypatch.setattr(tqdm.std, "time", clock.monotonic)
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    monkeypatch.setattr(engine, "make_executor", lambda sandbox, ray: made.append((sandbox, ray)) or executor)
    summary = engine.run_stage(stage or _Stage(), inputs, out, SandboxConfig(workers=3), ray="ray-address", **kwargs)
    assert executor.entered == 0
    return summary, executor, made


def test_run_stage_runs_each_distinct_program_once_and_reports_it_all(tmp_path, monkeypatch, capsys):
    """One run, by hand: 5 rollouts of 2 problems, 3 distinct programs to run (r2 shares r1's program), one result
    known without running; rows in input order, the programs log, the sidecar (written "complete": false before
    anything runs, then the summary, both indented), the progress bar (on by default)."""
    rows = [("r1", "P/0", "ok-a"), ("r2", "P/0", "ok-a"), ("r3", "P/0", "bad-b"), ("r4", "P/1", "ok-c"),
            ("r5", "P/1", "KNOWN")]
    inputs = _records(tmp_path / "entr\u00e9e.jsonl", rows)  # a name that is not ASCII
    out = tmp_path / "new" / "deeper" / "o.jsonl"
    summary, executor, made = _fake_run(monkeypatch, inputs, out, _Reporting, meta_extra={"note": "first"})
    assert made == [(SandboxConfig(workers=3), "ray-address")] and executor.ran == ["ok-a", "bad-b", "ok-c"]
    assert executor.meta_during_run == ('{\n  "settings": {\n    "mode": "strict",\n    "timeout": 2.0,\n    "n": 1\n'
                                        '  },\n  "complete": false,\n  "note": "first"\n}\n')
    ok_a = {"verdict": "pass", "passed": True, "cpu": 0.004, "first": 1}
    bad_b = {"verdict": "wrong_answer", "passed": False, "cpu": 0.5, "first": 3}
    ok_c = {"verdict": "pass", "passed": True, "cpu": 1.0, "first": 4}
    known = {"verdict": "syntax_error", "passed": False}
    assert _rows(out) == [{"rollout_id": f"r{i}", "problem_id": p, "source": "entr\u00e9e.jsonl", "line": i, **fields}
                          for i, p, fields in [(1, "P/0", ok_a), (2, "P/0", ok_a), (3, "P/0", bad_b),
                                               (4, "P/1", ok_c), (5, "P/1", known)]]
    keys = [content_key("fake", SETTINGS, p, c) for p, c in [("P/0", "ok-a"), ("P/0", "bad-b"), ("P/1", "ok-c")]]
    assert _rows(out.with_name("o.jsonl.programs.jsonl")) == [
        {"key": keys[0], "node": "n\u0153ud-a", "fields": ok_a}, {"key": keys[1], "node": "node-b", "fields": bad_b},
        {"key": keys[2], "node": "n\u0153ud-a", "fields": ok_c}]
    assert summary == {
        "rollouts": 5, "problems": 2, "executed_programs": 3, "distinct_programs": 3, "resumed": 0,
        "pass_rate": 0.6, "verdicts": {"pass": 3, "wrong_answer": 1, "syntax_error": 1},
        "wall_seconds": 3.31, "executor_start_seconds": 0.12, "run_seconds": 3.19,  # 0.125 + 3 * 1.0625, rounded
        "program_cpu_seconds": 1.5, "settings": SETTINGS, **SETTINGS, "complete": True, "out": str(out),
        "executor": {"kind": "fake", "nodes": {"n\u0153ud-a": 2, "node-b": 1}, "workers": 7},
        "sandbox": {**json.loads(json.dumps(asdict(SandboxConfig(workers=3)))), "isolation": ISOLATION,
                    "description": describe_isolation(ISOLATION)},
        "note": "first"}
    # the output and the programs log are UTF-8 text, not \\u escapes
    assert '"source": "entr\u00e9e.jsonl"' in out.read_text(encoding="utf-8")
    assert '"node": "n\u0153ud-a"' in out.with_name("o.jsonl.programs.jsonl").read_text(encoding="utf-8")
    meta = out.with_name("o.jsonl.meta.json").read_text()
    assert meta.startswith('{\n  "rollouts": 5,\n  "problems": 2,\n') and meta.endswith('\n  "note": "first"\n}\n')
    assert json.loads(meta) == summary
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.jsonl", "o.jsonl.meta.json", "o.jsonl.programs.jsonl"]
    bar = [line for line in capsys.readouterr().err.split("\r") if line]
    assert bar[0].startswith("fake-stage:   0%|") and " 0/3 [" in bar[0]
    assert bar[-1].startswith("fake-stage: 100%|") and " 3/3 [" in bar[-1]
    assert re.search(r"(program/s|s/program)\]\s*$", bar[-1]), bar[-1]


def test_run_stage_resumes_from_the_programs_log_and_groups_results_per_problem(tmp_path, monkeypatch, capsys):
    """A second run over more rollouts runs only the new program; group_fields sees every problem once with
    each key's result and rollout count, and its fields reach every rollout of that key."""
    inputs = _records(tmp_path / "in.jsonl", [("r1", "P/0", "ok-a"), ("r2", "P/0", "ok-a"), ("r3", "P/0", "bad-b")])
    out = tmp_path / "o.jsonl"
    _fake_run(monkeypatch, inputs, out, progress=False)
    assert capsys.readouterr().err == ""  # progress=False: no bar
    _records(inputs, [("r1", "P/0", "ok-a"), ("r2", "P/0", "ok-a"), ("r3", "P/0", "bad-b"), ("r4", "P/1", "ok-c"),
                      ("r5", "P/0", "ok-a")])
    calls = []

    def group_fields(problem_id, by_key):
        calls.append((problem_id, by_key))
        return {k: {"group": f"{problem_id} x{n}"} for k, (_, n) in by_key.items()}

    summary, executor, _ = _fake_run(monkeypatch, inputs, out, group_fields=group_fields)
    assert executor.ran == ["ok-c"]
    assert (summary["rollouts"], summary["problems"], summary["executed_programs"], summary["distinct_programs"],
            summary["resumed"]) == (5, 2, 1, 3, 4)
    assert summary["executor"] == {"kind": "fake", "nodes": {"n\u0153ud-a": 1}}  # no report: nothing added
    assert summary["program_cpu_seconds"] == 0.0  # ok-c's 0.004, rounded
    ok_a = {"verdict": "pass", "passed": True, "cpu": 0.004, "first": 1}  # from the first run
    bad_b = {"verdict": "wrong_answer", "passed": False, "cpu": 0.5, "first": 3}
    ok_c = {"verdict": "pass", "passed": True, "cpu": 0.004, "first": 4}
    key = {c: content_key("fake", SETTINGS, p, c) for p, c in [("P/0", "ok-a"), ("P/0", "bad-b"), ("P/1", "ok-c")]}
    assert calls == [("P/0", {key["ok-a"]: (ok_a, 3), key["bad-b"]: (bad_b, 1)}), ("P/1", {key["ok-c"]: (ok_c, 1)})]
    assert [(r["rollout_id"], r["group"], r["first"]) for r in _rows(out)] == [
        ("r1", "P/0 x3", 1), ("r2", "P/0 x3", 1), ("r3", "P/0 x1", 3), ("r4", "P/1 x1", 4), ("r5", "P/0 x3", 1)]
    bar = [line for line in capsys.readouterr().err.split("\r") if line]
    assert " 2/3 [" in bar[0] and " 3/3 [" in bar[-1]  # starts at the 2 programs already done


def test_group_fields_see_results_known_without_running(tmp_path, monkeypatch):
    """A plan without a job (its result known, never in the programs log) reaches group_fields with that result,
    not an error that the log has no result for it."""
    inputs = _records(tmp_path / "in.jsonl", [("r1", "P/0", "ok-a"), ("r2", "P/0", "KNOWN"), ("r3", "P/0", "KNOWN")])
    calls = []

    def group_fields(problem_id, by_key):
        calls.append((problem_id, by_key))
        return {k: {"group_n": n} for k, (_, n) in by_key.items()}

    _fake_run(monkeypatch, inputs, tmp_path / "o.jsonl", progress=False, group_fields=group_fields)
    ok_a = {"verdict": "pass", "passed": True, "cpu": 0.004, "first": 1}
    known = {"verdict": "syntax_error", "passed": False}
    assert calls == [("P/0", {content_key("fake", SETTINGS, "P/0", "ok-a"): (ok_a, 1), "": (known, 2)})]
    assert [(r["rollout_id"], r["verdict"], r["group_n"]) for r in _rows(tmp_path / "o.jsonl")] == [
        ("r1", "pass", 1), ("r2", "syntax_error", 2), ("r3", "syntax_error", 2)]


@pytest.mark.parametrize("terminal, steps, drawn", [
    (False, (0.25, 15.25, 0.5), ["0", "2", "3"]),  # a log: at the start, after 15 s (2 done), at the end
    (True, (0.75, 0.25, 0.25), ["0", "1", "3", "3"]),  # a terminal: when 0.5 s have passed, and at the end
])
def test_the_progress_bar_redraws_every_15_s_in_a_log_and_every_half_second_on_a_terminal(
        tmp_path, monkeypatch, terminal, steps, drawn):
    class Stream(io.StringIO):
        def isatty(self):
            return terminal

    monkeypatch.setattr(sys, "stderr", Stream())
    inputs = _records(tmp_path / "in.jsonl", [("r1", "P/0", "ok-a"), ("r2", "P/0", "bad-b"), ("r3", "P/0", "ok-c")])
    _fake_run(monkeypatch, inputs, tmp_path / "o.jsonl", type("Timed", (_Executor,), {"steps": steps}))
    assert re.findall(r" (\d+)/3 \[", sys.stderr.getvalue()) == drawn


def test_the_progress_bar_follows_the_terminal_width(tmp_path, monkeypatch):
    """A terminal widened from 41 to 81 columns during the run: the last bar is 80 characters wide, the first 40."""
    clock = _Clock()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            return 2

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((41 if clock.now < 1001 else 81, 24)))
    inputs = _records(tmp_path / "in.jsonl", [("r1", "P/0", "ok-a")])
    _fake_run(monkeypatch, inputs, tmp_path / "o.jsonl", clock=clock)
    bars = [line for line in sys.stderr.getvalue().strip("\n").split("\r") if line]
    assert [len(bars[0]), len(bars[-1])] == [40, 80]


def test_the_program_log_is_fsynced_once_more_than_a_second_has_passed_and_on_close(tmp_path, monkeypatch):
    """Every append is flushed; an fsync follows only when over 1 s passed since the last one (exactly 1 s: not
    yet), and close() always syncs."""
    from codevalue import engine
    from codevalue.engine import ProgramLog

    clock, synced = _Clock(), []
    monkeypatch.setattr(engine, "time", clock)
    monkeypatch.setattr(engine.os, "fsync", lambda fd: synced.append(clock.now))
    log = ProgramLog(tmp_path / "o.jsonl.programs.jsonl")  # last sync: 1000.0
    for i, now in enumerate([1000.5, 1001.0, 1001.5, 1002.5, 1003.0]):
        clock.now = now
        log.append(f"k{i}", {"verdict": "pass"}, "node")
    assert synced == [1001.5, 1003.0]
    log.close()
    assert synced == [1001.5, 1003.0, 1003.0]
    assert len(log.path.read_text().splitlines()) == 5


def test_a_ray_address_makes_a_ray_executor_without_connecting_yet():
    from codevalue.engine import LocalExecutor, make_executor
    from codevalue.raycluster import RayExecutor

    config = SandboxConfig(workers=1)
    executor = make_executor(config, "10.0.0.1:6379")
    assert type(executor) is RayExecutor and (executor.address, executor.config) == ("10.0.0.1:6379", config)
    assert type(make_executor(config)) is LocalExecutor and type(make_executor(config, "")) is LocalExecutor


def test_the_output_is_written_to_out_tmp_beside_it_then_renamed(tmp_path, monkeypatch):
    """While the rows are written, OUT does not exist yet and OUT.tmp (same directory: an atomic rename) does."""
    out, seen = tmp_path / "o.jsonl", []

    class Watching(_Stage):
        def row(self, record, plan, fields):
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            return super().row(record, plan, fields)

    inputs = _records(tmp_path / "in.jsonl", [("r1", "P/0", "ok-a")])
    _fake_run(monkeypatch, inputs, out, stage=Watching(), progress=False)
    assert seen == [["in.jsonl", "o.jsonl.meta.json", "o.jsonl.programs.jsonl", "o.jsonl.tmp"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "o.jsonl", "o.jsonl.meta.json",
                                                          "o.jsonl.programs.jsonl"]


def test_run_stage_refuses_other_settings_naming_each_change(tmp_path, monkeypatch):
    inputs = _records(tmp_path / "in.jsonl", [("r1", "P/0", "ok-a")])
    out = tmp_path / "o.jsonl"
    _fake_run(monkeypatch, inputs, out, progress=False)
    before = out.read_bytes()
    other = _Stage({"mode": "lenient", "timeout": 3.0, "n": 1})
    with pytest.raises(CodevalueError) as e:
        _fake_run(monkeypatch, inputs, out, stage=other, progress=False)
    assert str(e.value) == (f"{out} was written with other settings (mode: 'strict' -> 'lenient', timeout: 2.0 -> "
                            f"3.0); use another --out, or delete {out} to replace it (finished programs in "
                            "o.jsonl.programs.jsonl are reused where their key matches)")
    assert out.read_bytes() == before


def test_a_record_without_rollout_id_is_named(tmp_path):
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text('{"problem_id": "T/0", "rollout_id": "r1", "completion": ""}\n'
                        '{"problem_id": "T/0", "completion": ""}\n')
    with pytest.raises(DataError) as e:
        label_rollouts([_problem()], rollouts, tmp_path / "o.jsonl", CONFIG, progress=False)
    assert str(e.value) == f"{rollouts}, record 2, field 'rollout_id': missing field"

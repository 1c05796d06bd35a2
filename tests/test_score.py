"""Scoring files with a saved value model, and the `train` / `score` commands end to end."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import Phi3Config, Phi3ForTokenClassification

from codevalue.cli import main
from codevalue.errors import CodevalueError, DataError
from codevalue.jsonl import read_jsonl
from codevalue.model import InputSpec, ValueModel, load_tokenizer
from codevalue.problems import load_problems
from codevalue.score import score_file
from codevalue.targets import build_targets, prefix_value_targets


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read(path: Path) -> list[dict]:
    return [r for _, r in read_jsonl(path)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved random tiny value model (hidden 32, 2 blocks) whose values spread away from 0.5."""
    tok = load_tokenizer()
    config = Phi3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, classifier_dropout=0.0)
    torch.manual_seed(0)
    model = Phi3ForTokenClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(25)
    path = tmp_path_factory.mktemp("vm")
    ValueModel(model.eval(), tok, InputSpec(max_length=256)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vm(model_dir):
    return ValueModel.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def prompts():
    return {p.problem_id: p.prompt for p in load_problems("humaneval") if p.problem_id in ("HumanEval/0",
                                                                                          "HumanEval/2")}


ROLLOUTS = [
    {"problem_id": "HumanEval/0", "rollout_id": 0, "completion": "    return False\n"},
    {"problem_id": "HumanEval/0", "rollout_id": 1, "completion": "    return True\nprint(2)\n",
     "completion_truncated": "    return True\n"},
    {"problem_id": "HumanEval/2", "rollout_id": 0, "completion": "    return number % 1.0\n", "extra": [1, 2]},
]


def test_score_rollouts_with_problems(tmp_path, model_dir, vm, prompts):
    out = tmp_path / "scores.jsonl"
    summary = score_file(model_dir, write_lines(tmp_path / "r.jsonl", ROLLOUTS), out, problems="humaneval",
                         progress=False)
    assert summary == {"rollouts": 3, "out": str(out)}
    recs = read(out)
    assert [{k: v for k, v in r.items() if k != "value"} for r in recs] == ROLLOUTS  # input fields kept
    texts = ["    return False\n", "    return True\n", "    return number % 1.0\n"]  # what ran
    expected = vm.score([prompts[r["problem_id"]] for r in ROLLOUTS], texts)
    assert [r["value"] for r in recs] == [round(s.final, 6) for s in expected]
    assert len({r["value"] for r in recs}) == 3
    # the truncated text, not the full completion, is what was scored
    [full] = vm.score([prompts["HumanEval/0"]], [ROLLOUTS[1]["completion"]])
    assert recs[1]["value"] != round(full.final, 6)
    assert "token_values" not in recs[0]


def test_score_targets_output_uses_its_prompt(tmp_path, model_dir, vm):
    labeled = [{**r, "passed": i == 1, "verdict": "pass" if i == 1 else "wrong_answer"}
               for i, r in enumerate(ROLLOUTS)]
    targets = tmp_path / "targets.jsonl"
    build_targets(write_lines(tmp_path / "l.jsonl", labeled), "humaneval", targets)
    out = tmp_path / "scores.jsonl"
    score_file(vm, targets, out, per_token=True, progress=False)  # no --problems: the prompt field is used
    recs = read(out)
    expected = vm.score([r["prompt"] for r in recs], [r["completion_scored"] for r in recs])
    tok = vm.tokenizer
    for rec, s in zip(recs, expected, strict=True):
        assert rec["value"] == round(s.final, 6)
        n_tokens = len(tok(rec["completion_scored"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
        assert len(rec["token_values"]) == len(rec["token_offsets"]) == n_tokens
        assert rec["token_values"] == [round(v, 5) for v in s.values]
        assert rec["token_offsets"] == [list(o) for o in s.offsets]
        n = len(rec["completion_scored"])
        assert rec["token_offsets"][-1] == [n, n]
        assert rec["token_values"][-1] == pytest.approx(rec["value"], abs=1e-5)
        assert "value_targets" in rec  # everything from the input is kept
    # same answers whether the model comes as a directory or as a ValueModel, and with other batch sizes
    # (different padding changes float rounding by ~1e-7, so values are compared with a tolerance)
    out2 = tmp_path / "scores2.jsonl"
    score_file(model_dir, targets, out2, per_token=True, batch_size=2, progress=False)
    again = read(out2)
    assert [{k: v for k, v in r.items() if k not in ("value", "token_values")} for r in again] == [
        {k: v for k, v in r.items() if k not in ("value", "token_values")} for r in recs]
    for a, b in zip(again, recs, strict=True):
        assert a["value"] == pytest.approx(b["value"], abs=1e-5)
        assert a["token_values"] == pytest.approx(b["token_values"], abs=1e-4)


def test_prompt_field_wins_over_problems(tmp_path, vm, prompts):
    recs = [{"problem_id": "HumanEval/0", "prompt": "def g():\n", "completion": "    return 1\n"}]
    out = tmp_path / "s.jsonl"
    score_file(vm, write_lines(tmp_path / "r.jsonl", recs), out, problems="humaneval", progress=False)
    [own] = vm.score(["def g():\n"], ["    return 1\n"])
    [other] = vm.score([prompts["HumanEval/0"]], ["    return 1\n"])
    assert read(out)[0]["value"] == round(own.final, 6) != round(other.final, 6)


def test_missing_prompt_without_problems(tmp_path, vm):
    recs = [{"problem_id": "X", "prompt": "p", "completion": "c"}, {"problem_id": "HumanEval/0", "completion": "c"}]
    with pytest.raises(DataError, match="no prompt for problem 'HumanEval/0': pass --problems") as info:
        score_file(vm, write_lines(tmp_path / "r.jsonl", recs), tmp_path / "s.jsonl", progress=False)
    assert (info.value.field, info.value.line) == ("problem_id", 2)
    assert not (tmp_path / "s.jsonl").exists()


def test_unknown_problem_with_problems(tmp_path, vm):
    """--problems was given: the message says the id is not in it, not to pass --problems."""
    recs = [{"problem_id": "HumanEval/9999", "completion": "c"}]
    with pytest.raises(DataError, match="no prompt for problem 'HumanEval/9999': it is not in humaneval$") as info:
        score_file(vm, write_lines(tmp_path / "r.jsonl", recs), tmp_path / "s.jsonl", problems="humaneval",
                   progress=False)
    assert info.value.field == "problem_id"


def test_missing_completion(tmp_path, vm):
    with pytest.raises(DataError) as info:
        score_file(vm, write_lines(tmp_path / "r.jsonl", [{"problem_id": "A", "prompt": "p"}]), tmp_path / "s",
                   progress=False)
    assert (info.value.field, info.value.line) == ("completion", 1)


def test_duplicate_rollout_refused(tmp_path, vm):
    recs = [{"problem_id": "A", "rollout_id": 0, "prompt": "p", "completion": "c"},
            {"problem_id": "B", "rollout_id": 0, "prompt": "p", "completion": "c"},  # ids per problem are fine
            {"problem_id": "A", "rollout_id": 0, "prompt": "p", "completion": "d"}]
    with pytest.raises(DataError, match=r"record 3, field 'rollout_id': duplicate rollout_id '0' of problem 'A' "
                                        r"\(first on record 1\)"):
        score_file(vm, write_lines(tmp_path / "r.jsonl", recs), tmp_path / "s.jsonl", progress=False)
    assert not (tmp_path / "s.jsonl").exists()


def test_empty_completion_scored(tmp_path, vm):
    recs = [{"problem_id": "A", "prompt": "def f():\n", "completion_scored": ""}]
    out = tmp_path / "s.jsonl"
    score_file(vm, write_lines(tmp_path / "r.jsonl", recs), out, per_token=True, progress=False)
    [s] = vm.score(["def f():\n"], [""])
    assert read(out)[0]["value"] == round(s.final, 6)


# ---------------------------------------------------------------------------------------------------------
# the commands


def targets_records(n_problems: int = 10) -> list[dict]:
    records = []
    for i in range(n_problems):
        completions = [f"PASS\n    return x + {i}\n", f"FAIL\n    return x - {i}\n"]
        passed = [True, False]
        for rid, (c, t) in enumerate(zip(completions, prefix_value_targets(completions, passed), strict=True)):
            records.append({"problem_id": f"P{i}", "rollout_id": rid, "prompt": f"def f{i}(x):\n",
                            "completion": c, "completion_scored": c, "value_targets": t.to_dict(),
                            "label_class": rid})
    return records


@pytest.mark.slow
def test_cli_train_then_score(tmp_path, capsys):
    torch.manual_seed(0)
    targets = write_lines(tmp_path / "targets.jsonl", targets_records())
    model = tmp_path / "vm"
    assert main(["train", str(targets), "-o", str(model), "--tiny", "1m", "--epochs", "1", "--batch-size", "8",
                 "--max-length", "64", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "trained tiny-1m" in stdout and "on 18 rollouts" in stdout and "1 held-out problems" in stdout
    meta = json.loads((model / "codevalue.json").read_text())
    assert meta["backbone"] == "tiny-1m" and meta["trainable"] == "head + last 12 blocks"
    assert meta["input_spec"]["max_length"] == 64 and len(meta["eval_problems"]) == 1
    assert "eval_loss" in meta["metrics"] and meta["metrics"]["epoch"] == 1.0

    out = tmp_path / "scores.jsonl"
    assert main(["score", str(model), str(targets), "-o", str(out), "--per-token", "--quiet"]) == 0
    assert f"scored 20 rollouts -> {out}" in capsys.readouterr().out
    recs = read(out)
    vm = ValueModel.from_pretrained(model, device="cpu")
    expected = vm.score([r["prompt"] for r in recs], [r["completion_scored"] for r in recs])
    assert [r["value"] for r in recs] == [round(s.final, 6) for s in expected]
    assert all(len(r["token_values"]) == len(r["token_offsets"]) for r in recs)


@pytest.mark.slow
def test_cli_quiet_silences_the_weight_loading_bar(tmp_path, model_dir, capsys):
    rollouts = write_lines(tmp_path / "r.jsonl", ROLLOUTS)
    assert main(["score", str(model_dir), str(rollouts), "-o", str(tmp_path / "s.jsonl"), "--problems", "humaneval",
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["score", str(model_dir), str(rollouts), "-o", str(tmp_path / "s.jsonl"), "--problems", "humaneval"
                 ]) == 0
    assert "Loading weights" in capsys.readouterr().err  # the bar is back for a run without --quiet


def test_cli_score_error_exits_2(tmp_path, model_dir, capsys):
    rollouts = write_lines(tmp_path / "r.jsonl", [{"problem_id": "HumanEval/0", "completion": "c"}])
    assert main(["score", str(model_dir), str(rollouts), "-o", str(tmp_path / "s.jsonl"), "--quiet"]) == 2
    assert "field 'problem_id'" in capsys.readouterr().err
    assert main(["score", str(tmp_path), str(rollouts), "-o", str(tmp_path / "s.jsonl"), "--quiet"]) == 2
    assert "not a codevalue checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# scoring on a Ray cluster


starts_a_ray_cluster = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                          reason="starts a local Ray cluster: needs Ray (pip install codevalue[ray])")


@starts_a_ray_cluster
@pytest.mark.slow
def test_score_on_a_local_ray_cluster_equals_local_scoring(tmp_path, model_dir, monkeypatch, capsys):
    """`codevalue score --ray local` starts a one-node cluster on 127.0.0.1; two replicas share the chunks and
    the output is byte for byte the local one (same chunks, same order, same records)."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds and advertises loopback only
    import ray

    records = [{"problem_id": f"P{i % 5}", "rollout_id": i, "prompt": f"def f{i % 5}(x):\n",
                "completion": f"    return x + {i % 9}\n" * (1 + i % 3)} for i in range(40)]
    rollouts = write_lines(tmp_path / "r.jsonl", records)
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    score_file(model_dir, rollouts, local, per_token=True, batch_size=4, chunk_size=8, progress=False)
    actors = str(min(2, os.cpu_count() or 1))
    try:
        assert main(["score", str(model_dir), str(rollouts), "-o", str(remote), "--per-token", "--batch-size", "4",
                     "--chunk-size", "8", "--ray", "local", "--ray-actors", actors, "--quiet"]) == 0
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    finally:
        ray.shutdown()
    assert f"scored 40 rollouts -> {remote}" in capsys.readouterr().out
    assert remote.read_text() == local.read_text()
    assert [r["rollout_id"] for r in read(remote)] == list(range(40))


def test_ray_scoring_needs_a_model_directory(tmp_path, vm, model_dir):
    rollouts = write_lines(tmp_path / "r.jsonl", ROLLOUTS)
    with pytest.raises(CodevalueError, match="needs the model directory"):
        score_file(vm, rollouts, tmp_path / "s.jsonl", ray_address="local")
    with pytest.raises(CodevalueError, match="--ray-actors must be at least 1"):
        score_file(model_dir, rollouts, tmp_path / "s.jsonl", ray_address="local", ray_actors=0)


def test_replica_plan_one_per_gpu_else_one_per_node():
    from codevalue.score import replica_plan

    def node(cpu, gpu=0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": float(cpu), **({"GPU": float(gpu)} if gpu else {})}}

    gpu_cluster = [node(32, 4), node(32, 4), node(8)]
    assert replica_plan(gpu_cluster) == (8, {"num_gpus": 1, "num_cpus": 1})
    assert replica_plan(gpu_cluster, actors=3) == (3, {"num_gpus": 1, "num_cpus": 1})
    cpu_cluster = [node(16), node(8), node(64, alive=False)]
    assert replica_plan(cpu_cluster) == (2, {"num_cpus": 8})  # one per live node, the smaller node's cores
    assert replica_plan(cpu_cluster, actors=4) == (4, {"num_cpus": 4})
    assert replica_plan([node(2)], actors=2) == (2, {"num_cpus": 1})
    with pytest.raises(CodevalueError, match="3 model replicas do not fit"):
        replica_plan([node(2)], actors=3)
    with pytest.raises(CodevalueError, match="9 model replicas do not fit"):
        replica_plan(gpu_cluster, actors=9)
    with pytest.raises(CodevalueError, match="no node with a CPU"):
        replica_plan([node(4, alive=False)])

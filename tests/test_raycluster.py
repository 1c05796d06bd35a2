"""The Ray executor on a real two-node cluster on this machine (ray.cluster_utils.Cluster), loopback only.

Programs run only through the project's sandbox (one Sandbox actor per Ray node).
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # conftest: Ray binds and advertises 127.0.0.1
ray = pytest.importorskip("ray")  # the dev extra installs it, so CI runs these tests

from codevalue.errors import CodevalueError  # noqa: E402
from codevalue.jsonl import read_jsonl  # noqa: E402
from codevalue.labels import LabelConfig, label_rollouts  # noqa: E402
from codevalue.raycluster import connect  # noqa: E402
from codevalue.rollouts import CODEX_STOP, bundled_codegen_rollouts  # noqa: E402
from codevalue.sandbox import SandboxConfig  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _rows(path):
    return [r for _, r in read_jsonl(path)]


def _bundled_sample(tmp_path, per_problem: int, problems: int):
    """The first `per_problem` CodeGen-16B samples of the first `problems` HumanEval problems, as a file."""
    every = tmp_path / "all.jsonl"
    bundled_codegen_rollouts(every)
    sample = [r for r in _rows(every)
              if r["sample_index"] < per_problem and int(r["problem_id"].split("/")[1]) < problems]
    path = tmp_path / "sample.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample))
    return path


def test_cluster_is_on_loopback(cluster):
    assert cluster.address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}


def test_ray_executor_gives_the_local_executors_labels(cluster, tmp_path):
    rollouts = _bundled_sample(tmp_path, per_problem=2, problems=40)
    config = LabelConfig(stop=CODEX_STOP, sandbox=SandboxConfig(workers=1))
    local = label_rollouts("humaneval", rollouts, tmp_path / "local.jsonl", config, progress=False)
    remote = label_rollouts("humaneval", rollouts, tmp_path / "ray.jsonl", config, progress=False,
                            ray=cluster.address)
    assert _rows(tmp_path / "ray.jsonl") == _rows(tmp_path / "local.jsonl")
    assert len({r["verdict"] for r in _rows(tmp_path / "ray.jsonl")}) >= 3  # not a set of identical verdicts
    assert local["executor"]["kind"] == "local" and remote["executor"]["kind"] == "ray"
    nodes = remote["executor"]["nodes"]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(nodes) == alive and len(nodes) == 2  # both nodes ran programs
    assert sum(nodes.values()) == remote["executed_programs"] == local["executed_programs"]
    meta = json.loads((tmp_path / "ray.jsonl.meta.json").read_text())
    assert meta["executor"] == remote["executor"]
    assert remote["executor"]["lost_nodes"] == [] and remote["executor"]["rerun_programs"] == 0


def _slow_problems(path, n):
    path.write_text("".join(json.dumps({
        "task_id": f"S/{i}", "prompt": "import time\ndef f():\n", "entry_point": "f",
        "test": "def check(c):\n    time.sleep(0.25)\n    assert c() == 1\n"}) + "\n" for i in range(n)))
    return path


def test_a_node_lost_mid_run_costs_no_label(cluster, tmp_path):
    n = 32
    problems = _slow_problems(tmp_path / "p.jsonl", n)
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text("".join(json.dumps({"problem_id": f"S/{i}", "rollout_id": f"r{i}",
                                            "completion": "    return 1\n"}) + "\n" for i in range(n)))
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    doomed_id = doomed.node_id
    out = tmp_path / "o.jsonl"
    log = tmp_path / "o.jsonl.programs.jsonl"
    done: dict = {}

    def run() -> None:
        try:
            done["summary"] = label_rollouts(str(problems), rollouts, out, LabelConfig(), progress=False,
                                             ray=cluster.address)
        except BaseException as e:  # reported by the assert below
            done["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the doomed node has finished some programs
        if log.exists() and any(json.loads(line)["node"] == doomed_id for line in log.read_text().splitlines()):
            break
        time.sleep(0.05)
    cluster.remove_node(doomed)
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in done, done.get("error")
    summary = done["summary"]
    nodes = summary["executor"]["nodes"]
    assert 0 < nodes[doomed_id] < n  # it ran some programs, then died
    assert summary["executor"]["lost_nodes"] == [doomed_id]
    assert summary["executor"]["rerun_programs"] > 0  # it held programs when it died: they ran elsewhere
    assert sum(nodes.values()) == n
    rows = _rows(out)
    assert [r["rollout_id"] for r in rows] == [f"r{i}" for i in range(n)]
    assert all(r["verdict"] == "pass" for r in rows)
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == n  # every program answered once: none lost, none twice


@pytest.mark.parametrize("address", ["", "nonsense"])
def test_bad_ray_address_is_one_clear_error(address):
    with pytest.raises(CodevalueError, match="auto, local or HOST:PORT"):
        connect(address)


def test_checks_on_the_cluster_match_local_checks(cluster, tmp_path):
    from codevalue.checks import run_checks

    labeled = _bundled_sample(tmp_path, per_problem=3, problems=8)
    local = run_checks(labeled, "humaneval", tmp_path / "local.jsonl", sandbox=SandboxConfig(workers=1),
                       progress=False)
    remote = run_checks(labeled, "humaneval", tmp_path / "ray.jsonl", sandbox=SandboxConfig(workers=1),
                        progress=False, ray=cluster.address)
    strip = _rows(tmp_path / "local.jsonl")
    assert _rows(tmp_path / "ray.jsonl") == strip
    assert any("1" in r["checks"]["passed"] for r in strip) and any("0" in r["checks"]["passed"] for r in strip)
    assert remote["executor"]["kind"] == "ray" and sum(remote["executor"]["nodes"].values()) == local["programs_run"]

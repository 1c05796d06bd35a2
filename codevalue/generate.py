"""Rollout generation with the paper's branching scheme: one main rollout per problem, then M new
continuations from just before each of its K lowest-probability sampled tokens (1 + K*M rollouts).

    codevalue generate --problems apps-intro-train -o ROLLOUTS.jsonl --model microsoft/Phi-4-mini-instruct
    codevalue generate --problems humaneval -o R.jsonl --endpoint http://localhost:8000 --model-name NAME

Output: the rollouts format (`codevalue label` reads it as is) plus, per rollout:
  - prompt: the exact text the generator continued (a branch's prompt is this plus its parent's prefix)
  - completion: the whole text after `prompt`; a branch holds its parent's prefix + its own continuation
  - parent_id, branch_token_index, branch_char_offset: null for a main rollout; for a branch, the index
    of the parent's token it replaces and the character where it departs (completion[:offset] is shared)
  - tokens, logprobs: text and log-probability of each token this rollout sampled (a branch: only its new
    tokens; the shared prefix's tokens are the parent's tokens[:branch_token_index])
  - finish_reason: "eos" (end token, recorded as the last token with text ""), "stop" (a stop sequence
    cut the text; endpoints also report EOS as "stop") or "length"
  - generator, sampling, tree_size (rollouts in this problem's tree, for resuming)

Log-probabilities are those of the model's own distribution (log-softmax of the logits before
temperature and top-p), so they rank tokens the same whatever the sampling settings; the endpoint
backend records what the server returns (vLLM's default is the same raw distribution).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .errors import CodevalueError
from .jsonl import JsonlAppender, read_completed_lines, write_jsonl
from .problems import Problem, load_problems
from .rollouts import CODEX_STOP


@dataclass
class Sample:
    text: str
    token_texts: list[str]  # decoded text of each sampled token; "".join(token_texts) == text
    logprobs: list[float]
    finish_reason: str  # "eos" | "stop" | "length"
    token_ids: list[int] | None = None  # HF backend only; not written to the output

    def __post_init__(self) -> None:  # rounded once, so branch points follow exactly what is recorded
        self.logprobs = [round(float(x), 6) for x in self.logprobs]

    def offset(self, i: int) -> int:
        """Character where token i starts."""
        return sum(len(t) for t in self.token_texts[:i])


def trim(sample: Sample, n_chars: int) -> Sample:
    """Cut the text at n_chars (a stop sequence); keep the tokens that start before the cut."""
    if n_chars >= len(sample.text):
        return sample
    texts, pos = [], 0
    for t in sample.token_texts:
        if pos >= n_chars:
            break
        texts.append(t[: n_chars - pos])
        pos += len(t)
    k = len(texts)
    ids = sample.token_ids[:k] if sample.token_ids is not None else None
    return Sample(sample.text[:n_chars], texts, sample.logprobs[:k], "stop", ids)


def stop_index(text: str, stop: Sequence[str], start: int = 0) -> int:
    """Earliest position >= start where a stop sequence begins, or -1."""
    hits = [i for s in stop if (i := text.find(s, start)) != -1]
    return min(hits) if hits else -1


class Generator(Protocol):
    name: str

    def sample(self, prompts: list[str], n: int, max_new_tokens: int | Sequence[int], temperature: float,
               top_p: float, seed: int, stop: Sequence[str] = ()) -> list[Sample]:
        """n samples per prompt, prompt-major; max_new_tokens may be one budget per prompt."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Hugging Face backend


class _RowText:
    """Text of one generated row, token by token: each token is decoded with a few tokens of context
    (vLLM's incremental scheme), so SentencePiece spaces and multi-byte characters come out right; a token
    that ends inside a character gets "" and the next one carries the character."""

    def __init__(self, tokenizer, context_ids: list[int], eos_ids: set[int], stop: Sequence[str], budget: int):
        self.tok, self.eos_ids, self.stop, self.budget = tokenizer, eos_ids, stop, budget
        self.ids = list(context_ids[-6:])
        self.prefix_offset, self.read_offset = 0, len(self.ids)
        self.pieces: list[str] = []
        self.text, self.finish = "", None
        self.max_stop = max((len(s) for s in stop), default=0)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> bool:
        """Add one sampled token; True once the row is finished."""
        if self.finish:
            return True
        if token_id in self.eos_ids:
            self.pieces.append("")
            self.finish = "eos"
            return True
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        piece = ""
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.pieces.append(piece)
        self.text += piece
        new_from = max(0, len(self.text) - len(piece) - self.max_stop)  # only new text can hold a stop
        if piece and self.stop and stop_index(self.text, self.stop, new_from) >= 0:
            self.finish = "stop"
        elif len(self.pieces) >= self.budget:
            self.finish = "length"
        return self.finish is not None


class HFGenerator:
    """A local Hugging Face causal LM; rows are left-padded and sampled together with the KV cache."""

    def __init__(self, model, tokenizer=None, device: str | None = None, dtype: str = "auto", batch_size: int = 64,
                 chat_template: bool = True):
        import torch

        from .model import load_tokenizer

        self.name = model if isinstance(model, str) else getattr(model, "name_or_path", "") or type(model).__name__
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                           "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
            try:
                model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
            except (OSError, ValueError) as e:
                raise CodevalueError(f"could not load model {self.name!r}: {e}") from None
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer or load_tokenizer(self.name)
        self.tokenizer.padding_side = "left"
        self.batch_size, self.chat_template = batch_size, chat_template
        eos = model.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}

    def encode(self, prompt: str) -> list[int]:
        # A chat-templated prompt already holds its special tokens as text.
        templated = bool(self.chat_template and getattr(self.tokenizer, "chat_template", None))
        return self.tokenizer(prompt, add_special_tokens=not templated)["input_ids"]

    def sample(self, prompts, n, max_new_tokens, temperature, top_p, seed, stop=()):
        import torch

        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        encoded = [self.encode(p) for p in prompts]
        rows = [(encoded[i], budgets[i]) for i in range(len(prompts)) for _ in range(n)]
        torch.manual_seed(seed)
        out: list[Sample] = []
        for start in range(0, len(rows), self.batch_size):
            out += self._generate(rows[start:start + self.batch_size], temperature, top_p, stop)
        return out

    def _generate(self, rows, temperature, top_p, stop) -> list[Sample]:
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessor,
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
        )

        class Recorder(LogitsProcessor):
            """Log-softmax of the raw logits at each sampled token. A processor sees step t's logits and
            the tokens up to t-1, so only one step's distribution (B x V) is kept, not all of them."""

            def __init__(self):
                self.prev, self.steps = None, []

            def __call__(self, input_ids, scores):
                if self.prev is not None:
                    self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
                self.prev = torch.log_softmax(scores.float(), dim=-1)
                return scores

        class RowsDone(StoppingCriteria):
            def __init__(self, texts: list[_RowText]):
                self.texts = texts

            def __call__(self, input_ids, scores, **kwargs):
                last = input_ids[:, -1].tolist()
                return torch.tensor([t.push(tok) for t, tok in zip(self.texts, last, strict=True)],
                                    device=input_ids.device)

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows], device=self.model.device)
        greedy = temperature <= 0
        config = GenerationConfig(do_sample=not greedy, temperature=None if greedy else temperature,
                                  top_p=None if greedy else top_p, top_k=None, max_new_tokens=max(b for _, b in rows),
                                  pad_token_id=pad, eos_token_id=sorted(self.eos_ids))
        done = RowsDone([_RowText(self.tokenizer, ids, self.eos_ids, stop, b) for ids, b in rows])
        recorder = Recorder()
        with torch.no_grad():
            seqs = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                       logits_processor=LogitsProcessorList([recorder]),
                                       stopping_criteria=StoppingCriteriaList([done]))
        recorder.steps.append(recorder.prev.gather(1, seqs[:, -1:]).squeeze(1))
        lps = torch.stack(recorder.steps, dim=1).cpu().tolist()
        new = seqs[:, width:].cpu().tolist()
        samples = []
        for (ids, budget), row_ids, row_lps in zip(rows, new, lps, strict=True):
            text = _RowText(self.tokenizer, ids, self.eos_ids, stop, budget)  # fresh: the criteria's is shared
            for tok in row_ids:
                if text.push(tok):
                    break
            k = len(text.pieces)
            sample = Sample(text.text, text.pieces, row_lps[:k], text.finish or "length", row_ids[:k])
            if text.finish == "stop":
                sample = trim(sample, stop_index(text.text, stop))
            samples.append(sample)
        return samples


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible completions endpoint (vLLM, llama.cpp server, TGI)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def completions_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/completions"):
        return url
    return url + ("/completions" if url.endswith("/v1") else "/v1/completions")


def align_pieces(text: str, tokens: list[str]) -> list[str]:
    """Split `text` into one piece per server token. Tokens that do not spell the text where they stand
    (special tokens, vLLM's 'bytes:\\xe2' for partial UTF-8) get "", and characters nobody spelled go to
    the last such token, so "".join(pieces) == text always holds."""
    pieces, pos, loose = [""] * len(tokens), 0, None
    for i, t in enumerate(tokens):
        if t and text.startswith(t, pos):
            pieces[i], pos, loose = t, pos + len(t), None
            continue
        j = text.find(t, pos, pos + len(t) + 8) if t and loose is not None else -1
        if j > pos:  # resynchronised: the skipped characters belong to the unmatched token(s)
            pieces[loose] = text[pos:j]
            pieces[i], pos, loose = t, j + len(t), None
        else:
            loose = i if loose is None else loose
    if pos < len(text):
        pieces[loose if loose is not None else max(len(tokens) - 1, 0)] += text[pos:]
        if not tokens:
            pieces = [text]
    return pieces


class EndpointGenerator:
    """Any server speaking the OpenAI /v1/completions protocol with `logprobs`. A branch is sampled by
    sending prompt + parent prefix as the prompt (text in, text out: no token ids are exchanged)."""

    def __init__(self, url: str, model_name: str, api_key: str | None = None, retries: int = 5,
                 timeout: float = 600.0, backoff: float = 1.0, concurrency: int = 8, tokenizer=None,
                 chat_template: bool = True):
        self.url, self.name, self.api_key = completions_url(url), model_name, api_key
        self.retries, self.timeout, self.backoff, self.concurrency = retries, timeout, backoff, concurrency
        self.tokenizer, self.chat_template = tokenizer, chat_template  # tokenizer: only for chat templates

    def sample(self, prompts, n, max_new_tokens, temperature, top_p, seed, stop=()):
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        with ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            results = pool.map(lambda i: self._sample_one(prompts[i], n, budgets[i], temperature, top_p,
                                                          seed + 7919 * i, stop), range(len(prompts)))
            return [s for group in results for s in group]

    def _sample_one(self, prompt, n, max_tokens, temperature, top_p, seed, stop) -> list[Sample]:
        samples: list[Sample] = []
        while len(samples) < n:  # servers without `n` (llama.cpp) answer one choice per request
            body = {"model": self.name, "prompt": prompt, "n": n - len(samples), "max_tokens": max_tokens,
                    "temperature": temperature, "top_p": top_p, "logprobs": 1, "seed": seed + len(samples)}
            if stop:
                body["stop"] = list(stop)
            choices = sorted(self._post(body).get("choices") or [], key=lambda c: c.get("index", 0))
            if not choices:
                raise CodevalueError(f"{self.url} answered without choices")
            samples += [self._parse(c, stop) for c in choices[: n - len(samples)]]
        return samples

    def _parse(self, choice: dict, stop: Sequence[str]) -> Sample:
        lp = choice.get("logprobs") or {}
        tokens, values = lp.get("tokens"), lp.get("token_logprobs")
        if tokens is None or values is None or len(tokens) != len(values):
            raise CodevalueError(f"{self.url} returned no per-token log-probabilities (is `logprobs` supported?)")
        text = choice.get("text") or ""
        pieces = align_pieces(text, tokens)
        logprobs = [float(v) if v is not None else 0.0 for v in values]
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        if finish == "stop":  # tokens past the text: the end token or the one holding the stop sequence
            while pieces and not pieces[-1]:
                pieces.pop()
            logprobs = logprobs[: len(pieces)]
        sample = Sample(text, pieces, logprobs, finish)
        cut = stop_index(text, stop)
        return trim(sample, cut) if cut >= 0 else sample

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data, last = json.dumps(body).encode(), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, data, headers),
                                            timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace").strip()
                if e.code not in RETRY_STATUS:
                    raise CodevalueError(f"{self.url} answered HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (OSError, ValueError) as e:  # URLError, timeouts, resets, a non-JSON answer
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        raise CodevalueError(f"{self.url} failed {self.retries + 1} times; last error: {last}")


# ---------------------------------------------------------------------------------------------------------
# prompts, branch points, trees


def build_prompt(problem: Problem, tokenizer=None, chat_template: bool = True) -> str:
    """HumanEval/MBPP: the problem's prompt, continued as is. APPS: the question, starter code and the
    stdin/call-based instruction, in the tokenizer's chat template when it has one (the answer is then a
    fenced block, which `label` extracts), else in the APPS paper's QUESTION/ANSWER format."""
    if problem.source != "apps":
        return problem.model_prompt
    if chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        if problem.kind == "call":
            how = (f"Complete the starter code: `{problem.entry_point}` is called with each test's arguments "
                   "and its return value is checked.")
        else:
            how = "Read the input from standard input and print the answer to standard output."
        message = (f"Solve this programming problem in Python 3.\n\n{problem.model_prompt}\n\n{how}\n"
                   "Answer with the complete program in a single ```python code block.")
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    fmt = "Use Call-Based format" if problem.kind == "call" else "Use Standard Input format"
    return f"\nQUESTION:\n{problem.prompt}\n{problem.starter_code}\n{fmt}\nANSWER:\n"


def select_branch_points(sample: Sample, k: int, exclude: Sequence[int] = ()) -> list[int]:
    """Indices of the k lowest-probability tokens of `sample`, in text order.

    Ties go to the earliest token. Not eligible: the end token (a branch there would only resample the
    end), a token that starts inside a character (its prefix is not text), and positions in `exclude`
    (where a branch already departs, when a tree is grown further). Fewer than k when fewer are eligible.
    """
    last, taken = len(sample.token_texts) - 1, set(exclude)
    eligible = [i for i in range(len(sample.token_texts))
                if not (sample.finish_reason == "eos" and i == last)
                and (i == 0 or sample.token_texts[i - 1]) and i not in taken]
    return sorted(sorted(eligible, key=lambda i: (sample.logprobs[i], i))[:k])


@dataclass
class GenerateConfig:
    mode: str = field(default="tree", metadata={"choices": ("tree", "plain"), "help": (
        "tree: main rollout + branches (the paper); plain: `samples` independent rollouts")})
    branches: int = field(default=6, metadata={"help": "K: branch points per main rollout"})
    per_branch: int = field(default=6, metadata={"help": "M: continuations per branch point"})
    samples: int | None = field(default=None, metadata={
        "help": "plain mode: samples per problem (default 1 + K*M, the budget of a tree)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling threshold"})
    max_new_tokens: int = field(default=1024, metadata={  # a branch at token j gets the rest
        "help": "tokens per rollout, a branch's shared prefix included"})
    seed: int = field(default=0, metadata={"help": "seed; same seed and settings give the same file"})
    stop: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "stop sequence (repeatable; 'codex' = the Codex list, 'none' = no stop; default: codex for "
        "HumanEval/MBPP, none for APPS)")})
    group_size: int = field(default=8, metadata={  # part of what a seed reproduces
        "help": "problems per generator call"})

    def __post_init__(self) -> None:
        if self.mode not in ("tree", "plain"):
            raise CodevalueError(f"unknown mode {self.mode!r}; choose tree or plain")
        if self.samples is None:
            self.samples = 1 + self.branches * self.per_branch


def problem_seed(seed: int, key: str) -> int:
    """A seed per problem (and rollout key): the same file whatever the order or batching of problems."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


def _record(pid, rid, prompt, completion, sample, parent=None, j=None, offset=None) -> dict[str, Any]:
    return {"problem_id": pid, "rollout_id": rid, "completion": completion, "prompt": prompt, "parent_id": parent,
            "branch_token_index": j, "branch_char_offset": offset, "tokens": sample.token_texts,
            "logprobs": sample.logprobs, "finish_reason": sample.finish_reason}


def _sample_by_stop(gen: Generator, cfg: GenerateConfig, prompts: list[str], budgets: list[int],
                    stops: list[tuple[str, ...]], n: int, seed: int) -> list[list[Sample]]:
    """n samples for each prompt, one generator call per distinct stop list (normally just one)."""
    out: list[list[Sample]] = [[] for _ in prompts]
    for stop in dict.fromkeys(stops):
        idx = [i for i, s in enumerate(stops) if s == stop]
        got = gen.sample([prompts[i] for i in idx], n, [budgets[i] for i in idx], cfg.temperature, cfg.top_p,
                         seed, stop)
        for k, i in enumerate(idx):
            out[i] = got[k * n:(k + 1) * n]
    return out


def _group_records(problems: list[Problem], gen: Generator, cfg: GenerateConfig, tokenizer) -> list[list[dict]]:
    """Rollout records of each problem of a group: mains in one call, then every branch in one call."""
    prompts = [build_prompt(p, tokenizer, getattr(gen, "chat_template", True)) for p in problems]
    stops = [tuple(cfg.stop if cfg.stop is not None else CODEX_STOP if p.kind == "check" else ()) for p in problems]
    seed, full_budget = problem_seed(cfg.seed, problems[0].problem_id), [cfg.max_new_tokens] * len(problems)
    if cfg.mode == "plain":
        samples = _sample_by_stop(gen, cfg, prompts, full_budget, stops, cfg.samples, seed)
        return [[_record(p.problem_id, f"{p.problem_id}/s{i}", prompt, s.text, s) for i, s in enumerate(group)]
                for p, prompt, group in zip(problems, prompts, samples, strict=True)]
    mains = [group[0] for group in _sample_by_stop(gen, cfg, prompts, full_budget, stops, 1, seed)]
    jobs = [(g, j, m.offset(j)) for g, m in enumerate(mains) for j in select_branch_points(m, cfg.branches)]
    branches = _sample_by_stop(gen, cfg, [prompts[g] + mains[g].text[:off] for g, _, off in jobs],
                               [max(1, cfg.max_new_tokens - j) for _, j, _ in jobs],  # the main's budget
                               [stops[g] for g, _, _ in jobs], cfg.per_branch, seed + 1)
    out = []
    for g, (p, prompt, main) in enumerate(zip(problems, prompts, mains, strict=True)):
        pid, main_id = p.problem_id, f"{p.problem_id}/main"
        recs = [_record(pid, main_id, prompt, main.text, main)]
        longest = max((len(x) for x in stops[g]), default=0)
        for (g2, j, off), group in zip(jobs, branches, strict=True):
            for m, s in enumerate(group if g2 == g else []):
                full = main.text[:off] + s.text
                cut = stop_index(full, stops[g], max(0, off - longest))
                if cut >= 0:  # a stop sequence straddling the branch point: cut as `label --stop` would
                    s, full = trim(s, max(0, cut - off)), full[:cut]
                recs.append(_record(pid, f"{pid}/b{j}-{m}", prompt, full, s, main_id, j, off))
        out.append(recs)
    return out


def generate_rollouts(problems: str | os.PathLike | list[Problem], generator: Generator, out: str | os.PathLike,
                      config: GenerateConfig | None = None, progress: bool = True, tokenizer=None,
                      problem_format: str | None = None) -> dict[str, Any]:
    """Generate rollouts for every problem into `out` (JSONL), resuming a previous run of the same command.

    Problems are done in groups of `group_size`; a group is written once all its trees are complete, and a
    group that a crash left incomplete is generated again from scratch (same seed, same output).
    """
    from tqdm import tqdm

    cfg = config or GenerateConfig()
    if not isinstance(problems, list):
        problems = load_problems(problems, format=problem_format)
    tokenizer = tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in (("samples",) if cfg.mode == "tree" else ("branches", "per_branch"))}
    settings["stop"] = list(cfg.stop) if cfg.stop is not None else None
    settings["logprobs"] = "model" if isinstance(generator, HFGenerator) else "server"
    meta = {"name": generator.name, "backend": type(generator).__name__}
    existing = read_completed_lines(out)
    counts: dict[str, int] = defaultdict(int)
    for rec in existing:
        if rec.get("sampling") != settings or rec.get("generator") != meta:
            raise CodevalueError(f"{out} holds rollouts generated with {rec.get('generator')} "
                                 f"{rec.get('sampling')}, not {meta} {settings}; use another -o")
        counts[str(rec["problem_id"])] += 1
    complete = {str(r["problem_id"]) for r in existing if counts[str(r["problem_id"])] == r.get("tree_size")}
    size = max(1, cfg.group_size)
    groups = [problems[i:i + size] for i in range(0, len(problems), size)]
    todo = [g for g in groups if any(p.problem_id not in complete for p in g)]
    redo = {p.problem_id for g in todo for p in g}
    if any(str(r["problem_id"]) in redo for r in existing):  # drop incomplete groups' lines
        write_jsonl(out, [r for r in existing if str(r["problem_id"]) not in redo])
    start, written = time.monotonic(), 0
    bar = tqdm(total=len(problems), initial=len(problems) - len(redo), unit="problem", desc="generate",
               disable=not progress, dynamic_ncols=True)
    with JsonlAppender(out) as sink:
        for group in todo:
            for recs in _group_records(group, generator, cfg, tokenizer):
                for rec in recs:
                    sink.write({**rec, "generator": meta, "sampling": settings, "tree_size": len(recs)})
                written += len(recs)
            sink.flush()
            bar.update(len(group))
    bar.close()
    return {"problems": len(problems), "generated_problems": len(redo), "skipped_problems": len(problems) - len(redo),
            "rollouts_written": written, "wall_seconds": round(time.monotonic() - start, 2), "out": str(out)}


__all__ = ["Sample", "Generator", "HFGenerator", "EndpointGenerator", "GenerateConfig", "generate_rollouts",
           "build_prompt", "select_branch_points", "align_pieces", "trim", "problem_seed"]

"""Rollout generation: branching trees on a tiny random Phi-3 (HF backend) and a local fake completions server."""

import json
import random
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from codevalue.cli import build_parser
from codevalue.errors import CodevalueError
from codevalue.generate import (
    EndpointGenerator,
    GenerateConfig,
    HFGenerator,
    Sample,
    align_pieces,
    build_prompt,
    completions_url,
    generate_rollouts,
    select_branch_points,
    trim,
)
from codevalue.jsonl import read_jsonl
from codevalue.model import load_tokenizer
from codevalue.problems import Problem, load_problems
from codevalue.problems import TestCase as Case

K, M, TOKENS = 3, 2, 16


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    config = Phi3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return Phi3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gen(model, tok):
    return HFGenerator(model, tok, device="cpu")


@pytest.fixture(scope="module")
def humaneval2():
    return load_problems("humaneval")[:2]


@pytest.fixture(scope="module")
def tree_file(tmp_path_factory, gen, humaneval2):
    """One HF tree run shared by several tests (generation is the slow part)."""
    out = tmp_path_factory.mktemp("gen") / "rollouts.jsonl"
    config = GenerateConfig(branches=K, per_branch=M, max_new_tokens=TOKENS, stop=(), group_size=1)
    summary = generate_rollouts(humaneval2, gen, out, config, progress=False)
    assert summary["generated_problems"] == 2 and summary["rollouts_written"] == 2 * (1 + K * M)
    return out


def records(path):
    return [rec for _, rec in read_jsonl(path)]


def check_tree(recs, k, m, prompts):
    """Every invariant of a branching tree that the output must satisfy."""
    by_problem = {}
    for r in recs:
        by_problem.setdefault(r["problem_id"], []).append(r)
    assert set(by_problem) == set(prompts)
    for pid, rs in by_problem.items():
        main = next(r for r in rs if r["parent_id"] is None)
        branches = [r for r in rs if r["parent_id"] is not None]
        assert main["rollout_id"] == f"{pid}/main" and main["branch_char_offset"] is None
        assert main["completion"] == "".join(main["tokens"]) and len(main["tokens"]) == len(main["logprobs"])
        assert all(r["prompt"] == prompts[pid] for r in rs)
        toks, lps = main["tokens"], main["logprobs"]
        eligible = [i for i in range(len(toks)) if not (main["finish_reason"] == "eos" and i == len(toks) - 1)
                    and (i == 0 or toks[i - 1])]
        expected = sorted(sorted(eligible, key=lambda i: (lps[i], i))[:k])  # the k least likely, by the record
        points = sorted({r["branch_token_index"] for r in branches})
        assert points == expected
        assert len(rs) == 1 + k * m == 1 + len(points) * m and all(r["tree_size"] == len(rs) for r in rs)
        for b in branches:
            j, off = b["branch_token_index"], b["branch_char_offset"]
            assert b["parent_id"] == main["rollout_id"] and b["rollout_id"].startswith(f"{pid}/b{j}-")
            assert off == len("".join(toks[:j]))  # departs exactly where token j started
            if len(b["completion"]) >= off:
                assert b["completion"] == main["completion"][:off] + "".join(b["tokens"])
            else:  # a stop sequence straddling the branch point cut into the shared prefix
                assert b["tokens"] == [] and b["finish_reason"] == "stop"
                assert b["completion"] == main["completion"][:len(b["completion"])]
            assert len(b["tokens"]) == len(b["logprobs"]) <= TOKENS - j  # the main rollout's budget
    return by_problem


# ---------------------------------------------------------------------------------------------------------
# HF backend


@pytest.mark.slow
def test_hf_tree_structure(tree_file, humaneval2):
    recs = records(tree_file)
    check_tree(recs, K, M, {p.problem_id: p.prompt for p in humaneval2})
    assert len({r["rollout_id"] for r in recs}) == len(recs)
    r = recs[0]
    assert r["generator"]["backend"] == "HFGenerator" and r["sampling"]["temperature"] == 0.8
    assert r["sampling"]["logprobs"] == "model" and r["sampling"]["branches"] == K


@pytest.mark.slow
def test_hf_logprobs_are_the_models_own(gen, model, tok):
    # two prompts of different lengths: left padding must not change anything
    prompts = ["def add(a, b):\n    return", "import os\n\n\ndef main(argv):\n    \"\"\"Entry point.\"\"\"\n"]
    samples = gen.sample(prompts, 2, 8, temperature=0.8, top_p=0.95, seed=3)
    assert len(samples) == 4
    for i, s in enumerate(samples):
        assert s.text == "".join(s.token_texts) and len(s.token_ids) == len(s.logprobs) > 0
        ids = tok(prompts[i // 2], add_special_tokens=False)["input_ids"]
        full = torch.tensor([ids + s.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
        ref = logp[len(ids) - 1:-1].gather(1, torch.tensor(s.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(ref, torch.tensor(s.logprobs), atol=1e-4)  # before temperature and top-p
    again = gen.sample(prompts, 2, 8, temperature=0.8, top_p=0.95, seed=3)
    assert [s.text for s in again] == [s.text for s in samples]
    other = gen.sample(prompts, 2, 8, temperature=0.8, top_p=0.95, seed=4)
    assert [s.text for s in other] != [s.text for s in samples]


@pytest.mark.slow
def test_hf_stop_sequences_trim_text_and_tokens(gen, humaneval2, tmp_path):
    stop = tuple("aeiou")  # a random model meets one of these within a few tokens
    out = tmp_path / "r.jsonl"
    generate_rollouts(humaneval2[:1], gen, out, GenerateConfig(branches=2, per_branch=2, max_new_tokens=TOKENS,
                                                               stop=stop), progress=False)
    recs = records(out)
    assert any(r["finish_reason"] == "stop" for r in recs)
    main = recs[0]
    for r in recs:
        assert not any(s in r["completion"] for s in stop)
        assert len(r["tokens"]) == len(r["logprobs"])
        if r["parent_id"] is None:
            assert r["completion"] == "".join(r["tokens"])
        else:
            off = r["branch_char_offset"]
            assert r["completion"] == main["completion"][:off] + "".join(r["tokens"])


@pytest.mark.slow
def test_plain_mode(gen, humaneval2, tmp_path):
    out = tmp_path / "plain.jsonl"
    generate_rollouts(humaneval2, gen, out, GenerateConfig(mode="plain", samples=3, max_new_tokens=8),
                      progress=False)
    recs = records(out)
    assert [r["rollout_id"] for r in recs] == [f"{p.problem_id}/s{i}" for p in humaneval2 for i in range(3)]
    assert all(r["parent_id"] is None and r["tree_size"] == 3 for r in recs)
    assert GenerateConfig(branches=6, per_branch=6).samples == 37


@pytest.mark.slow
def test_resume_skips_complete_problems_and_redoes_torn_ones(tree_file, gen, humaneval2, tmp_path):
    out = tmp_path / "resumed.jsonl"
    lines = tree_file.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-3]) + lines[-3][:20])  # 2nd problem partial, last line torn
    config = GenerateConfig(branches=K, per_branch=M, max_new_tokens=TOKENS, stop=(), group_size=1)
    summary = generate_rollouts(humaneval2, gen, out, config, progress=False)
    assert (summary["skipped_problems"], summary["generated_problems"]) == (1, 1)
    assert out.read_text() == tree_file.read_text()  # deterministic: same as the uninterrupted run
    assert generate_rollouts(humaneval2, gen, out, config, progress=False)["generated_problems"] == 0
    with pytest.raises(CodevalueError, match="use another -o"):
        generate_rollouts(humaneval2, gen, out, GenerateConfig(branches=K, per_branch=M, max_new_tokens=TOKENS,
                                                               stop=(), temperature=1.0, group_size=1),
                          progress=False)


# ---------------------------------------------------------------------------------------------------------
# branch points, trimming, prompts


def sample(texts, lps, finish="length"):
    return Sample("".join(texts), list(texts), lps, finish)


def test_branch_points_lowest_ties_earliest_and_eos_excluded():
    s = sample(["a", "b", "c", "d", ""], [-1.0, -3.0, -2.0, -3.0, -9.0], "eos")
    assert select_branch_points(s, 2) == [1, 3]  # the end token (-9) is never a branch point
    assert select_branch_points(s, 1) == [1]  # tie at -3: the earliest wins
    assert select_branch_points(s, 3, exclude=[1]) == [0, 2, 3]
    assert select_branch_points(s, 10) == [0, 1, 2, 3]  # fewer when fewer are eligible
    mid_char = sample(["x", "", "é", "y"], [-1.5, -1.0, -5.0, -2.0])  # token 2 starts inside 'é'
    assert select_branch_points(mid_char, 2) == [0, 3]
    assert select_branch_points(sample([""], [-1.0], "eos"), 6) == []


def test_trim_keeps_tokens_that_start_before_the_cut():
    s = sample(["ab", "cd", "ef"], [-1.0, -2.0, -3.0])
    t = trim(s, 3)
    assert (t.text, t.token_texts, t.logprobs, t.finish_reason) == ("abc", ["ab", "c"], [-1.0, -2.0], "stop")
    assert trim(s, 4).token_texts == ["ab", "cd"] and trim(s, 0).token_texts == []
    assert trim(s, 6) is s


def test_align_pieces():
    assert align_pieces("x = 1", ["x", " =", " 1"]) == ["x", " =", " 1"]
    assert align_pieces("x", ["x", "<|endoftext|>"]) == ["x", ""]
    assert align_pieces("aé b", ["a", "bytes:\\xc3", "bytes:\\xa9", " b"]) == ["a", "é", "", " b"]
    assert align_pieces("aé", ["a", "bytes:\\xc3", "bytes:\\xa9"]) == ["a", "é", ""]
    assert "".join(align_pieces("hello", ["he", "XX", "o"])) == "hello"
    assert align_pieces("", []) == []


def test_build_prompt_formats(tok, humaneval2):
    assert build_prompt(humaneval2[0], tok) == humaneval2[0].prompt  # continuation, even for chat tokenizers
    stdin = Problem("7", "apps", "stdin", prompt="Add two numbers.", tests=[Case("1 2", "3")])
    call = Problem("8", "apps", "call", prompt="Add.", entry_point="add", starter_code="def add(a, b):")
    assert build_prompt(stdin, tok) == "\nQUESTION:\nAdd two numbers.\n\nUse Standard Input format\nANSWER:\n"
    assert build_prompt(call, None).endswith("def add(a, b):\nUse Call-Based format\nANSWER:\n")
    chat = load_tokenizer()
    chat.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>"
    p = build_prompt(call, chat)
    assert p.startswith("<|user|>") and p.endswith("<|end|><|assistant|>")
    assert "Starter code:\ndef add(a, b):" in p and "`add` is called" in p and "```python" in p
    assert "standard input" in build_prompt(stdin, chat)
    assert build_prompt(stdin, chat, chat_template=False).startswith("\nQUESTION:")


# ---------------------------------------------------------------------------------------------------------
# endpoint backend against a local fake server

VOCAB = ["def", " f", "(", "x", ")", ":", "\n", "    ", "return", " x", " +", " 1", "#", "print"]


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests, self.failures, self.single_choice = [], [], False
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.requests.append(body)
        if self.path != "/v1/completions":
            return self.reply(404, {"error": "not found"})
        if server.failures:
            code = server.failures.pop(0)
            return self.reply(code, {"error": {"message": f"injected {code}"}})
        if "logprobs" not in body:
            return self.reply(400, {"error": "no logprobs"})
        choices = []
        for c in range(1 if server.single_choice else body["n"]):
            rng = random.Random(f"{body['seed']}|{body['prompt']}|{c}")
            tokens, text, finish = [], "", "length"
            for _ in range(body["max_tokens"]):
                if rng.random() < 0.05:  # end of sequence: a token the text does not show
                    tokens.append("<|endoftext|>")
                    finish = "stop"
                    break
                tokens.append(rng.choice(VOCAB))
                text += tokens[-1]
                hits = [i for s in body.get("stop", []) if (i := text.find(s)) != -1]
                if hits:  # vLLM: the text is cut before the stop, the token stays in logprobs
                    text, finish = text[:min(hits)], "stop"
                    break
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            choices.append({"index": c, "text": text, "finish_reason": finish,
                            "logprobs": {"tokens": tokens, "token_logprobs": [-5 * rng.random() for _ in tokens],
                                         "text_offset": offsets, "top_logprobs": None}})
        self.reply(200, {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices})


@pytest.fixture
def server():
    s = FakeServer()
    thread = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield s
    s.shutdown()
    s.server_close()


def test_completions_url():
    assert completions_url("http://h:8000") == "http://h:8000/v1/completions"
    assert completions_url("http://h:8000/v1/") == "http://h:8000/v1/completions"
    assert completions_url("http://h/v1/completions") == "http://h/v1/completions"


def test_endpoint_tree(server, humaneval2, tmp_path):
    gen = EndpointGenerator(server.url, "fake-model", backoff=0.01)
    out = tmp_path / "r.jsonl"
    generate_rollouts(humaneval2, gen, out, GenerateConfig(branches=K, per_branch=M, max_new_tokens=TOKENS),
                      progress=False)
    recs = records(out)
    by_problem = check_tree(recs, K, M, {p.problem_id: p.prompt for p in humaneval2})
    assert recs[0]["generator"] == {"name": "fake-model", "backend": "EndpointGenerator"}
    codex = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert all(body["stop"] == codex and body["logprobs"] == 1 for body in server.requests)
    assert all(not any(s in r["completion"] for s in codex) for r in recs)
    prompts = {body["prompt"] for body in server.requests}
    for p in humaneval2:  # a branch is requested as prompt + the main rollout's prefix
        main = by_problem[p.problem_id][0]
        for b in by_problem[p.problem_id][1:]:
            assert p.prompt + main["completion"][:b["branch_char_offset"]] in prompts
    again = tmp_path / "again.jsonl"
    generate_rollouts(humaneval2, gen, again, GenerateConfig(branches=K, per_branch=M, max_new_tokens=TOKENS),
                      progress=False)
    assert again.read_text() == out.read_text()


def test_endpoint_retries_then_succeeds(server):
    server.failures = [500, 503]
    gen = EndpointGenerator(server.url + "/v1", "m", retries=3, backoff=0.01)
    [s] = gen.sample(["def f(x):\n"], 1, 5, 0.8, 0.95, seed=0)
    assert len(server.requests) == 3 and s.text == "".join(s.token_texts) and len(s.logprobs) == len(s.token_texts)


def test_endpoint_server_without_n(server):
    server.single_choice = True
    samples = EndpointGenerator(server.url, "m").sample(["x"], 3, 4, 0.8, 0.95, seed=0)
    assert len(samples) == 3 and len(server.requests) == 3


def test_endpoint_errors_name_the_url(server):
    server.failures = [400]
    gen = EndpointGenerator(server.url, "m", retries=3, backoff=0.01)
    with pytest.raises(CodevalueError, match=rf"{server.url}/v1/completions answered HTTP 400: .*injected 400"):
        gen.sample(["x"], 1, 4, 0.8, 0.95, seed=0)
    assert len(server.requests) == 1  # a client error is not retried
    server.failures = [500] * 3
    with pytest.raises(CodevalueError, match=r"failed 3 times; last error: HTTP 500"):
        EndpointGenerator(server.url, "m", retries=2, backoff=0.01).sample(["x"], 1, 4, 0.8, 0.95, seed=0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(CodevalueError, match=rf"127.0.0.1:{port}/v1/completions failed 2 times"):
        EndpointGenerator(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0.01).sample(["x"], 1, 4, 0.8, 0.9, 0)


def test_endpoint_without_logprobs_is_an_error(server):
    gen = EndpointGenerator(server.url, "m")
    gen._post = lambda body: {"choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": None}]}
    with pytest.raises(CodevalueError, match="no per-token log-probabilities"):
        gen.sample(["x"], 1, 4, 0.8, 0.95, seed=0)


# ---------------------------------------------------------------------------------------------------------
# CLI and the composed pipeline


@pytest.mark.slow
def test_cli_generate(model, tok, tmp_path, capsys):
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    parser = build_parser()
    out = tmp_path / "r.jsonl"
    args = parser.parse_args(["generate", "--problems", "humaneval", "--limit", "1", "-o", str(out), "--model",
                              str(tmp_path / "lm"), "--branches", "2", "--per-branch", "1", "--max-new-tokens", "6",
                              "--stop", "none", "--quiet"])
    assert args.func(args) == 0
    assert "generated 3 rollouts for 1 problems" in capsys.readouterr().out
    assert [r["rollout_id"].split("/")[-1][:1] for r in records(out)] == ["m", "b", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--problems", "humaneval", "-o", "x"])  # a model or an endpoint


@pytest.mark.slow
def test_generate_then_label_then_targets(tree_file, humaneval2, tmp_path):
    """Generated files feed `label` and `targets` with no glue (the programs run only in the sandbox)."""
    from codevalue.labels import LabelConfig, label_rollouts
    from codevalue.sandbox import SandboxConfig
    from codevalue.targets import build_targets

    rollouts = tmp_path / "rollouts.jsonl"
    shutil.copy(tree_file, rollouts)
    labeled = tmp_path / "labeled.jsonl"
    summary = label_rollouts(humaneval2, rollouts, labeled, LabelConfig(sandbox=SandboxConfig(workers=1)),
                             progress=False)
    assert summary["rollouts"] == 2 * (1 + K * M)
    recs, generated = records(labeled), records(rollouts)
    # every generated field (tree links, tokens, logprobs, prompt) reaches the labels unchanged
    assert [{k: r[k] for k in g} for r, g in zip(recs, generated, strict=True)] == generated
    assert all(r["verdict"] in ("pass", "wrong_answer", "runtime_error", "timeout", "syntax_error") for r in recs)
    assert all(r["mode"] == "humaneval" and r["tests_total"] == 1 and r["passed"] == (r["verdict"] == "pass")
               for r in recs)
    targets = tmp_path / "targets.jsonl"
    assert build_targets(labeled, humaneval2, targets)["rollouts"] == len(recs)
    scored = records(targets)
    assert [r["rollout_id"] for r in scored] == [r["rollout_id"] for r in recs]
    for r in scored:  # each segment's value: the mean label of the problem's rollouts that share its prefix
        ends, values = r["value_targets"]["ends"], r["value_targets"]["values"]
        assert r["completion_scored"] == r["completion"] and ends[-1] == len(r["completion"])
        assert values[-1] == float(r["passed"])
        for end, value in zip(ends[:-1], values[:-1], strict=True):
            sharing = [o["passed"] for o in scored if o["problem_id"] == r["problem_id"]
                       and o["completion"].startswith(r["completion"][:end])]
            assert value == round(sum(sharing) / len(sharing), 6)

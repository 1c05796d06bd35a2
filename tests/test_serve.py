"""The reward server, driven by a real HTTP client against a server started on a free loopback port."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from codevalue.cli import build_parser, cmd_serve
from codevalue.model import InputSpec, ValueModel, build_tiny_model, load_tokenizer
from codevalue.serve import BackgroundServer, create_app, forward_passes, split_query

pytestmark = pytest.mark.slow  # starts servers

PAIRS = [
    ("def add(a, b):\n", "    return a + b\n"),
    ("def add(a, b):\n", "    return a - b\n"),
    ("def is_even(n):\n", "    return n % 2 == 0\n"),
    ("", "print('hello')\n"),
    ("def f():\n", ""),
    ("def long(x):\n    \"\"\"Ünïcode ✓\"\"\"\n", "    y = [i * i for i in range(x)]\n    return sum(y)\n"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved tiny untrained value model whose values spread away from 0.5."""
    tok = load_tokenizer()
    model = build_tiny_model("1m", tok)
    with torch.no_grad():
        model.score.weight.mul_(25)
    path = tmp_path_factory.mktemp("vm")
    ValueModel(model.eval(), tok, InputSpec(max_length=128)).save_pretrained(path, extra={"backbone": "tiny-1m"})
    return path


@pytest.fixture(scope="module")
def vm(model_dir):
    return ValueModel.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(vm):
    app = create_app(vm, max_items=8, max_tokens=64, max_batch=8, max_wait_ms=30, max_body_bytes=64 * 1024,
                     model_name="tiny")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as c:  # trust_env: no proxy on loopback
        yield c


def direct(vm, pairs, finished=True):
    return vm.score([p for p, _ in pairs], [c for _, c in pairs], finished=finished)


def items(pairs, **extra):
    return [{"prompt": p, "completion": c, **extra} for p, c in pairs]


def assert_same(result, score, per_token=True):
    assert result["value"] == pytest.approx(score.final, abs=1e-5)
    assert result["dropped_tokens"] == score.dropped_tokens
    if per_token:
        assert result["token_values"] == pytest.approx(score.values, abs=1e-5)
        assert result["token_offsets"] == [list(o) for o in score.offsets]
    else:
        assert "token_values" not in result and "token_offsets" not in result


def test_health(client, vm):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "tiny" and body["device"] == "cpu"
    assert body["backbone"] == "tiny-1m"
    assert (body["max_items"], body["max_tokens"], body["max_batch"]) == (8, 64, 8)


def test_score_matches_direct_scoring(client, vm):
    r = client.post("/v1/score", json={"items": items(PAIRS), "per_token": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and len(body["results"]) == len(PAIRS)
    for result, score in zip(body["results"], direct(vm, PAIRS), strict=True):
        assert_same(result, score)
    assert len({round(x["value"], 4) for x in body["results"]}) > 3  # the values really differ
    # per-token values off by default
    r = client.post("/v1/score", json={"items": items(PAIRS[:2])})
    for result, score in zip(r.json()["results"], direct(vm, PAIRS[:2]), strict=True):
        assert_same(result, score, per_token=False)
    # an empty request is answered, not refused
    assert client.post("/v1/score", json={"items": []}).json()["results"] == []


def test_score_unfinished_prefixes(client, vm):
    pairs = PAIRS[:3]
    r = client.post("/v1/score", json={"items": items(pairs), "finished": False, "per_token": True})
    for result, score in zip(r.json()["results"], direct(vm, pairs, finished=False), strict=True):
        assert_same(result, score)
    # per-item override of the request's default; both kinds in one request
    mixed = [{"prompt": p, "completion": c, "finished": i % 2 == 0} for i, (p, c) in enumerate(pairs)]
    r = client.post("/v1/score", json={"items": mixed, "per_token": True})
    for i, (result, pair) in enumerate(zip(r.json()["results"], pairs, strict=True)):
        assert_same(result, direct(vm, [pair], finished=i % 2 == 0)[0])


def test_get_reward_openrlhf_protocol(client, vm):
    pairs = PAIRS[:3]
    expected = [s.final for s in direct(vm, pairs)]
    eos = vm.tokenizer.eos_token
    # OpenRLHF: query = prompt + response (often with the end token), prompts alongside, labels ignored
    body = {"query": [p + c + eos for p, c in pairs], "prompts": [p for p, _ in pairs], "labels": ["", "", ""]}
    r = client.post("/get_reward", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx(expected, abs=1e-5)
    assert r.json()["scores"] == r.json()["rewards"]
    # without prompts the whole query is the completion of an empty prompt
    r = client.post("/get_reward", json={"query": [p + c for p, c in pairs]})
    whole = [s.final for s in vm.score([""] * 3, [p + c for p, c in pairs])]
    assert r.json()["rewards"] == pytest.approx(whole, abs=1e-5)
    assert r.json()["extra_logs"] == {"prompt_not_prefix": [0.0] * 3}  # no prompts: nothing to match
    # a prompt that is not the start of its query: scored as a whole, no error, but counted and logged
    before = client.get("/health").json()["prompt_not_prefix"]
    r = client.post("/get_reward", json={"query": ["x = 1\n", pairs[0][0] + pairs[0][1]],
                                         "prompts": ["something else", pairs[0][0]]})
    assert r.json()["rewards"][0] == pytest.approx(vm.score([""], ["x = 1\n"])[0].final, abs=1e-5)
    assert r.json()["extra_logs"] == {"prompt_not_prefix": [1.0, 0.0]}
    assert client.get("/health").json()["prompt_not_prefix"] == before + 1


def test_split_query():
    assert split_query("P\nC<eos><pad><pad>", "P\n", ["<pad>", "<eos>"]) == ("P\n", "C")
    assert split_query("P\nC", None) == ("", "P\nC")
    assert split_query("Q", "P") == ("", "Q")


def test_forward_passes_bound_padding():
    assert forward_passes([10, 100, 12, 11, 95], max_items=8) == [[0, 3, 2], [4, 1]]
    assert forward_passes([5] * 7, max_items=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert forward_passes([1, 1000], max_items=8, max_padding=10.0) == [[0, 1]]
    assert forward_passes([], max_items=4) == []
    for lengths in ([3, 50, 7, 7, 200, 190, 60, 1], list(range(1, 40))):
        passes = forward_passes(lengths, max_items=6)
        assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
        for p in passes:
            assert len(p) <= 6 and len(p) * max(lengths[i] for i in p) <= 1.25 * sum(lengths[i] for i in p)


def test_concurrent_requests_are_batched_and_exact(client, server, vm):
    """16 clients at once, each with its own request: every answer equals direct scoring, and the server
    put items of different requests into shared forward passes."""
    batcher = server.server.config.app.state.batcher
    before_batches, before_items = batcher.batches, batcher.items
    requests = [[PAIRS[(i + j) % len(PAIRS)] for j in range(1 + i % 3)] for i in range(16)]
    expected = {pair: s for pair, s in zip(PAIRS, direct(vm, PAIRS), strict=True)}
    barrier = threading.Barrier(16)

    def call(pairs):
        with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as c:
            barrier.wait(timeout=30)
            return c.post("/v1/score", json={"items": items(pairs), "per_token": True})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, requests))
    for pairs, r in zip(requests, responses, strict=True):
        assert r.status_code == 200, r.text
        for result, pair in zip(r.json()["results"], pairs, strict=True):
            assert_same(result, expected[pair])
    n_items = sum(len(p) for p in requests)
    assert batcher.items - before_items == n_items
    assert batcher.batches - before_batches < n_items  # some forward passes served several items
    assert batcher.largest_batch > 1
    # OpenRLHF calls concurrently too
    with ThreadPoolExecutor(8) as pool:
        rewards = list(pool.map(lambda i: client.post("/get_reward", json={"query": ["".join(PAIRS[i % 6])],
                                                                            "prompts": [PAIRS[i % 6][0]]}), range(8)))
    for i, r in enumerate(rewards):
        assert r.json()["rewards"] == pytest.approx([expected[PAIRS[i % len(PAIRS)]].final], abs=1e-5)


def test_too_many_items_is_413(client):
    for path, body in [("/v1/score", {"items": items(PAIRS[:1] * 9)}), ("/get_reward", {"query": ["x"] * 9})]:
        r = client.post(path, json=body)
        assert r.status_code == 413
        assert "max_items=8" in r.json()["detail"] and r.json()["limit"] == "max_items"


def test_too_many_tokens_is_422(client):
    long = "x = 1\n" * 40  # well over 64 tokens
    r = client.post("/v1/score", json={"items": items([("def f():\n", "    pass\n"), ("", long)])})
    assert r.status_code == 422
    assert r.json()["limit"] == "max_tokens"
    assert "item 1" in r.json()["detail"] and "max_tokens=64" in r.json()["detail"]
    r = client.post("/get_reward", json={"query": [long]})
    assert r.status_code == 422 and r.json()["limit"] == "max_tokens"


def test_body_too_large_is_413(client):
    """A Content-Length over the limit is refused from the header, before the body is read."""
    body = json.dumps({"items": items([("", "x" * 70_000)])}).encode()
    r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"
    assert r.json()["detail"].startswith(f"request body of {len(body)} bytes is over the limit"), r.json()


def chunked(body: bytes, size: int = 4096):
    """An iterator body: httpx sends it chunked, with no Content-Length header."""
    return (body[i:i + size] for i in range(0, len(body), size))


def test_chunked_body_without_content_length(client, vm):
    """Without Content-Length the body is counted as it streams in: a large one is refused, a small one is
    scored like any other."""
    big = json.dumps({"items": items([("", "x" * 70_000)])}).encode()
    request = client.build_request("POST", "/v1/score", content=chunked(big),
                                   headers={"content-type": "application/json"})
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    r = client.send(request)
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"
    assert r.json()["detail"] == "request body is over the limit max_body_bytes=65536"
    small = json.dumps({"items": items(PAIRS[:2]), "per_token": True}).encode()
    r = client.post("/v1/score", content=chunked(small, 16), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    for result, score in zip(r.json()["results"], direct(vm, PAIRS[:2]), strict=True):
        assert_same(result, score)


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"items": [', b"\xff\xfe", b"[1, 2", b"[" * 50_000,
                                     b'{"items": [], "per_token": tru}'])
def test_malformed_json_is_400(client, content):
    for path in ("/v1/score", "/get_reward"):
        r = client.post(path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, content, r.text)
        assert "malformed JSON" in r.json()["detail"]


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/score", {"items": [{"prompt": "p"}]}, "items.0.completion"),
    ("/v1/score", {"items": [{"prompt": 1, "completion": "c"}]}, "items.0.prompt"),
    ("/v1/score", {"items": [{"prompt": "p", "completion": "c", "extra": 1}]}, "items.0.extra"),
    ("/v1/score", {"items": "p"}, "items"),
    ("/v1/score", {"prompt": "p", "completion": "c"}, "items"),
    ("/v1/score", {"items": [], "per_token": "yes"}, "per_token"),
    ("/v1/score", [1, 2], "expected a JSON object"),
    ("/v1/score", {"items": [{"prompt": "", "completion": ""}], "finished": False}, "item 0 is empty"),
    ("/get_reward", {"query": "just one"}, "query"),
    ("/get_reward", {"query": [1]}, "query.0"),
    ("/get_reward", {"queries": ["x"]}, "query"),
    ("/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, "1 prompts for 2 queries"),
])
def test_schema_errors_are_422(client, path, body, fragment):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_server_survives_bad_input(client, vm):
    """After all the refusals above (and these, each answered with its status), the server still answers right."""
    for _ in range(3):
        r = client.post("/v1/score", content=b"\x00garbage", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
        r = client.post("/v1/score", json={"items": items(PAIRS[:1] * 100)})
        assert r.status_code == 413 and r.json()["limit"] == "max_items"
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/v1/score", json={"items": items(PAIRS[:2]), "per_token": True})
    for result, score in zip(r.json()["results"], direct(vm, PAIRS[:2]), strict=True):
        assert_same(result, score)


class FlakyModel:
    """A ValueModel stand-in whose scoring fails on one completion."""

    def __init__(self, vm):
        self.vm, self.tokenizer, self.spec, self.meta, self.model = vm, vm.tokenizer, vm.spec, vm.meta, vm.model
        self.device = vm.device

    def score(self, prompts, completions, batch_size=16, finished=True):
        if "boom" in completions:
            raise RuntimeError("model exploded")
        return self.vm.score(prompts, completions, batch_size, finished)


class GatedModel(FlakyModel):
    """A ValueModel stand-in that records the completions of every scoring call and holds the first call
    until `release` is set, so that requests sent meanwhile are known to wait in the queue together."""

    def __init__(self, vm):
        super().__init__(vm)
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), []

    def score(self, prompts, completions, batch_size=16, finished=True):
        self.calls.append(list(completions))
        self.entered.set()
        assert self.release.wait(timeout=60)
        return self.vm.score(prompts, completions, batch_size, finished)


def test_items_of_different_requests_share_one_forward_pass(vm):
    """While the model scores request A, requests B, C and D queue up; the next batch holds the items of all
    three (one scoring call), and each request still gets its own values. Without cross-request batching
    they would be three calls."""
    gated = GatedModel(vm)
    app = create_app(gated, max_batch=8, max_wait_ms=0, max_padding=100.0, model_name="tiny")  # one pass
    pairs = {"A": PAIRS[0], "B": PAIRS[1], "C": PAIRS[2], "D": PAIRS[3]}
    with BackgroundServer(app) as srv, ThreadPoolExecutor(4) as pool:
        def call(key):
            with httpx.Client(base_url=srv.url, trust_env=False, timeout=60) as c:
                return c.post("/v1/score", json={"items": items([pairs[key]])})

        first = pool.submit(call, "A")
        assert gated.entered.wait(timeout=30)  # A is inside the model now
        later = {key: pool.submit(call, key) for key in "BCD"}
        batcher = app.state.batcher
        deadline = time.monotonic() + 30
        while batcher.queued < 3 and time.monotonic() < deadline:  # all three wait in the queue
            time.sleep(0.01)
        assert batcher.queued == 3
        gated.release.set()
        responses = {"A": first.result(), **{key: f.result() for key, f in later.items()}}
    assert [sorted(c) for c in gated.calls] == [[PAIRS[0][1]], sorted(p[1] for p in PAIRS[1:4])]
    for key, r in responses.items():
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["value"] == pytest.approx(direct(vm, [pairs[key]])[0].final, abs=1e-5)
    assert (batcher.batches, batcher.items, batcher.largest_batch) == (2, 4, 3)


def test_model_error_is_500_and_the_worker_carries_on(vm):
    with BackgroundServer(create_app(FlakyModel(vm), max_wait_ms=0)) as srv, \
            httpx.Client(base_url=srv.url, trust_env=False, timeout=30) as c:
        r = c.post("/v1/score", json={"items": items([("", "boom")])})
        assert r.status_code == 500 and "model exploded" in r.json()["detail"]
        r = c.post("/v1/score", json={"items": items(PAIRS[:1])})
        assert r.status_code == 200
        assert r.json()["results"][0]["value"] == pytest.approx(direct(vm, PAIRS[:1])[0].final, abs=1e-5)
        assert c.get("/health").json()["errors"] == 1
    assert not srv.thread.is_alive()  # stopped cleanly


def test_serve_parser(model_dir):
    args = build_parser().parse_args(["serve", str(model_dir), "--port", "0", "--max-items", "4", "--max-wait-ms", "1"])
    assert args.func is cmd_serve
    assert (args.host, args.port, args.max_items, args.max_tokens, args.max_wait_ms) == ("127.0.0.1", 0, 4, 4096, 1.0)


def test_a_model_that_reads_check_results_is_refused(vm):
    from dataclasses import replace

    from codevalue.errors import CodevalueError
    from codevalue.model import ValueModel

    reads_checks = ValueModel(vm.model, vm.tokenizer, replace(vm.spec, read_checks=True), vm.meta)
    with pytest.raises(CodevalueError, match="check results"):
        create_app(reads_checks)


# ---------------------------------------------------------------------------------------------------------
# bearer-token authentication


KEY = "s3cret-ключ"  # not ASCII: the comparison is on bytes


@pytest.fixture(scope="module")
def keyed_server(vm):
    with BackgroundServer(create_app(vm, max_items=8, max_wait_ms=1, model_name="tiny", api_key=KEY)) as srv:
        yield srv


def bearer(key: str) -> dict:
    return {"authorization": b"Bearer " + key.encode()}  # bytes: httpx sends them as they are


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(KEY[:-1]), bearer(KEY + "x"),
                                     {"authorization": b"Basic " + KEY.encode()}, {"x-api-key": KEY.encode()}])
def test_without_the_key_every_endpoint_but_health_is_401(keyed_server, headers):
    with httpx.Client(base_url=keyed_server.url, trust_env=False, timeout=30, headers=headers) as c:
        for method, path, body in [("POST", "/v1/score", {"items": items(PAIRS[:1])}),
                                   ("POST", "/get_reward", {"query": ["x"]}), ("GET", "/docs", None),
                                   ("GET", "/openapi.json", None), ("GET", "/nowhere", None)]:
            r = c.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
        r = c.get("/health")  # liveness for anyone, nothing else
        assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_with_the_key_requests_are_answered(keyed_server, vm):
    with httpx.Client(base_url=keyed_server.url, trust_env=False, timeout=30, headers=bearer(KEY)) as c:
        r = c.post("/v1/score", json={"items": items(PAIRS[:2]), "per_token": True})
        assert r.status_code == 200
        for result, score in zip(r.json()["results"], direct(vm, PAIRS[:2]), strict=True):
            assert_same(result, score)
        r = c.post("/get_reward", json={"query": ["def f():\n    return 1\n"]})
        assert r.status_code == 200 and len(r.json()["rewards"]) == 1
        assert c.get("/health").json()["model"] == "tiny"  # the details, for a key holder
        r = c.get("/nowhere")
        assert r.status_code == 404


def test_api_key_from_flag_or_environment(model_dir, monkeypatch):
    """`codevalue serve` takes --api-key, else CODEVALUE_API_KEY; the app it runs checks that key."""
    from codevalue.errors import CodevalueError
    from codevalue.serve import API_KEY_ENV, resolve_api_key

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key(None) == "from-env" and resolve_api_key("flag") == "flag"
    with pytest.raises(CodevalueError, match="empty"):
        resolve_api_key("")

    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append((app, kwargs)))
    args = build_parser().parse_args(["serve", str(model_dir), "--device", "cpu", "--port", "0"])
    assert cmd_serve(args) == 0
    [(app, kwargs)] = apps
    assert kwargs["host"] == "127.0.0.1"  # loopback stays the default
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, trust_env=False, timeout=30) as c:
        body = {"items": items(PAIRS[:1])}
        assert c.post("/v1/score", json=body).status_code == 401
        assert c.post("/v1/score", json=body, headers={"authorization": "Bearer from-env"}).status_code == 200
        assert c.post("/v1/score", json=body, headers={"authorization": "bearer from-env"}).status_code == 200


def test_no_key_means_no_check(client):
    assert client.post("/v1/score", json={"items": items(PAIRS[:1])}).status_code == 200
    assert "model" in client.get("/health").json()

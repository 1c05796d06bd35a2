"""Reranking, the pruning policy, its replay on hand-made rollouts with known answers, and pruned generation."""

import json
import zlib

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, Phi3Config, Phi3ForCausalLM

from codevalue.cli import build_parser
from codevalue.errors import DataError
from codevalue.evaluate import best_of_n
from codevalue.jsonl import read_jsonl
from codevalue.model import InputSpec, Score, ValueModel, build_tiny_model, load_tokenizer
from codevalue.search import (
    PrunePolicy,
    _load_problems,
    generate_with_pruning,
    prune,
    prune_replay,
    replay_refill,
    replay_stop,
    rerank,
)


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------------------------------- prune


def test_prune_threshold_top_k_and_ties():
    assert prune([0.9, 0.1, 0.5], threshold=0.2).tolist() == [True, False, True]
    assert prune([0.9, 0.1, 0.5], keep_top_k=2).tolist() == [True, False, True]
    assert prune([0.5, 0.5, 0.5], keep_top_k=2).tolist() == [True, True, False]  # ties: earlier first
    assert prune([0.3, 0.9, 0.8, 0.1], threshold=0.2, keep_top_k=2).tolist() == [False, True, True, False]
    assert prune([0.3, 0.9], keep_top_k=0).tolist() == [False, False]
    assert prune([0.3, 0.9]).tolist() == [True, True]  # no rule: nothing dropped
    assert prune([], threshold=0.5).tolist() == []


def test_prune_min_keep():
    assert prune([0.1, 0.3, 0.2], threshold=0.5).tolist() == [False, False, False]
    assert prune([0.1, 0.3, 0.2], threshold=0.5, min_keep=1).tolist() == [False, True, False]
    assert prune([0.1, 0.3, 0.2], threshold=0.5, min_keep=2).tolist() == [False, True, True]
    assert prune([0.1, 0.3, 0.2], threshold=0.25, min_keep=1).tolist() == [False, True, False]  # already kept


# ------------------------------------------------------------------------------------------- replay

# Problem A: two passing rollouts that look good all along; two failing ones that look bad early, one of
# which looks best of all at its end (so plain reranking picks a failure and early pruning fixes that).
# Problem B: every rollout fails and looks bad; pruning must still leave one.
A = [
    {"passed": True, "token_values": [0.9] * 10},
    {"passed": True, "token_values": [0.8] * 6},
    {"passed": False, "token_values": [0.5, 0.05] + [0.4] * 8},
    {"passed": False, "token_values": [0.5, 0.1, 0.6, 0.7] + [0.8] * 7 + [0.95]},
]
B = [
    {"passed": False, "token_values": [0.1] * 4},
    {"passed": False, "token_values": [0.05] * 4},
]


def records():
    out = []
    for pid, rows in (("A", A), ("B", B)):
        for i, r in enumerate(rows):
            out.append({"problem_id": pid, "rollout_id": f"{pid}/{i}", "value": r["token_values"][-1], **r})
    return out


@pytest.fixture()
def problems():
    return {p.problem_id: p for p in _load_problems(records())}


def test_replay_threshold_drops_the_bad_starts(problems):
    generated, alive = replay_stop(problems["A"], PrunePolicy(every=2, threshold=0.2))
    assert generated.tolist() == [10, 6, 2, 2]  # both failures stopped after 2 tokens
    assert alive.tolist() == [True, True, False, False]
    # B: both below the threshold at the first checkpoint, nothing finished yet: the better one goes on
    generated, alive = replay_stop(problems["B"], PrunePolicy(every=2, threshold=0.2))
    assert generated.tolist() == [4, 2] and alive.tolist() == [True, False]


def test_replay_top_k_and_checkpoint_spacing(problems):
    generated, alive = replay_stop(problems["A"], PrunePolicy(every=2, top_k=1))
    assert generated.tolist() == [10, 2, 2, 2] and alive.tolist() == [True, False, False, False]
    # every 8: rollout 1 (6 tokens) finished before the first checkpoint; it is neither pruned nor counted in
    # the top k, which compares the three still running at token 8: values 0.9, 0.4, 0.8
    generated, alive = replay_stop(problems["A"], PrunePolicy(every=8, top_k=1))
    assert generated.tolist() == [10, 6, 8, 8] and alive.tolist() == [True, True, False, False]
    # a checkpoint past every rollout's end changes nothing
    generated, alive = replay_stop(problems["A"], PrunePolicy(every=100, threshold=0.99))
    assert generated.tolist() == [10, 6, 10, 12] and alive.all()


def test_replay_finished_rollouts_are_never_pruned(problems):
    # at token 6 rollout 1 has finished: rules then drop everything still running, and nothing forces a keep
    generated, alive = replay_stop(problems["A"], PrunePolicy(every=6, threshold=0.99))
    assert generated.tolist() == [6, 6, 6, 6] and alive.tolist() == [False, True, False, False]


def test_replay_refill_spends_the_saved_budget(problems):
    p = problems["A"]
    # width 2 in the order 0, 2, 1, 3: the budget is what rollouts 0 and 2 cost unpruned (20 tokens);
    # rollout 2 is pruned after 2 tokens and rollout 1 takes its place
    spent, alive = replay_refill(p, PrunePolicy(every=2, threshold=0.2), 2, np.array([0, 2, 1, 3]))
    assert spent == 10 + 2 + 6 and alive.tolist() == [True, True, False, False]
    # without pruning it is plain best-of-2 on the same draws
    spent, alive = replay_refill(p, PrunePolicy(every=2, threshold=0.0), 2, np.array([0, 2, 1, 3]))
    assert spent == 20 and alive.tolist() == [True, False, True, False]


def test_prune_replay_rows(tmp_path):
    result = prune_replay(records(), every=[2], thresholds=[0.2], top_ks=[1], refill=2, permutations=4)
    assert (result["problems"], result["rollouts"], result["total_tokens"]) == (2, 6, 46)
    rows = {r["policy"]: r for r in result["rows"]}
    full = rows["best of 4 (rerank all)"]
    # plain reranking picks A's late-blooming failure: 0 on both problems
    assert full["reranked_pass@1"]["mean"] == 0 and full["tokens_generated_fraction"] == 1
    assert full["any_pass_survives"] == 50
    assert rows["best of 1 (random)"]["reranked_pass@1"]["mean"] == pytest.approx(100 * (0.5 + 0) / 2)
    th = rows["every 2, v<0.2"]
    assert th["tokens_generated"] == (10 + 6 + 2 + 2) + (4 + 2)
    assert th["tokens_generated_fraction"] == pytest.approx(26 / 46)
    assert th["tokens_saved_fraction"] == pytest.approx(20 / 46)
    assert th["reranked_pass@1"]["mean"] == 50  # A: both survivors pass; B: nothing passes
    assert th["survivors_per_problem"] == 1.5 and th["any_pass_survives"] == 50
    top = rows["every 2, top 1"]
    assert top["tokens_generated"] == (10 + 2 + 2 + 2) + (4 + 2) and top["reranked_pass@1"]["mean"] == 50
    both = rows["every 2, v<0.2, top 1"]
    assert both["tokens_generated"] == top["tokens_generated"]
    # gain over best-of-m at the same token fraction: best-of-m is interpolated on its curve
    curve = result["best_of_m_curve"]
    assert th["gain_vs_best_of_m"] == pytest.approx(50 - np.interp(26 / 46, curve["tokens_generated_fraction"],
                                                                     curve["reranked_pass@1"]))
    assert curve["reranked_pass@1"][0] == pytest.approx(25)
    # best-of-m rows are the exact tie-aware expectation
    a_vals, a_pass = np.array([0.9, 0.8, 0.4, 0.95]), np.array([True, True, False, False])
    assert rows["best of 2"]["reranked_pass@1"]["mean"] == pytest.approx(100 * best_of_n(a_vals, a_pass, 2) / 2)
    refill = [r for r in result["rows"] if r["kind"] == "refill"]
    assert {r["policy"] for r in refill} == {"width 2, every 2, v<0.2", "width 2, every 2, top 1",
                                             "width 2, every 2, v<0.2, top 1"}
    assert all(0 < r["tokens_generated_fraction"] < 1 for r in refill)


@pytest.mark.slow
def test_prune_replay_cli(tmp_path, capsys):
    scores = write_lines(tmp_path / "scores.jsonl", records())
    assert run_cli(["prune-replay", str(scores), "-o", str(tmp_path / "out"), "--every", "2", "4",
                    "--thresholds", "0.2", "--top-k", "1", "--no-combine"]) == 0
    printed = capsys.readouterr().out
    assert "| every 2, v<0.2 | 56.5 | 43.5 | 1.5 | 50.0 [" in printed
    saved = json.loads((tmp_path / "out" / "prune_replay.json").read_text())
    assert saved["source"] == str(scores)
    assert {r["policy"] for r in saved["rows"] if r["kind"] == "prune"} == {
        "every 2, v<0.2", "every 2, top 1", "every 4, v<0.2", "every 4, top 1"}
    assert (tmp_path / "out" / "prune_replay.png").stat().st_size > 1000
    assert "| policy |" in (tmp_path / "out" / "prune_replay.md").read_text()


def test_prune_replay_needs_token_values(tmp_path):
    bad = write_lines(tmp_path / "s.jsonl", [{"problem_id": "A", "passed": True, "value": 0.5}])
    with pytest.raises(DataError, match="token_values"):
        prune_replay(bad)


# ------------------------------------------------------------------------------------------- rerank


def test_rerank_by_recorded_values(tmp_path, capsys):
    recs = [{"problem_id": pid, "rollout_id": i, "value": v, "passed": y, "completion": "c"}
            for i, (pid, v, y) in enumerate([("A", 0.2, False), ("A", 0.7, True), ("A", 0.7, False),
                                             ("B", 0.1, False), ("B", 0.05, True)])]
    result = rerank(recs)
    assert [(p["problem_id"], p["rollout_id"], p["n_candidates"]) for p in result.picks] == [("A", 1, 3), ("B", 3, 2)]
    s = result.summary
    assert s["picked_pass@1"] == 50 and s["reranked_pass@1"] == pytest.approx(25)  # A's tie: 1/2 in expectation
    assert s["oracle_pass@1"] == 100 and s["random_pass@1"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    path = write_lines(tmp_path / "r.jsonl", recs)
    assert run_cli(["rerank", str(path), "-o", str(tmp_path / "best.jsonl")]) == 0
    assert [r["rollout_id"] for _, r in read_jsonl(tmp_path / "best.jsonl")] == [1, 3]
    assert "reranked (tie-aware expectation) 25.0" in capsys.readouterr().out
    with pytest.raises(DataError, match="--model"):
        rerank([{"problem_id": "A", "completion": "c"}])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    model = build_tiny_model("1m", tok)
    with torch.no_grad():
        model.score.weight.mul_(25)
    path = tmp_path_factory.mktemp("vm")
    ValueModel(model.eval(), tok, InputSpec(max_length=256)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vm(model_dir):
    return ValueModel.from_pretrained(model_dir, device="cpu")


@pytest.mark.slow
def test_rerank_with_a_model(tmp_path, vm, model_dir):
    completions = ["    return sorted(numbers) == numbers\n", "    return False\n", "    return True\n",
                   "    pass\n"]
    recs = [{"problem_id": "HumanEval/0", "rollout_id": i, "completion": c, "passed": i == 0}
            for i, c in enumerate(completions)]
    recs.append({"problem_id": "own", "rollout_id": 9, "prompt": "def f():\n", "completion": "    return 1\n",
                 "completion_truncated": "    return 1", "passed": True})
    path = write_lines(tmp_path / "r.jsonl", recs)
    result = rerank(path, model=model_dir, problems="humaneval")
    from codevalue.problems import load_problems

    prompt = next(p.prompt for p in load_problems("humaneval") if p.problem_id == "HumanEval/0")
    values = [s.final for s in vm.score([prompt] * 4, completions)]
    assert result.picks[0]["rollout_id"] == int(np.argmax(values))
    assert result.picks[0]["value"] == pytest.approx(max(values), abs=1e-5)
    assert result.picks[1]["value"] == pytest.approx(vm.score(["def f():\n"], ["    return 1"])[0].final, abs=1e-5)
    with pytest.raises(DataError, match="pass --problems"):
        rerank(path, model=vm)
    assert run_cli(["rerank", str(path), "-o", str(tmp_path / "b.jsonl"), "--model", str(model_dir),
                    "--problems", "humaneval"]) == 0
    assert [r["rollout_id"] for _, r in read_jsonl(tmp_path / "b.jsonl")] == [p["rollout_id"] for p in result.picks]


# ---------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def policy(tok):
    config = Phi3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return Phi3ForCausalLM(config).eval()


class HashValues:
    """A value model stand-in: a fixed pseudo-random value per (text, finished), and a log of every call."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def value(text, finished):
        return (zlib.crc32(f"{finished}:{text}".encode()) % 1000) / 1000

    def score(self, prompts, completions, batch_size=16, finished=True):
        self.calls.append((list(completions), finished))
        return [Score(self.value(c, finished), [], []) for c in completions]


PROMPT = "def add(a, b):\n"


@pytest.mark.slow
def test_generation_without_pruning(policy, tok):
    g = generate_with_pruning(policy, tok, HashValues(), PROMPT, n=4, every=4, max_new_tokens=12, seed=0)
    assert g.rounds == 3 and len(g.candidates) == 4
    assert all(c.status == "length" and c.tokens == 12 and len(c.token_ids) == 12 for c in g.candidates)
    assert g.tokens_generated == 48 and len(g.survivors) == 4
    assert [len(c.checkpoints) for c in g.candidates] == [2] * 4  # tokens 4 and 8; 12 is the end
    assert g.best.value == max(HashValues.value(c.text, True) for c in g.candidates)
    assert all(c.text == tok.decode(c.token_ids, skip_special_tokens=True) for c in g.candidates)
    again = generate_with_pruning(policy, tok, HashValues(), PROMPT, n=4, every=4, max_new_tokens=12, seed=0)
    assert [c.token_ids for c in again.candidates] == [c.token_ids for c in g.candidates]  # seeded


def test_generation_top_k_keeps_the_best_prefix(policy, tok):
    values = HashValues()
    g = generate_with_pruning(policy, tok, values, PROMPT, n=4, every=4, max_new_tokens=12, top_k=1, seed=0)
    first = {c.index: c.checkpoints[0][1] for c in g.candidates}
    winner = max(first, key=first.get)
    assert [c.status for c in g.candidates] == ["length" if c.index == winner else "pruned" for c in g.candidates]
    assert all(c.pruned_at == 4 and c.tokens == 4 for c in g.candidates if c.index != winner)
    assert g.tokens_generated == 12 + 3 * 4 == sum(c.tokens for c in g.candidates)
    assert g.best.index == winner
    # the first round scored all four prefixes, unfinished
    assert values.calls[0][1] is False and len(values.calls[0][0]) == 4


def test_generation_never_prunes_everything(policy, tok):
    g = generate_with_pruning(policy, tok, HashValues(), PROMPT, n=3, every=4, max_new_tokens=12, threshold=2.0,
                              seed=0)
    assert len(g.survivors) == 1 and g.survivors[0].tokens == 12
    assert sorted(c.tokens for c in g.candidates) == [4, 4, 12]


@pytest.mark.slow
def test_generation_refill_spends_the_budget(policy, tok):
    g = generate_with_pruning(policy, tok, HashValues(), PROMPT, n=4, every=4, max_new_tokens=12, top_k=2,
                              refill=True, budget_tokens=48, max_rollouts=8, seed=0)
    assert 4 < len(g.candidates) <= 8
    assert g.tokens_generated == sum(c.tokens for c in g.candidates)
    pruned = [c for c in g.candidates if c.status == "pruned"]
    assert len(g.candidates) - 4 <= len(pruned)  # only pruned places are refilled
    assert all(c.status in ("length", "pruned") for c in g.candidates)


@pytest.mark.slow
def test_generation_refill_stops_when_the_budget_is_spent(policy, tok):
    """A pruned rollout is replaced only while fewer than `budget_tokens` tokens were generated."""
    def run(budget):
        return generate_with_pruning(policy, tok, HashValues(), PROMPT, n=4, every=4, max_new_tokens=12, top_k=2,
                                     refill=True, budget_tokens=budget, max_rollouts=100, seed=0)

    # the first round generates 4 x 4 = 16 tokens and prunes two rollouts
    spent = run(16)
    assert spent.rounds == 3 and len(spent.candidates) == 4  # 16 generated: the budget is spent, no refill
    assert spent.tokens_generated == 16 + 2 * 8 == sum(c.tokens for c in spent.candidates)
    room = run(17)
    assert len(room.candidates) == 6  # 16 < 17: both pruned places are refilled, then the budget is spent
    assert [c.index for c in room.candidates] == list(range(6))


class EndAfter(LogitsProcessor):
    """Forces the end token for row 0 when the sequence has `length` tokens."""

    def __init__(self, eos, length):
        self.eos, self.length = eos, length

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.length:
            scores[0, :] = -float("inf")
            scores[0, self.eos] = 0.0
        return scores


@pytest.mark.slow
def test_generation_end_token_and_stop_sequences(policy, tok):
    n_prompt = len(tok(PROMPT)["input_ids"])
    values = HashValues()
    g = generate_with_pruning(policy, tok, values, PROMPT, n=3, every=4, max_new_tokens=8, seed=0,
                              logits_processor=LogitsProcessorList([EndAfter(tok.eos_token_id, n_prompt + 2)]))
    first = g.candidates[0]
    assert first.status == "finished" and first.tokens == 3 and len(first.token_ids) == 2  # 2 tokens + end
    assert first.value == HashValues.value(first.text, True)
    assert [c.status for c in g.candidates[1:]] == ["length", "length"]
    assert g.tokens_generated == 3 + 8 + 8
    # a stop sequence ends a rollout and cuts its text
    free = generate_with_pruning(policy, tok, HashValues(), PROMPT, n=1, every=4, max_new_tokens=8, seed=1)
    text = free.candidates[0].text
    stop = text[3:5]
    g = generate_with_pruning(policy, tok, HashValues(), PROMPT, n=1, every=4, max_new_tokens=8, seed=1, stop=[stop])
    c = g.candidates[0]
    assert c.status == "finished" and c.text == text[:text.find(stop)] and c.tokens <= 8


@pytest.mark.slow
def test_generation_with_a_real_value_model(policy, tok, vm):
    g = generate_with_pruning(policy, tok, vm, PROMPT, n=3, every=4, max_new_tokens=8, top_k=2, seed=0)
    for c in g.survivors:
        assert c.value == pytest.approx(vm.score([PROMPT], [c.text])[0].final, abs=1e-5)
    pruned = [c for c in g.candidates if c.status == "pruned"]
    assert len(pruned) == 1 and pruned[0].pruned_at == 4


@pytest.mark.slow
def test_generate_prune_with_cli_writes_every_candidate(tmp_path):
    """`codevalue generate --prune-with`: top-k pruning every T tokens, each candidate one rollout line."""
    import json

    from transformers import Phi3Config, Phi3ForCausalLM

    from codevalue.cli import main
    from codevalue.model import ValueModel, build_tiny_model, load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    lm = Phi3ForCausalLM(Phi3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    ValueModel(build_tiny_model("1m", tok), tok).save_pretrained(tmp_path / "vm")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--problems", "humaneval", "--limit", "2", "-o", str(out), "--model", str(tmp_path / "lm"),
            "--samples", "4", "--max-new-tokens", "24", "--prune-with", str(tmp_path / "vm"), "--prune-every", "8",
            "--prune-top-k", "2", "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rollout_id"] for r in rows] == [f"HumanEval/{p}/p{i}" for p in (0, 1) for i in range(4)]
    for pid in ("HumanEval/0", "HumanEval/1"):
        mine = [r for r in rows if r["problem_id"] == pid]
        pruned = [r for r in mine if r["status"] == "pruned"]
        assert len(pruned) == 2 and all(r["pruned_at"] == 8 and r["tokens_generated"] == 8 for r in pruned)
        assert all(r["prompt"] == mine[0]["prompt"] for r in mine)
    assert main(args) == 0  # resumed: both problems complete, nothing appended
    assert len(out.read_text().splitlines()) == 8

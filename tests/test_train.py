"""Training: the loss, the collator, the problem split, and short end-to-end runs on a tiny Phi-3."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification, Phi3Config, Phi3ForCausalLM, Phi3ForTokenClassification

import codevalue.train as train_mod
from codevalue.errors import CodevalueError, DataError
from codevalue.model import FAILURE_CLASSES, InputSpec, ValueModel, encode, load_tokenizer
from codevalue.targets import ValueTargets, prefix_value_targets
from codevalue.train import (
    ValueCollator,
    ValueTrainingArguments,
    load_examples,
    split_by_problem,
    tokenize_example,
    train_value_model,
    value_loss,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def bce(x: float, y: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


# ---------------------------------------------------------------------------------------------------------
# value_loss


LOGITS0 = [[0.5, -1.0, 2.0], [0.3, 0.0, -0.7]]
LABELS = [[-100.0, 0.5, 1.0], [0.0, 0.25, -100.0]]
LABELLED = [(-1.0, 0.5), (2.0, 1.0), (0.3, 0.0), (0.0, 0.25)]  # (logit, target) of the unmasked positions


def test_value_loss_soft_targets_masked():
    logits = torch.tensor(LOGITS0).unsqueeze(-1).requires_grad_(True)
    loss = value_loss(logits, torch.tensor(LABELS))
    expected = sum(bce(x, y) for x, y in LABELLED) / len(LABELLED)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert logits.grad[0, 0, 0] == 0 and logits.grad[1, 2, 0] == 0  # masked positions get no gradient
    # d/dx mean BCE = (sigmoid(x) - y) / N
    assert logits.grad[0, 2, 0].item() == pytest.approx((1 / (1 + math.exp(-2.0)) - 1.0) / 4, abs=1e-6)


def test_value_loss_with_aux_head():
    torch.manual_seed(0)
    aux = torch.randn(2, 3, len(FAILURE_CLASSES))
    logits = torch.cat([torch.tensor(LOGITS0).unsqueeze(-1), aux], dim=-1)
    last_index = torch.tensor([2, 1])
    class_labels = torch.tensor([0, 3])
    value_part = sum(bce(x, y) for x, y in LABELLED) / len(LABELLED)
    ce = []
    for row, (last, cls) in enumerate(zip([2, 1], [0, 3], strict=True)):
        z = aux[row, last].tolist()
        ce.append(-(z[cls] - math.log(sum(math.exp(v) for v in z))))
    expected = value_part + 0.5 * sum(ce) / 2
    loss = value_loss(logits, torch.tensor(LABELS), class_labels, last_index, aux_weight=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # aux_weight 0: the extra logits are ignored
    assert value_loss(logits, torch.tensor(LABELS), class_labels, last_index).item() == pytest.approx(
        value_part, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# collator, tokenize_example, split


def test_collator_right_pads_and_finds_last_token():
    features = [
        {"input_ids": [5, 6, 7], "value_labels": [-100.0, 0.5, 1.0], "class_labels": 0},
        {"input_ids": [8, 9, 10, 11, 12], "value_labels": [-100.0, -100.0, 0.0, 0.25, 0.0], "class_labels": 3},
        {"input_ids": [13], "value_labels": [1.0], "class_labels": 1},
    ]
    batch = ValueCollator(pad_token_id=1)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 1], [8, 9, 10, 11, 12], [13, 1, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch["value_labels"].tolist() == [[-100, 0.5, 1.0, -100, -100], [-100, -100, 0.0, 0.25, 0.0],
                                              [1.0, -100, -100, -100, -100]]
    assert batch["last_index"].tolist() == [2, 4, 0]
    assert batch["class_labels"].tolist() == [0, 3, 1]
    assert batch["input_ids"].dtype == torch.long and batch["value_labels"].dtype == torch.float32


def test_tokenize_example_labels(tok):
    completion = "    return x\n"  # prefix value 0.5 up to 11 characters ("    return "), then 1.0
    rec = {"problem_id": "P", "prompt": "def f(x):\n", "completion_scored": completion,
           "value_targets": {"ends": [11, 13], "values": [0.5, 1.0]}, "label_class": 2}
    spec = InputSpec()
    ex = tokenize_example(tok, rec, spec)
    e = encode(tok, rec["prompt"], completion, spec)
    assert ex["input_ids"] == e.input_ids and ex["input_ids"][-1] == tok.eos_token_id
    assert ex["class_labels"] == 2
    assert len(ex["value_labels"]) == len(ex["input_ids"])
    assert ex["value_labels"][:e.completion_start] == [-100.0] * e.completion_start
    expected = [0.5 if end <= 11 else 1.0 for _, end in e.char_spans]
    assert ex["value_labels"][e.completion_start:] == expected
    assert 0.5 in expected and expected[-1] == 1.0
    # left truncation: no prompt left, labels still aligned with the kept tokens
    short = tokenize_example(tok, rec, InputSpec(max_length=3))
    assert len(short["input_ids"]) == len(short["value_labels"]) == 3
    assert -100.0 not in short["value_labels"] and short["value_labels"][-1] == 1.0


def test_tokenize_example_last_token_carries_outcome_without_eos(tok):
    rec = {"problem_id": "P", "prompt": "p", "completion_scored": "abc",
           "value_targets": {"ends": [3], "values": [0.0]}, "label_class": 1}
    ex = tokenize_example(tok, rec, InputSpec(append_eos=False))
    assert tok.eos_token_id not in ex["input_ids"]
    assert ex["value_labels"][-1] == 0.0


def records_for(problems: dict[str, int]) -> list[dict]:
    return [{"problem_id": pid, "rollout_id": r} for pid, n in problems.items() for r in range(n)]


def test_split_by_problem_never_splits_a_problem():
    recs = records_for({f"P{i}": 1 + i % 3 for i in range(10)})
    train, held = split_by_problem(recs, 0.3, seed=0)
    train_p, held_p = {r["problem_id"] for r in train}, {r["problem_id"] for r in held}
    assert len(held_p) == 3 and len(train_p) == 7
    assert not train_p & held_p
    assert sorted(map(id, train + held)) == sorted(map(id, recs))  # every record exactly once
    # all rollouts of a held-out problem are held out
    assert all(r in held for r in recs if r["problem_id"] in held_p)
    # input order is kept within each side
    assert train == [r for r in recs if r["problem_id"] in train_p]


def test_split_by_problem_is_deterministic():
    recs = records_for({f"P{i}": 2 for i in range(20)})
    assert split_by_problem(recs, 0.25, seed=7) == split_by_problem(list(recs), 0.25, seed=7)
    # the split does not depend on record order either
    held = {r["problem_id"] for r in split_by_problem(recs, 0.25, seed=7)[1]}
    assert {r["problem_id"] for r in split_by_problem(recs[::-1], 0.25, seed=7)[1]} == held
    held_sets = {frozenset(r["problem_id"] for r in split_by_problem(recs, 0.25, seed=s)[1]) for s in range(5)}
    assert len(held_sets) > 1  # the seed matters


def test_split_by_problem_edge_cases():
    recs = records_for({"A": 3})
    assert split_by_problem(recs, 0.5, seed=0) == (recs, [])  # one problem: nothing held out
    recs = records_for({1: 1, 2: 1, "3": 1})  # ids compared as strings
    train, held = split_by_problem(recs, 0.0, seed=0)
    assert (train, held) == (recs, [])


def test_load_examples_checks_fields(tmp_path):
    good = {"problem_id": "P", "prompt": "p", "completion_scored": "c",
            "value_targets": {"ends": [1], "values": [1.0]}, "label_class": 0}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "prompt"}) + "\n")
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert (info.value.field, info.value.line) == ("prompt", 2)
    path.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_examples(path)


def test_training_arguments_fixed_settings(tmp_path):
    args = ValueTrainingArguments(output_dir=str(tmp_path), remove_unused_columns=True)
    assert args.remove_unused_columns is False
    assert args.label_names == ["value_labels"]
    assert args.report_to in ("none", [], ["none"])
    assert (args.train_last_layers, args.lora_r, args.aux_weight, args.max_length) == (12, 0, 0.0, 1024)


def test_training_arguments_documented_defaults(tmp_path):
    args = ValueTrainingArguments(output_dir=str(tmp_path))
    assert args.learning_rate == 3e-4
    assert args.save_strategy == "no"
    assert args.logging_steps == 10


def test_base_and_tiny_are_exclusive(tmp_path):
    with pytest.raises(CodevalueError, match="either a base model or a tiny size"):
        train_value_model([], tmp_path / "m", ValueTrainingArguments(output_dir=str(tmp_path)), base="x", tiny="1m")


# ---------------------------------------------------------------------------------------------------------
# end to end on a tiny causal LM backbone


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    """A 2-block causal LM with hidden size 32, saved with the shipped tokenizer, as `--base`."""
    path = tmp_path_factory.mktemp("base")
    config = Phi3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, classifier_dropout=0.0)
    torch.manual_seed(0)
    Phi3ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def synthetic_examples(n_problems: int = 20) -> list[dict]:
    """Two rollouts per problem; the passing one starts with the marker 'PASS', so every target is 0 or 1."""
    records = []
    for i in range(n_problems):
        completions = [f"PASS\n    return x + {i}\n", f"FAIL\n    return x - {i}\n"]
        passed = [True, False]
        for rid, (c, p, t) in enumerate(zip(completions, passed, prefix_value_targets(completions, passed),
                                            strict=True)):
            records.append({"problem_id": f"P{i}", "rollout_id": rid, "prompt": f"def f{i}(x):\n",
                            "completion_scored": c, "value_targets": t.to_dict(), "label_class": 0 if p else 1})
    return records


@pytest.fixture
def captured(monkeypatch):
    """Keep the trainer train_value_model builds, and the model's values right after training (before any
    LoRA merge), to compare with the saved checkpoint."""
    seen = []

    class Capturing(train_mod.ValueTrainer):
        probe = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self)

        def train(self, *args, **kwargs):
            out = super().train(*args, **kwargs)
            ids, mask = self.probe
            self.model.eval()
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask).logits
            self.probe_values = torch.sigmoid(logits[..., 0].float()).cpu()
            return out

    monkeypatch.setattr(train_mod, "ValueTrainer", Capturing)
    return seen, Capturing


def probe_batch(tok, records: list[dict], spec: InputSpec):
    encoded = [encode(tok, r["prompt"], r["completion_scored"], spec).input_ids for r in records]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, :len(e)], mask[i, :len(e)] = torch.tensor(e), 1
    return ids, mask, [len(e) - 1 for e in encoded]


def run_args(tmp_path, **overrides) -> ValueTrainingArguments:
    settings = dict(output_dir=str(tmp_path / "checkpoints"), per_device_train_batch_size=8, learning_rate=5e-3,
                    logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, max_length=64,
                    use_cpu=True, dataloader_pin_memory=False)
    return ValueTrainingArguments(**(settings | overrides))


def logged_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
def test_train_last_layer_with_aux_head(tmp_path, tok, base_dir, captured):
    seen, capturing = captured
    records = synthetic_examples()
    capturing.probe = probe_batch(tok, records, InputSpec(max_length=64))[:2]
    args = run_args(tmp_path, num_train_epochs=4, train_last_layers=1, aux_weight=0.5, eval_fraction=0.2)
    out = tmp_path / "model"
    torch.manual_seed(0)
    meta = train_value_model(records, out, args, base=str(base_dir))

    # the split and the bookkeeping
    assert len(meta["eval_problems"]) == 4 and len(meta["train_problems"]) == 16
    assert not set(meta["eval_problems"]) & set(meta["train_problems"])
    assert meta["train_examples"] == 32
    assert meta["trainable"] == "head + last 1 blocks" and meta["backbone"] == str(base_dir)
    assert meta["metrics"]["epoch"] == 4.0 and meta["metrics"]["eval_loss"] > 0

    # the loss went down (logged every step: 4 steps an epoch, 16 in all)
    [trainer] = seen
    losses = logged_losses(trainer)
    assert len(losses) == 16
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses

    # only the last block, the final norm and the head moved
    before, after = load_file(base_dir / "model.safetensors"), load_file(out / "model.safetensors")
    frozen = [k for k in before if k.startswith(("model.embed_tokens.", "model.layers.0."))]
    assert len(frozen) == 7
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["model.layers.1.self_attn.qkv_proj.weight"],
                           after["model.layers.1.self_attn.qkv_proj.weight"])
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])
    assert after["score.weight"].shape == (1 + len(FAILURE_CLASSES), 32)

    # the checkpoint scores what the trained model computed, and it learnt the marker
    vm = ValueModel.from_pretrained(out, device="cpu")
    assert vm.spec.aux_classes == list(FAILURE_CLASSES) and vm.spec.max_length == 64
    scores = vm.score([r["prompt"] for r in records], [r["completion_scored"] for r in records])
    last_index = probe_batch(tok, records, vm.spec)[2]
    expected = [trainer.probe_values[i, j].item() for i, j in enumerate(last_index)]
    assert [s.final for s in scores] == pytest.approx(expected, abs=1e-5)
    passing = [s.final for s, r in zip(scores, records, strict=True) if r["label_class"] == 0]
    failing = [s.final for s, r in zip(scores, records, strict=True) if r["label_class"] == 1]
    assert sum(passing) / len(passing) > sum(failing) / len(failing) + 0.2


@pytest.mark.slow
def test_lora_trains_and_saves_a_plain_model(tmp_path, tok, base_dir, captured):
    seen, capturing = captured
    records = synthetic_examples(16)
    ids, mask, last_index = probe_batch(tok, records, InputSpec(max_length=64))
    capturing.probe = ids, mask
    args = run_args(tmp_path, num_train_epochs=3, lora_r=4, eval_fraction=0.0)
    out = tmp_path / "model"
    torch.manual_seed(0)
    meta = train_value_model(records, out, args, base=str(base_dir))
    assert meta["trainable"] == "lora r=4" and meta["eval_problems"] == []
    [trainer] = seen
    losses = logged_losses(trainer)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses

    # a plain HF checkpoint: no adapter files, no LoRA weights, nothing missing when loaded without peft
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Phi3ForTokenClassification"]
    plain, info = AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert type(plain) is Phi3ForTokenClassification
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    saved = load_file(out / "model.safetensors")
    assert not [k for k in saved if "lora" in k or "base_model" in k or "modules_to_save" in k]
    assert saved.keys() == plain.state_dict().keys()

    # LoRA was merged: the adapted projections moved, the embeddings did not
    before = load_file(base_dir / "model.safetensors")
    assert torch.equal(before["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    for i in range(2):
        key = f"model.layers.{i}.self_attn.qkv_proj.weight"
        assert not torch.equal(before[key], saved[key])

    # the same values from the trained (unmerged) model, the plain HF model and ValueModel.from_pretrained
    plain.eval()
    with torch.no_grad():
        plain_values = torch.sigmoid(plain(input_ids=ids, attention_mask=mask).logits[..., 0])
    trained_final = [trainer.probe_values[i, j].item() for i, j in enumerate(last_index)]
    plain_final = [plain_values[i, j].item() for i, j in enumerate(last_index)]
    assert plain_final == pytest.approx(trained_final, abs=1e-5)
    scores = ValueModel.from_pretrained(out, device="cpu").score(
        [r["prompt"] for r in records], [r["completion_scored"] for r in records])
    assert [s.final for s in scores] == pytest.approx(plain_final, abs=1e-6)


@pytest.mark.slow
def test_train_targets_from_file(tmp_path, tok, base_dir):
    """A file path works as input, and the value targets are read from it (ValueTargets round trip)."""
    records = synthetic_examples(3)
    path = tmp_path / "targets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [ValueTargets(**r["value_targets"]).at(1) for r in load_examples(path)] == [1.0, 0.0] * 3
    args = run_args(tmp_path, num_train_epochs=1, train_last_layers=0, eval_fraction=0.0, max_steps=1)
    meta = train_value_model(path, tmp_path / "model", args, base=str(base_dir))
    assert meta["train_examples"] == 6 and meta["trainable"] == "head + last 0 blocks"
    before, after = load_file(base_dir / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k != "lm_head.weight")


def test_listwise_loss_matches_hand_computation():
    from codevalue.train import listwise_loss

    logits = torch.tensor([2.0, 0.0, 1.0, 5.0, -1.0])
    passed = torch.tensor([True, False, True, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1])  # group 1 has only passing rollouts: it carries no ranking signal
    logp = torch.log_softmax(torch.tensor([2.0, 0.0, 1.0]), dim=0)
    expected = -(logp[0] + logp[2]) / 2
    assert torch.allclose(listwise_loss(logits, passed, groups), expected)
    # no group with both outcomes: zero, and still differentiable
    flat = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = listwise_loss(flat, torch.tensor([True, True]), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and flat.grad is not None


def test_pairwise_loss_matches_hand_computation():
    from codevalue.train import pairwise_loss

    logits = torch.tensor([2.0, 0.0, 1.0, -1.0, 5.0, 3.0])
    passed = torch.tensor([True, False, True, False, True, True])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])  # group 1: passing rollouts only, no pair to compare

    def sp(x):
        return math.log1p(math.exp(-x))
    # pairs (pass, fail): (2, 0), (2, -1), (1, 0), (1, -1)
    expected = (sp(2.0) + sp(3.0) + sp(1.0) + sp(2.0)) / 4
    assert pairwise_loss(logits, passed, groups).item() == pytest.approx(expected, rel=1e-6)
    flat = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = pairwise_loss(flat, torch.tensor([False, False]), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and flat.grad is not None
    with pytest.raises(ValueError, match="rank_loss"):
        ValueTrainingArguments(output_dir="x", rank_loss="softmax")


def test_centered_targets_are_relative_to_the_pass_rate(tok):
    from codevalue.train import problem_pass_rates

    rec = {"problem_id": "P", "prompt": "p", "completion_scored": "abc",
           "value_targets": {"ends": [1, 3], "values": [0.5, 1.0]}, "label_class": 0}
    plain = tokenize_example(tok, rec, InputSpec())
    centred = tokenize_example(tok, rec, InputSpec(), center_on=0.25)
    kept = [(a, b) for a, b in zip(plain["value_labels"], centred["value_labels"], strict=True) if a != -100.0]
    assert kept and all(b == pytest.approx(0.5 + (a - 0.25) / 2) for a, b in kept)
    assert centred["value_labels"][-1] == pytest.approx(0.875)  # a pass on a problem passed 25% of the time
    fail = dict(rec, value_targets={"ends": [3], "values": [0.0]}, problem_id="Q")
    assert problem_pass_rates([rec, fail, dict(fail, rollout_id=2)]) == {"P": 1.0, "Q": 0.0}
    assert problem_pass_rates([dict(rec, problem_pass_rate=0.3)]) == {"P": 0.3}  # targets' own rate wins


def test_make_groups_keeps_problems_apart_and_collator_flattens():
    from codevalue.train import ValueCollator, make_groups

    examples = [{"input_ids": [1] * (i + 1), "value_labels": [0.5] * (i + 1), "class_labels": i % 2}
                for i in range(7)]
    pids = ["a", "a", "a", "b", "b", "b", "b"]
    groups = make_groups(examples, pids, group_size=2, seed=0)
    assert sorted(len(g["group"]) for g in groups) == [1, 2, 2, 2]
    for g in groups:  # every group holds rollouts of a single problem
        assert len({pids[examples.index(x)] for x in g["group"]}) == 1
    batch = ValueCollator(pad_token_id=0)(groups[:2])
    n = len(groups[0]["group"]) + len(groups[1]["group"])
    assert batch["input_ids"].shape[0] == n
    assert batch["group_index"].tolist() == [0] * len(groups[0]["group"]) + [1] * len(groups[1]["group"])


def checked_examples(n_problems: int = 16) -> list[dict]:
    """Identical programs per problem; only the check results (read after the program) tell pass from fail."""
    records = []
    for i in range(n_problems):
        completion = f"    return x + {i}\n"
        for rid, passed in enumerate([True, False, True, False]):
            targets = prefix_value_targets([completion], [passed])[0]
            f = float(passed)
            records.append({"problem_id": f"P{i}", "rollout_id": rid, "prompt": f"def f{i}(x):\n",
                            "completion_scored": completion, "value_targets": targets.to_dict(),
                            "label_class": 0 if passed else 1,
                            "check_features": dict(pass_frac=f, error_frac=1 - f, timeout_frac=0.0, codet=f,
                                                   codet_top=f, agree_frac=0.5, overlap=f, srank=f, srank_top=f,
                                                   n_tests=10)})
    return records


@pytest.mark.slow
def test_read_checks_model_reads_the_check_results(tmp_path, tok, base_dir):
    records = checked_examples()
    args = run_args(tmp_path, num_train_epochs=8, train_last_layers=-1, eval_fraction=0.0, read_checks=True,
                    max_length=256)
    torch.manual_seed(0)  # the new head is initialised from the global generator
    meta = train_value_model(records, tmp_path / "model", args, base=str(base_dir))
    vm = ValueModel.from_pretrained(tmp_path / "model")
    assert vm.spec.read_checks and meta["train_examples"] == 64
    with pytest.raises(CodevalueError, match="check results"):
        vm.score(["def f(x):\n"], ["    return x\n"])  # a finished program without its checks
    from codevalue.model import input_suffix

    good, bad = records[0], records[1]  # the same program, different checks
    scores = vm.score([good["prompt"]] * 2, [good["completion_scored"]] * 2,
                      suffixes=[input_suffix(vm.spec, good), input_suffix(vm.spec, bad)])
    assert scores[0].final - scores[1].final > 0.3, (scores[0].final, scores[1].final)  # 0 if it did not read them
    # the program's own tokens come before the checks, so the process reward of the prefix is the same
    assert scores[0].values[:-1] == pytest.approx(scores[1].values[:-1], abs=1e-6)
    # per-token values cover the program's tokens and EOS, not the check-result tokens
    n_program = len(vm.tokenizer(good["completion_scored"], add_special_tokens=False)["input_ids"])
    assert len(scores[0].values) == len(scores[0].offsets) == n_program + 1
    assert scores[0].values[-1] == scores[0].final
    # prefixes need no checks, and a causal model gives the program's own tokens the values they have in the
    # finished program (which adds EOS and the checks after them)
    [prefix] = vm.score([good["prompt"]], [good["completion_scored"]], finished=False)
    assert len(prefix.values) == n_program and prefix.offsets == scores[0].offsets[:-1]
    assert prefix.values == pytest.approx(scores[0].values[:-1], abs=1e-6)
    assert prefix.final == prefix.values[-1]


def test_read_checks_names_the_record_without_checks(tmp_path, base_dir):
    records = checked_examples(2)
    del records[3]["check_features"]
    with pytest.raises(DataError, match=r"record 4, field 'check_features'"):
        train_value_model(records, tmp_path / "m", run_args(tmp_path, read_checks=True), base=str(base_dir))


# ---------------------------------------------------------------------------------------------------------
# several processes (DDP over gloo on CPU, launched by accelerate)


def free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # Open MPI refuses root else
MPI_ON_LOOPBACK = {"OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_tcp_if_include": "lo",
                   "OMPI_MCA_btl": "self,vader"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    "torchrun",  # accelerate's --multi_gpu launcher (torchrun); without a GPU each rank is a CPU process
    pytest.param("mpirun", marks=pytest.mark.skipif(__import__("shutil").which("mpirun") is None,
                                                    reason="accelerate --cpu needs mpirun for several processes")),
])
def test_ddp_on_two_cpu_processes_takes_the_steps_of_one(tmp_path, capsys, launcher):
    """Two CPU processes, DDP over gloo on loopback, launched by `accelerate launch --multi_gpu` (torchrun) or
    `accelerate launch --cpu --mpirun_hostfile` (MPI). Same global batch (per-process batch halved) -> the same
    optimizer steps over the same data; rank 0 alone reports and writes, and the checkpoint loads."""
    import os
    import subprocess
    import sys

    from codevalue.cli import main

    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(json.dumps(r) + "\n" for r in synthetic_examples(10)))
    common = ["--tiny", "1m", "--epochs", "2", "--max-length", "64", "--quiet"]
    assert main(["train", str(targets), "-o", str(tmp_path / "one"), "--batch-size", "8", *common]) == 0
    capsys.readouterr()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env |= {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # loopback only
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_loopback_port())]
    if launcher == "torchrun":
        launch.append("--multi_gpu")
    else:
        hosts = tmp_path / "hosts"
        hosts.write_text("localhost slots=2\n")
        launch += ["--cpu", "--mpirun_hostfile", str(hosts)]
        env |= MPI_AS_ROOT | MPI_ON_LOOPBACK
    run = subprocess.run([*launch, "-m", "codevalue", "train", str(targets), "-o", str(tmp_path / "two"),
                          "--batch-size", "4", *common], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("trained tiny-1m") == 1  # only rank 0 reports
    assert "2 processes, global batch 8, 6 optimizer steps" in run.stdout

    one, two = (json.loads((tmp_path / d / "codevalue.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 8
    assert one["optimizer_steps"] == two["optimizer_steps"] == 6  # 2 epochs x ceil(18 rollouts / 8)
    assert one["train_problems"] == two["train_problems"] and one["train_examples"] == two["train_examples"] == 18
    assert one["metrics"]["epoch"] == two["metrics"]["epoch"] == 2.0
    vm = ValueModel.from_pretrained(tmp_path / "two", device="cpu")
    [score] = vm.score(["def f(x):\n"], ["    return x\n"])
    assert 0 < score.final < 1


def test_accelerate_cpu_launch_that_starts_one_process_is_refused(tmp_path, monkeypatch):
    """`accelerate launch --cpu --num_processes 2` without MPI starts one process (with MASTER_PORT set):
    training alone on half the global batch would be silent, so it is an error naming the working command."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CodevalueError, match="--multi_gpu --num_processes N"):
        train_value_model(synthetic_examples(2), tmp_path / "m", run_args(tmp_path), tiny="1m")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun / accelerate --multi_gpu set
    assert train_mod.launched_processes() == 2
    train_mod.check_launch()


# ---------------------------------------------------------------------------------------------------------
# the DeepSpeed ZeRO-3 launch configuration (no DeepSpeed run here: it needs GPUs)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_zero3_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ROOT / "configs" / "accelerate_zero3.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED and not config.use_cpu
    ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]  # relative to the repository root
    ds = json.loads(ds_file.read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # what saving gathers


def test_zero3_config_autos_are_filled_by_the_trainer(tmp_path):
    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = ValueTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                  gradient_accumulation_steps=4, learning_rate=1e-4)
    config = HfTrainerDeepSpeedConfig(str(ROOT / "configs" / "ds_zero3.json"))
    config.trainer_config_process(args)

    class Model:
        class config:
            hidden_size = 5120  # Phi-4

    config.trainer_config_finalize(args, Model, num_training_steps=100)
    assert "auto" not in json.dumps(config.config)
    assert config.config["train_micro_batch_size_per_gpu"] == 2 and config.config["optimizer"]["params"]["lr"] == 1e-4


# ---------------------------------------------------------------------------------------------------------
# wiring: the ranking loss inside compute_loss, the command line's training options, --resume


def grouped_batch(tok, records: list[dict], group_size: int) -> dict:
    examples = [tokenize_example(tok, r, InputSpec(max_length=64)) for r in records]
    groups = train_mod.make_groups(examples, [str(r["problem_id"]) for r in records], group_size, seed=0)
    return train_mod.ValueCollator(tok.pad_token_id)(groups)


@pytest.mark.slow  # builds trainers
@pytest.mark.parametrize("rank_loss", ["listwise", "pairwise"])
def test_compute_loss_adds_the_weighted_ranking_loss(tmp_path, tok, rank_loss):
    """ValueTrainer.compute_loss = value loss + rank_weight x the chosen ranking loss of the final values of
    each group (passing = verdict class 0), and the ranking term changes the gradients."""
    from codevalue.model import build_tiny_model

    records = synthetic_examples(3)
    records += [dict(r, rollout_id=r["rollout_id"] + 2) for r in records]  # groups of 4: listwise != pairwise
    batch = grouped_batch(tok, records, group_size=4)
    model = build_tiny_model("1m", tok).eval()  # eval: no dropout, the same logits on every forward pass
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = torch.arange(logits.shape[0])
    final, passed = logits[rows, batch["last_index"], 0], batch["class_labels"] == 0
    assert passed.sum() == 6 and len(passed) == 12  # each group: two passes, two fails
    rank = train_mod.pairwise_loss if rank_loss == "pairwise" else train_mod.listwise_loss
    expected_rank = rank(final, passed, batch["group_index"]).item()
    assert expected_rank > 0
    losses, grads = {}, {}
    for weight in (0.0, 2.5):
        args = run_args(tmp_path, rank_weight=weight, rank_loss=rank_loss, group_size=4, eval_strategy="no")
        trainer = train_mod.ValueTrainer(model=model, args=args)
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        losses[weight], grads[weight] = loss.item(), model.score.weight.grad.clone()
    assert losses[0.0] == pytest.approx(value_loss(logits, batch["value_labels"]).item(), rel=1e-5)
    assert losses[2.5] - losses[0.0] == pytest.approx(2.5 * expected_rank, rel=1e-4)
    assert not torch.allclose(grads[2.5], grads[0.0])
    # without groups (no group_index) the weight has nothing to rank: the value loss alone
    flat = {k: v for k, v in batch.items() if k != "group_index"}
    args = run_args(tmp_path, rank_weight=2.5, eval_strategy="no")
    loss = train_mod.ValueTrainer(model=model, args=args).compute_loss(model, flat)
    assert loss.item() == pytest.approx(losses[0.0], rel=1e-5)


def test_train_command_options_reach_the_training_arguments(tmp_path):
    from codevalue.cli import _training_args, build_parser

    def targs(*argv):
        return _training_args(build_parser().parse_args(["train", "t.jsonl", "-o", str(tmp_path), *argv]), tmp_path)

    plain = targs()
    assert (plain.train_last_layers, plain.lora_r, plain.rank_weight, plain.center_targets, plain.group_size,
            plain.rank_loss) == (12, 0, 0.0, False, 0, "listwise")
    assert targs("--full").train_last_layers == -1
    assert targs("--train-last-layers", "3").train_last_layers == 3
    assert (targs("--lora-r", "8").lora_r, targs("--lora-r", "8").train_last_layers) == (8, 12)
    ranked = targs("--group-size", "4", "--rank-weight", "2.5", "--rank-loss", "pairwise", "--center-targets")
    assert (ranked.group_size, ranked.rank_weight, ranked.rank_loss, ranked.center_targets) == (
        4, 2.5, "pairwise", True)


@pytest.mark.slow
def test_center_targets_trains_on_relative_targets(tmp_path, tok, captured):
    """--center-targets reaches the examples the trainer sees: 0.5 + (target - pass rate) / 2."""
    from codevalue.cli import main

    seen, capturing = captured
    records = synthetic_examples(4)
    capturing.probe = probe_batch(tok, records, InputSpec(max_length=64))[:2]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    for centred in (False, True):
        argv = ["train", str(path), "--tiny", "1m", "-o", str(tmp_path / f"m{centred}"), "--epochs", "1",
                "--eval-fraction", "0", "--max-length", "64", "--quiet"] + (["--center-targets"] if centred else [])
        assert main(argv) == 0
    plain, centre = ([x["value_labels"][-1] for x in t.train_dataset] for t in seen)
    assert sorted(plain) == [0.0] * 4 + [1.0] * 4  # outcomes; every problem passes half of the time
    assert sorted(centre) == [0.25] * 4 + [0.75] * 4
    meta = json.loads((tmp_path / "mTrue" / "codevalue.json").read_text())
    assert "relative" in json.dumps(meta)


@pytest.mark.slow
def test_train_resume_continues_from_the_last_checkpoint(tmp_path):
    """`train --save-checkpoints` keeps a checkpoint per epoch; `--resume` starts from the last one. The
    checkpoint is marked (its head weights shifted by 1) so that the resumed model shows it was loaded: the run
    is already complete at that checkpoint, so no step changes the marked weights."""
    from safetensors.torch import save_file

    from codevalue.cli import main

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_examples(4)))
    out = tmp_path / "model"
    argv = ["train", str(path), "--tiny", "1m", "-o", str(out), "--epochs", "1", "--eval-fraction", "0",
            "--max-length", "64", "--quiet", "--save-checkpoints"]
    assert main([*argv, "--resume"]) == 0  # nothing to resume yet: a fresh run
    [checkpoint] = (out / "checkpoints").glob("checkpoint-*")
    trained = load_file(out / "model.safetensors")
    weights = load_file(checkpoint / "model.safetensors")
    assert torch.equal(weights["score.weight"], trained["score.weight"])
    weights["score.weight"] = weights["score.weight"] + 1.0
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    assert main([*argv, "--resume"]) == 0
    assert torch.equal(load_file(out / "model.safetensors")["score.weight"], weights["score.weight"])
    assert main(argv) == 0  # without --resume: trained afresh, the marked checkpoint ignored
    assert torch.equal(load_file(out / "model.safetensors")["score.weight"], trained["score.weight"])

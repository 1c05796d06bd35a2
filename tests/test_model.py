"""The value model: encoding, batched scoring, checkpoints and freezing, on tiny Phi-3 models."""

import json
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForTokenClassification, Phi3Config, Phi3ForTokenClassification

from codevalue.errors import CodevalueError
from codevalue.model import (
    FAILURE_CLASSES,
    SIDECAR,
    InputSpec,
    ValueModel,
    build_tiny_model,
    decoder_layers,
    encode,
    freeze_all_but_last,
    load_backbone,
    load_tokenizer,
)

PROMPT = "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n"
COMPLETION = "    total = a + b\n    return total\n"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def tiny_phi3(tok, num_labels: int = 1, layers: int = 2, seed: int = 0) -> Phi3ForTokenClassification:
    """A ~0.2M-parameter Phi-3 whose head is scaled up so that values spread well away from 0.5."""
    config = Phi3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, classifier_dropout=0.0)
    torch.manual_seed(seed)
    model = Phi3ForTokenClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(25)
    return model.eval()


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def spans_of(tok, text: str) -> list[tuple[int, int]]:
    return [tuple(o) for o in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]


# ---------------------------------------------------------------------------------------------------------
# encode


def test_encode_prompt_then_completion_then_eos(tok):
    p_ids, c_ids = ids_of(tok, PROMPT), ids_of(tok, COMPLETION)
    assert len(p_ids) > 5 and len(c_ids) > 5
    e = encode(tok, PROMPT, COMPLETION, InputSpec())
    assert e.input_ids == p_ids + c_ids + [tok.eos_token_id]
    assert e.completion_start == len(p_ids)
    assert e.dropped_completion_tokens == 0
    assert len(e.char_spans) == len(c_ids) + 1 == len(e.input_ids) - e.completion_start
    assert e.char_spans[-1] == (len(COMPLETION), len(COMPLETION))  # EOS: an empty span at the end
    # spans tile the completion and map each token back to its own text
    assert e.char_spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(e.char_spans, e.char_spans[1:], strict=False))
    assert "".join(COMPLETION[s:t] for s, t in e.char_spans) == COMPLETION
    for (s, t), token in zip(e.char_spans[:-1], e.input_ids[e.completion_start:-1], strict=True):
        assert tok.decode([token]) == COMPLETION[s:t]


def test_encode_unfinished_has_no_eos(tok):
    p_ids, c_ids = ids_of(tok, PROMPT), ids_of(tok, COMPLETION)
    e = encode(tok, PROMPT, COMPLETION, InputSpec(), finished=False)
    assert e.input_ids == p_ids + c_ids
    assert tok.eos_token_id not in e.input_ids
    assert e.char_spans == spans_of(tok, COMPLETION)
    assert e.char_spans[-1][1] == len(COMPLETION)
    # append_eos=False in the spec: no EOS even for finished completions
    assert encode(tok, PROMPT, COMPLETION, InputSpec(append_eos=False)).input_ids == p_ids + c_ids


def test_encode_empty_prompt_and_empty_completion(tok):
    c_ids, p_ids = ids_of(tok, COMPLETION), ids_of(tok, PROMPT)
    e = encode(tok, "", COMPLETION, InputSpec())
    assert (e.input_ids, e.completion_start) == (c_ids + [tok.eos_token_id], 0)
    e = encode(tok, PROMPT, "", InputSpec())
    assert e.input_ids == p_ids + [tok.eos_token_id]
    assert e.completion_start == len(p_ids) and e.char_spans == [(0, 0)]


def test_encode_left_truncation_cuts_the_prompt_first(tok):
    p_ids, c_ids = ids_of(tok, PROMPT), ids_of(tok, COMPLETION)
    full = p_ids + c_ids + [tok.eos_token_id]
    spans = spans_of(tok, COMPLETION) + [(len(COMPLETION), len(COMPLETION))]
    e = encode(tok, PROMPT, COMPLETION, InputSpec(max_length=len(c_ids) + 1 + 3))
    assert e.input_ids == full[-(len(c_ids) + 4):]
    assert e.input_ids[:3] == p_ids[-3:]  # the END of the prompt is kept
    assert e.completion_start == 3
    assert e.dropped_completion_tokens == 0
    assert e.char_spans == spans


def test_encode_prompt_fully_dropped(tok):
    c_ids = ids_of(tok, COMPLETION)
    e = encode(tok, PROMPT, COMPLETION, InputSpec(max_length=len(c_ids) + 1))
    assert e.input_ids == c_ids + [tok.eos_token_id]
    assert e.completion_start == 0
    assert e.dropped_completion_tokens == 0
    assert len(e.char_spans) == len(c_ids) + 1


def test_encode_completion_alone_too_long_keeps_the_end(tok):
    c_ids = ids_of(tok, COMPLETION)
    spans = spans_of(tok, COMPLETION) + [(len(COMPLETION), len(COMPLETION))]
    e = encode(tok, PROMPT, COMPLETION, InputSpec(max_length=4))
    dropped = len(c_ids) + 1 - 4
    assert e.input_ids == (c_ids + [tok.eos_token_id])[-4:]
    assert e.input_ids[-1] == tok.eos_token_id  # the outcome token survives
    assert e.completion_start == 0
    assert e.dropped_completion_tokens == dropped
    assert e.char_spans == spans[dropped:]
    assert len(e.char_spans) == len(e.input_ids) == 4


# ---------------------------------------------------------------------------------------------------------
# scoring


PROMPTS = ["def f(x):\n", "", PROMPT, "import os\n\n\ndef g(a, b, c):\n    # combine three values\n"]
COMPLETIONS = ["    return x\n", "print(1)", COMPLETION, "    return a\n"]


@pytest.fixture(scope="module")
def vm(tok):
    return ValueModel(tiny_phi3(tok), tok, InputSpec(max_length=256))


@pytest.mark.parametrize("batch_size", [16, 3])
def test_padding_invariance(vm, batch_size):
    lengths = [len(encode(vm.tokenizer, p, c, vm.spec).input_ids) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert len(set(lengths)) == len(lengths)  # all different: every batch needs padding
    batch = vm.score(PROMPTS, COMPLETIONS, batch_size=batch_size)
    spread = [v for s in batch for v in s.values]
    assert max(spread) - min(spread) > 0.1  # values are not all ~0.5, so the comparison means something
    for p, c, b in zip(PROMPTS, COMPLETIONS, batch, strict=True):
        [alone] = vm.score([p], [c])
        assert b.offsets == alone.offsets == encode(vm.tokenizer, p, c, vm.spec).char_spans
        assert len(b.values) == len(alone.values) == len(b.offsets)
        torch.testing.assert_close(torch.tensor(b.values), torch.tensor(alone.values), atol=1e-5, rtol=0)
        assert b.final == pytest.approx(alone.final, abs=1e-5)
        assert b.final == b.values[-1]
        assert b.dropped_tokens == 0


def test_unfinished_scores_have_no_eos_and_match_prefix(vm):
    finished = vm.score(PROMPTS, COMPLETIONS)
    unfinished = vm.score(PROMPTS, COMPLETIONS, finished=False)
    for c, f, u in zip(COMPLETIONS, finished, unfinished, strict=True):
        assert len(u.values) == len(ids_of(vm.tokenizer, c)) == len(f.values) - 1
        assert u.offsets == f.offsets[:-1]
        assert u.final == u.values[-1]
        # a causal model: the EOS changes nothing before it
        torch.testing.assert_close(torch.tensor(u.values), torch.tensor(f.values[:-1]), atol=1e-5, rtol=0)


def test_score_reports_truncation(tok):
    vm = ValueModel(tiny_phi3(tok), tok, InputSpec(max_length=5))
    [s] = vm.score([PROMPT], [COMPLETION])
    assert s.dropped_tokens == len(ids_of(tok, COMPLETION)) + 1 - 5
    assert len(s.values) == len(s.offsets) == 5
    assert s.offsets[-1] == (len(COMPLETION), len(COMPLETION))


def test_score_rejects_mismatched_lengths(vm):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        vm.score(["a", "b"], ["c"])


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def test_save_load_round_trip(vm, tmp_path):
    vm.save_pretrained(tmp_path, extra={"note": "round trip"})
    assert {"config.json", "model.safetensors", "tokenizer.json", SIDECAR} <= {p.name for p in tmp_path.iterdir()}
    sidecar = json.loads((tmp_path / SIDECAR).read_text())
    assert sidecar == {"format_version": 1, "input_spec": asdict(vm.spec), "note": "round trip"}

    loaded = ValueModel.from_pretrained(tmp_path, device="cpu")
    assert loaded.spec == vm.spec
    assert loaded.meta["note"] == "round trip"
    assert not loaded.model.training
    for a, b in zip(vm.score(PROMPTS, COMPLETIONS), loaded.score(PROMPTS, COMPLETIONS), strict=True):
        assert a.values == b.values and a.final == b.final and a.offsets == b.offsets

    # a standard HF checkpoint: every weight is restored, none is newly initialised
    plain, info = AutoModelForTokenClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(plain) is Phi3ForTokenClassification
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []
    original = vm.model.state_dict()
    restored = plain.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_round_trip_with_aux_head(tok, tmp_path):
    spec = InputSpec(max_length=64, aux_classes=list(FAILURE_CLASSES))
    vm = ValueModel(tiny_phi3(tok, num_labels=1 + len(FAILURE_CLASSES)), tok, spec)
    vm.save_pretrained(tmp_path)
    loaded = ValueModel.from_pretrained(tmp_path, device="cpu")
    assert loaded.spec.aux_classes == list(FAILURE_CLASSES)
    assert loaded.model.config.num_labels == 6 and loaded.model.score.out_features == 6
    assert [s.values for s in loaded.score(PROMPTS, COMPLETIONS)] == [s.values for s in vm.score(PROMPTS, COMPLETIONS)]


def test_resave_writes_the_current_spec(vm, tmp_path):
    vm.save_pretrained(tmp_path / "a")
    loaded = ValueModel.from_pretrained(tmp_path / "a", device="cpu")
    loaded.spec = InputSpec(max_length=32)
    loaded.save_pretrained(tmp_path / "b")
    assert ValueModel.from_pretrained(tmp_path / "b", device="cpu").spec.max_length == 32


def test_from_pretrained_without_sidecar(tok, tmp_path):
    tiny_phi3(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(CodevalueError, match=f"no {SIDECAR}"):
        ValueModel.from_pretrained(tmp_path)
    with pytest.raises(CodevalueError, match="not a codevalue checkpoint"):
        ValueModel.from_pretrained(tmp_path / "missing")


def test_load_backbone_bad_path(tmp_path):
    with pytest.raises(CodevalueError, match="could not load backbone"):
        load_backbone(str(tmp_path / "nothing-here"))


# ---------------------------------------------------------------------------------------------------------
# tiny models, tokenizer, freezing


def test_load_tokenizer(tok):
    assert len(tok) == 4096
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id


def test_build_tiny_model(tok):
    model = build_tiny_model("1m", tok, num_labels=3, seed=1)
    assert type(model) is Phi3ForTokenClassification
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_labels, c.vocab_size) == (128, 2, 3, 4096)
    assert c.pad_token_id == tok.pad_token_id and c.eos_token_id == tok.eos_token_id
    assert model.score.out_features == 3
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    same = build_tiny_model("1m", tok, num_labels=3, seed=1)
    other = build_tiny_model("1m", tok, num_labels=3, seed=2)
    assert torch.equal(model.score.weight, same.score.weight)
    assert not torch.equal(model.score.weight, other.score.weight)
    with pytest.raises(CodevalueError, match="unknown tiny size '2m'"):
        build_tiny_model("2m", tok)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("k, blocks, norm", [(0, [], False), (1, [2], True), (2, [1, 2], True),
                                             (3, [0, 1, 2], True), (12, [0, 1, 2], True)])
def test_freeze_all_but_last(tok, k, blocks, norm):
    model = tiny_phi3(tok, layers=3)
    assert len(decoder_layers(model)) == 3
    freeze_all_but_last(model, 3)  # freezing again must reset what an earlier call left trainable
    freeze_all_but_last(model, k)
    names = {n for n, _ in model.named_parameters()}
    expected = {"score.weight", "score.bias"} | {n for n in names if any(
        n.startswith(f"model.layers.{b}.") for b in blocks)}
    if norm:
        expected.add("model.norm.weight")
    assert trainable_names(model) == expected
    assert "model.embed_tokens.weight" not in trainable_names(model)


def test_identical_inputs_are_scored_once(vm):
    rows = []
    handle = vm.model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                                with_kwargs=True)
    try:
        scores = vm.score([PROMPTS[0], PROMPTS[1], PROMPTS[0]], [COMPLETIONS[0], COMPLETIONS[1], COMPLETIONS[0]])
    finally:
        handle.remove()
    assert sum(rows) == 2  # three inputs, two distinct
    assert scores[0] == scores[2] != scores[1]
    alone = vm.score([PROMPTS[0]], [COMPLETIONS[0]])[0]
    assert scores[2].values == pytest.approx(alone.values, abs=1e-5) and scores[2].offsets == alone.offsets

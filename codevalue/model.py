"""The value model: a decoder-only backbone whose LM head is replaced by a one-output head + sigmoid.

    from codevalue.model import ValueModel
    vm = ValueModel.from_pretrained("runs/demo/model")          # any codevalue checkpoint
    [s] = vm.score(["def add(a, b):\\n"], ["    return a + b\\n"])
    s.final, s.values, s.offsets                                 # ORM, PRM per token, char spans

The backbone is loaded with `AutoModelForTokenClassification(num_labels=...)`, so a saved checkpoint
is a standard Hugging Face model: `from_pretrained` restores backbone and head. Logit 0 is the value
(sigmoid -> P(pass | prefix)); with an auxiliary head, logits 1..5 predict the checker's verdict class.
A `codevalue.json` sidecar records how inputs were built (max length, truncation side, end token).

Any HF causal LM works as backbone (Phi-4-mini, Phi-4, Qwen, Llama...). Offline, `--tiny SIZE` builds
a small Phi-3-architecture model (the architecture of Phi-4-mini) from a config, with the byte-level BPE
tokenizer shipped in `codevalue/assets/tokenizer` (trained on the bundled code by `train_code_tokenizer`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CodevalueError
from .targets import FAILURE_CLASSES

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
SIDECAR = "codevalue.json"
FORMAT_VERSION = 1

# Tiny Phi-3 configurations (parameter counts with the shipped 4,096-token vocabulary).
TINY_SIZES: dict[str, dict[str, int]] = {
    "1m": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384),
    "4m": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768),
    "16m": dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, intermediate_size=1152),
}


@dataclass
class InputSpec:
    """How (prompt, completion) become token ids; saved with the model so scoring matches training."""

    max_length: int = 1024
    truncation_side: str = "left"  # drop the oldest tokens: the completion's end (the ORM token) is kept
    append_eos: bool = True  # a finished completion ends with EOS; its value is the outcome reward
    aux_classes: list[str] = field(default_factory=list)  # [] or FAILURE_CLASSES
    # Execution-aware: after a finished completion (before EOS) the model reads its selection-time check
    # results (`codevalue checks`), rendered by `checks.describe_checks`; prefixes are read without them.
    read_checks: bool = False


@dataclass
class Encoded:
    input_ids: list[int]
    completion_start: int  # index in input_ids of the first kept completion token
    char_spans: list[tuple[int, int]]  # char span in the completion of each kept completion token
    dropped_completion_tokens: int  # completion tokens lost to left truncation
    suffix: tuple[int, int] = (0, 0)  # [start, end) of the suffix (check results) among the kept completion tokens


@dataclass
class Score:
    final: float  # value at the last token: the outcome reward
    values: list[float]  # value after each kept completion token (+ EOS): the process reward; check-result
    # tokens of a read_checks model are left out
    offsets: list[tuple[int, int]]  # char span of each of those tokens in the completion
    dropped_tokens: int = 0


def train_code_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 4096) -> Path:
    """Train the default byte-level BPE tokenizer on the bundled problems and samples (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .jsonl import read_jsonl
    from .problems import DATA_DIR

    def corpus():
        for path in sorted(DATA_DIR.glob("*/*.jsonl.gz")):
            for _, rec in read_jsonl(path):
                for key in ("prompt", "canonical_solution", "test", "question", "starter_code",
                            "completion_raw", "text"):
                    if isinstance(rec.get(key), str) and rec[key].strip():
                        yield rec[key]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>", model_max_length=4096)
    fast.save_pretrained(out_dir)
    return Path(out_dir)


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path or TOKENIZER_DIR))
    if tok.pad_token is None:  # most causal LMs ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def build_tiny_model(size: str, tokenizer, num_labels: int = 1, seed: int = 0):
    """A randomly initialised Phi-3 token-classification model of one of TINY_SIZES."""
    from transformers import Phi3Config, Phi3ForTokenClassification

    if size not in TINY_SIZES:
        raise CodevalueError(f"unknown tiny size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    config = Phi3Config(vocab_size=len(tokenizer), max_position_embeddings=4096, num_labels=num_labels,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, classifier_dropout=0.0,
                        **TINY_SIZES[size])
    torch.manual_seed(seed)
    return Phi3ForTokenClassification(config)


def load_backbone(name_or_path: str, num_labels: int = 1, dtype: torch.dtype | None = None):
    """Any HF causal LM (or a codevalue checkpoint) as a token-classification model.

    For a causal LM the new `score` head is initialised; for a codevalue checkpoint nothing is.
    """
    from transformers import AutoModelForTokenClassification

    try:
        return AutoModelForTokenClassification.from_pretrained(name_or_path, num_labels=num_labels,
                                                               dtype=dtype or "auto")
    except (OSError, ValueError) as e:
        raise CodevalueError(f"could not load backbone {name_or_path!r}: {e}") from None


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks of common HF architectures."""
    base = model.base_model
    for attr in ("layers", "h", "blocks", "decoder.layers"):
        obj = base
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise CodevalueError(f"cannot find the decoder layers of {type(model).__name__}; use --lora-r or --full")


def freeze_all_but_last(model, k: int) -> None:
    """Train only the head, the final norm and the last `k` blocks (the paper uses k = 12)."""
    for p in model.parameters():
        p.requires_grad = False
    layers = decoder_layers(model)
    trainable = [model.score] + list(layers[max(0, len(layers) - k):] if k > 0 else [])
    norm = getattr(model.base_model, "norm", None) or getattr(model.base_model, "ln_f", None)
    if norm is not None and k > 0:
        trainable.append(norm)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True


def encode(tokenizer, prompt: str, completion: str, spec: InputSpec, finished: bool = True,
           suffix: str = "") -> Encoded:
    """Token ids of prompt + completion (+ suffix + EOS when finished), prompt and completion tokenized
    apart so completion token spans are exact; left-truncated to spec.max_length. Suffix tokens (check
    results) get the empty span at the completion's end, like EOS."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    suffix_range = (0, 0)
    if finished and suffix:
        suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        suffix_range = (len(ids), len(ids) + len(suffix_ids))
        ids += suffix_ids
        spans += [(len(completion), len(completion))] * len(suffix_ids)
    if finished and spec.append_eos:
        ids.append(tokenizer.eos_token_id)
        spans.append((len(completion), len(completion)))
    full = prompt_ids + ids
    cut = max(0, len(full) - spec.max_length)
    start = len(prompt_ids) - cut
    dropped = max(0, -start)
    suffix_range = (max(0, suffix_range[0] - dropped), max(0, suffix_range[1] - dropped))
    return Encoded(full[cut:], max(0, start), spans[dropped:], dropped, suffix_range)


class ValueModel:
    """A token-classification model + tokenizer + InputSpec; scores (prompt, completion) pairs."""

    def __init__(self, model, tokenizer, spec: InputSpec | None = None, meta: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.spec = spec or InputSpec()
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None,
                        dtype: torch.dtype | None = None) -> ValueModel:
        path = Path(path)
        sidecar = path / SIDECAR
        if not sidecar.exists():
            raise CodevalueError(f"{path} is not a codevalue checkpoint (no {SIDECAR}); "
                                 "train one with `codevalue train`")
        meta = json.loads(sidecar.read_text())
        spec = InputSpec(**meta["input_spec"])
        model = load_backbone(str(path), num_labels=1 + len(spec.aux_classes), dtype=dtype)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        return cls(model, load_tokenizer(path), spec, meta)

    def save_pretrained(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {**self.meta, **(extra or {}), "format_version": FORMAT_VERSION, "input_spec": asdict(self.spec)}
        (path / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], batch_size: int = 16,
              finished: bool = True, suffixes: list[str] | None = None) -> list[Score]:
        """Values at every completion token, one forward pass per batch (right padding; a causal model's
        values at real tokens never see the padding); identical inputs are scored once.
        `finished=False` scores prefixes (no EOS). `suffixes`: the check results of finished completions,
        for a model with spec.read_checks."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if finished and self.spec.read_checks and suffixes is None:
            raise CodevalueError("this value model reads selection-time check results after a finished program: "
                                 "score `codevalue checks` output (field check_features), or score prefixes")
        suffixes = suffixes if finished and suffixes is not None else [""] * len(prompts)
        keys = list(zip(prompts, completions, suffixes, strict=True))
        unique = list(dict.fromkeys(keys))
        encoded = [encode(self.tokenizer, p, c, self.spec, finished, x) for p, c, x in unique]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))  # less padding
        scores: list[Score | None] = [None] * len(encoded)
        pad = self.tokenizer.pad_token_id
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(encoded[i].input_ids) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encoded[i].input_ids)
                ids[row, :n] = torch.tensor(encoded[i].input_ids)
                mask[row, :n] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            values = torch.sigmoid(logits[..., 0].float()).cpu()  # (B, T)
            for row, i in enumerate(idx):
                e = encoded[i]
                n = len(e.input_ids)
                v = values[row, e.completion_start:n].tolist()
                final = float(values[row, n - 1])
                a, b = e.suffix  # the process reward is read on the program's own tokens (+ EOS), not the checks
                scores[i] = Score(final, v[:a] + v[b:], e.char_spans[:a] + e.char_spans[b:],
                                  e.dropped_completion_tokens)
        by_key = dict(zip(unique, scores, strict=True))
        return [by_key[k] for k in keys]  # type: ignore[misc]


def input_suffix(spec: InputSpec, rec: dict, source: object = "<records>", line: int | None = None) -> str:
    """What a model with this spec reads after the finished completion of `rec` ("" for most models)."""
    if not spec.read_checks:
        return ""
    from .checks import describe_checks
    from .errors import DataError

    features = rec.get("check_features")
    if not isinstance(features, dict) or not {"pass_frac", "codet", "agree_frac"} <= set(features):
        raise DataError(source, "missing field: this model reads check results; run `codevalue checks` on the "
                                "labelled rollouts (and `codevalue targets` on its output)", line=line,
                        field="check_features")
    return describe_checks(features)


__all__ = ["ValueModel", "input_suffix", "InputSpec", "Score", "Encoded", "encode", "build_tiny_model", "load_backbone",
           "load_tokenizer", "train_code_tokenizer", "freeze_all_but_last", "decoder_layers", "TINY_SIZES",
           "FAILURE_CLASSES"]

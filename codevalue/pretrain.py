"""Language-model warm start of a tiny backbone on code that is already on the machine.

    codevalue pretrain --tiny 1m -o runs/lm-1m [--max-steps 1500] [--corpus stdlib]
    codevalue crossval TARGETS --base runs/lm-1m ...      # then use it like any HF causal LM

No pretrained weights can be downloaded here, so a tiny value model otherwise starts from random
weights and has to learn Python from a few thousand labelled programs. This trains the same Phi-3
architecture as a causal LM (next-token prediction, `transformers.Trainer`) on Python source files:
the standard library of the running interpreter by default, or any directory. The bundled benchmark
data is never used: its reference solutions are what the critics are evaluated against.
The result is a standard `Phi3ForCausalLM` checkpoint plus the shipped tokenizer; `--base DIR` loads it
with a fresh value head.
"""

from __future__ import annotations

import os
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from .errors import CodevalueError
from .model import TINY_SIZES, load_tokenizer


def corpus_files(corpus: str = "stdlib") -> list[Path]:
    """Python files of the corpus, sorted (deterministic): `stdlib` (without its tests and site-packages),
    `site-packages` (the installed packages), or a directory."""
    if corpus == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__")
    elif corpus == "site-packages":
        root = Path(sysconfig.get_paths()["purelib"])
        skip = ("test", "tests", "__pycache__", "codevalue")
    else:
        root, skip = Path(corpus), ("__pycache__",)
    if not root.is_dir():
        raise CodevalueError(f"corpus {corpus!r}: {root} is not a directory")
    files = sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts[:-1]) & set(skip))
    if not files:
        raise CodevalueError(f"corpus {corpus!r}: no .py files under {root}")
    return files


def token_blocks(tokenizer, files: list[Path], block_size: int, max_chars: int) -> list[list[int]]:
    """Files joined with EOS between them and cut into blocks of `block_size` tokens (the usual LM recipe)."""
    ids: list[int] = []
    used = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if used + len(text) > max_chars:
            break
        used += len(text)
        ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    return [ids[i:i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


def pretrain_tiny_lm(out_dir: str | os.PathLike, size: str = "1m", corpus: str = "stdlib", max_steps: int = 1500,
                     batch_size: int = 8, block_size: int = 512, lr: float = 1e-3, max_chars: int = 12_000_000,
                     seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    from transformers import Phi3Config, Phi3ForCausalLM, Trainer, TrainingArguments, default_data_collator

    if size not in TINY_SIZES:
        raise CodevalueError(f"unknown tiny size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    tokenizer = load_tokenizer()
    files = corpus_files(corpus)
    blocks = token_blocks(tokenizer, files, block_size, max_chars)
    if not blocks:
        raise CodevalueError(f"corpus {corpus!r} has fewer than {block_size} tokens")
    dataset = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    config = Phi3Config(vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        classifier_dropout=0.0, **TINY_SIZES[size])
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    args = TrainingArguments(output_dir=str(Path(out_dir) / "checkpoints"), max_steps=max_steps,
                             per_device_train_batch_size=batch_size, learning_rate=lr, weight_decay=0.01,
                             warmup_steps=0.05, lr_scheduler_type="cosine",
                             logging_steps=max(1, min(50, max_steps // 10)), save_strategy="no",
                             report_to="none", seed=seed, disable_tqdm=quiet, dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"size": size, "corpus": corpus, "files": len(files), "blocks": len(blocks),
            "corpus_tokens": len(blocks) * block_size, "trained_tokens": max_steps * batch_size * block_size,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "train_loss": result.training_loss, "seconds": round(seconds, 1), "out": str(out_dir)}

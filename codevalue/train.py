"""Train a value model with transformers.Trainer: per-token BCE on prefix value targets.

    codevalue train TARGETS.jsonl --tiny 4m -o runs/vm [--epochs 2] [--train-last-layers 12 | --lora-r 8]
    accelerate launch --multi_gpu --num_processes N -m codevalue train ...   # DDP: N GPUs, or N CPU processes (gloo)
    accelerate launch --config_file configs/accelerate_zero3.yaml -m codevalue train ...   # DeepSpeed ZeRO-3

Only the Trainer's `compute_loss` is ours: BCE between sigmoid(value logit) and the soft targets of
`codevalue targets` on completion tokens (prompt and padding masked with -100), plus an optional
cross-entropy on the verdict class at the last token. Checkpointing, resuming, gradient accumulation,
bf16, gradient checkpointing and multi-GPU come from the library. Problems, not rollouts, are split
between training and evaluation, so the evaluation loss is on problems the model never saw.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from .errors import CodevalueError, DataError
from .jsonl import read_jsonl
from .model import (
    FAILURE_CLASSES,
    InputSpec,
    ValueModel,
    build_tiny_model,
    encode,
    freeze_all_but_last,
    input_suffix,
    load_backbone,
    load_tokenizer,
)
from .targets import ValueTargets


@dataclass
class ValueTrainingArguments(TrainingArguments):
    """TrainingArguments plus the value-model options. Defaults changed from the parent:
    report_to="none", remove_unused_columns=False, label_names=["value_labels"], save_strategy="no",
    eval_strategy="epoch" when there is an evaluation split, logging_steps=10, lr 3e-4."""

    train_last_layers: int = field(default=12, metadata={
        "help": "train the head and the last K blocks (paper: 12); -1 trains everything"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; > 0 trains LoRA adapters + the head instead"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    max_length: int = field(default=1024, metadata={"help": "tokens per example; prompts are cut from the left"})
    aux_weight: float = field(default=0.0, metadata={
        "help": "weight of the auxiliary verdict-class loss at the last token (0: no auxiliary head)"})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of problems held out for eval loss"})
    append_eos: bool = field(default=True, metadata={"help": "end finished completions with EOS"})
    read_checks: bool = field(default=False, metadata={
        "help": "execution-aware: the model also reads each program's selection-time check results "
                "(`codevalue checks` output, field check_features) after the program"})
    group_size: int = field(default=0, metadata={
        "help": "> 0: each batch item is a group of up to G rollouts of ONE problem (the batch size counts "
                "groups), so the ranking loss can compare rollouts of the same problem"})
    rank_weight: float = field(default=0.0, metadata={
        "help": "weight of a ranking loss on final values within each group (needs group_size > 0)"})
    rank_loss: str = field(default="listwise", metadata={
        "help": "listwise: -log softmax of the passing rollouts among their group; pairwise: mean logistic "
                "loss over (passing, failing) pairs of the group (RankNet / Bradley-Terry)"})
    center_targets: bool = field(default=False, metadata={
        "help": "train on 0.5 + (target - p) / 2, p the problem's pass rate: values say how much better than "
                "the problem's average a prefix is, not how easy the problem is (values are then no longer "
                "probabilities)"})
    # Defaults changed from TrainingArguments:
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate (AdamW)"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    save_strategy: str = field(default="no", metadata={"help": "checkpoint strategy: no, epoch or steps"})
    eval_strategy: str = field(default="epoch", metadata={
        "help": "evaluation strategy; set to 'no' automatically when there is no held-out split"})

    def __post_init__(self):
        if self.rank_loss not in ("listwise", "pairwise"):
            raise ValueError(f"rank_loss must be 'listwise' or 'pairwise', not {self.rank_loss!r}")
        self.report_to = self.report_to if self.report_to not in (None, "all") else "none"
        self.remove_unused_columns = False
        self.label_names = ["value_labels"]
        deepspeed = self.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        if launched_processes() > 1 and not torch.accelerator.is_available() and not deepspeed:
            self.use_cpu = True  # several processes and no GPU: accelerate's CPU state, DDP over gloo
        super().__post_init__()


DEFAULT_TINY = "4m"  # the backbone when neither a --base nor a --tiny size is given

# The options of `codevalue train` (and crossval, run, demo), generated from these fields: default and help are the
# field's unless given here for the command line, with its flag and its check (an int: the minimum). `crossval`
# reuses a fold's model only while the fields marked "recipe" (and the training mode) are unchanged.
TRAIN_OPTIONS: dict[str, dict[str, Any]] = {
    "num_train_epochs": {"flag": "--epochs", "default": 2.0, "check": "positive", "recipe": True},
    "learning_rate": {"flag": "--lr", "check": "positive", "recipe": True},
    "per_device_train_batch_size": {"flag": "--batch-size", "default": 16, "check": 1, "recipe": True,
                                    "help": "examples (or groups, with --group-size) per step"},
    "gradient_accumulation_steps": {"flag": "--grad-accum", "check": 1, "recipe": True},
    "max_length": {"check": 8, "recipe": True},
    "aux_weight": {"recipe": True},
    "group_size": {"check": 0, "recipe": True},
    "rank_weight": {"recipe": True},
    "rank_loss": {"choices": ("listwise", "pairwise"), "recipe": True},
    "center_targets": {"recipe": True},
    "read_checks": {"negatable": True, "recipe": True},
    "eval_fraction": {"check": "fraction", "recipe": True},
    "seed": {"default": 0, "recipe": True},
    "bf16": {},
    "activation_checkpointing": {"flag": "--gradient-checkpointing", "help": "recompute activations (less memory)"},
}
MODE_OPTIONS = {"train_last_layers": {"check": -1}, "lora_r": {"check": 0}}  # one of these, or --full


_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # torchrun, MPIs


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / `accelerate launch` / mpirun), 1 when none."""
    return max([int(os.environ.get(v) or 1) for v in _WORLD_SIZE_VARS])


def check_launch() -> None:
    """Refuse the one launch that silently trains alone: `accelerate launch --cpu --num_processes N` without
    `--mpirun_hostfile` starts ONE process (accelerate runs several CPU processes only through MPI), which
    would train with a 1/N global batch while the user believes N ranks share the data."""
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if asked_cpu and "MASTER_PORT" in os.environ and launched_processes() == 1:
        raise CodevalueError(
            "`accelerate launch --cpu --num_processes N` started a single process (accelerate needs "
            "--mpirun_hostfile for several CPU processes); use `accelerate launch --multi_gpu --num_processes N "
            "-m codevalue train ...` (DDP over gloo when there is no GPU) or `torchrun --nproc-per-node N -m "
            "codevalue train ...`")


def load_examples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of `codevalue targets` output (prompt, completion_scored, value_targets, label_class)."""
    records = []
    for line, rec in read_jsonl(path):
        for name in ("problem_id", "prompt", "completion_scored", "value_targets", "label_class"):
            if name not in rec:
                raise DataError(path, "missing field (run `codevalue targets` on `codevalue label` output)",
                                line=line, field=name)
        records.append(rec)
    if not records:
        raise DataError(path, "no examples")
    return records


def problem_pass_rates(records: list[dict]) -> dict[str, float]:
    """Each problem's pass rate: `problem_pass_rate` of `codevalue targets` output (over all its rollouts),
    else the mean outcome of the records given."""
    stored: dict[str, float] = {}
    outcomes: dict[str, list[float]] = {}
    for r in records:
        pid = str(r["problem_id"])
        if "problem_pass_rate" in r:
            stored[pid] = float(r["problem_pass_rate"])
        outcomes.setdefault(pid, []).append(float(ValueTargets(**r["value_targets"]).values[-1]))
    return {pid: stored.get(pid, sum(v) / len(v)) for pid, v in outcomes.items()}


def split_by_problem(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    problems = sorted({str(r["problem_id"]) for r in records})
    random.Random(seed).shuffle(problems)
    n_eval = round(len(problems) * eval_fraction) if len(problems) > 1 else 0
    held_out = set(problems[:n_eval])
    return ([r for r in records if str(r["problem_id"]) not in held_out],
            [r for r in records if str(r["problem_id"]) in held_out])


def tokenize_example(tokenizer, rec: dict, spec: InputSpec, center_on: float | None = None) -> dict[str, Any]:
    """input_ids plus a value label per position: -100 on prompt tokens, else the prefix target
    (with `center_on` = the problem's pass rate p: 0.5 + (target - p) / 2)."""
    e = encode(tokenizer, rec["prompt"], rec["completion_scored"], spec, suffix=input_suffix(spec, rec))
    targets = ValueTargets(**rec["value_targets"])
    values = [targets.at(end) for _, end in e.char_spans]
    values[-1] = float(targets.values[-1])  # the last token (EOS when appended) carries the outcome
    if center_on is not None:
        values = [0.5 + (v - center_on) / 2 for v in values]
    labels = [-100.0] * e.completion_start + values
    return {"input_ids": e.input_ids, "value_labels": labels, "class_labels": int(rec["label_class"])}


@dataclass
class ValueCollator:
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        group_index = None
        if "group" in features[0]:  # group-wise batches: flatten, remembering each row's group
            group_index = torch.tensor([g for g, f in enumerate(features) for _ in f["group"]])
            features = [x for f in features for x in f["group"]]
        width = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100.0)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(f["value_labels"])
        last = mask.sum(1) - 1  # right padding: index of each row's last real token
        batch = {"input_ids": ids, "attention_mask": mask, "value_labels": labels,
                 "class_labels": torch.tensor([f["class_labels"] for f in features]), "last_index": last}
        if group_index is not None:
            batch["group_index"] = group_index
        return batch


def make_groups(examples: list[dict], problem_ids: list[str], group_size: int, seed: int) -> list[dict]:
    """Deal each problem's rollouts into groups of up to `group_size` (shuffled, seeded)."""
    by_problem: dict[str, list[dict]] = {}
    for ex, pid in zip(examples, problem_ids, strict=True):
        by_problem.setdefault(pid, []).append(ex)
    rng = random.Random(seed)
    groups = []
    for pid in sorted(by_problem):
        items = by_problem[pid]
        rng.shuffle(items)
        groups += [{"group": items[i:i + group_size]} for i in range(0, len(items), group_size)]
    return groups


def _mean_over_mixed_groups(final_logits: torch.Tensor, passed: torch.Tensor, group_index: torch.Tensor,
                            group_loss) -> torch.Tensor:
    """Mean of group_loss(logits, passed) over the groups holding both outcomes (the others carry no
    ranking signal); zero, and still differentiable, when there is none."""
    losses = []
    for g in group_index.unique():
        sel = group_index == g
        y = passed[sel]
        if 0 < y.sum() < len(y):
            losses.append(group_loss(final_logits[sel].float(), y))
    return torch.stack(losses).mean() if losses else final_logits.sum() * 0.0


def listwise_loss(final_logits: torch.Tensor, passed: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Mean over groups with both outcomes of -mean_{passing i} log softmax_group(final_logits)_i: rank the
    passing rollouts of a problem above its failing ones, whatever the problem's difficulty."""
    return _mean_over_mixed_groups(final_logits, passed, group_index,
                                   lambda s, y: -torch.log_softmax(s, dim=0)[y].mean())


def pairwise_loss(final_logits: torch.Tensor, passed: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Mean over groups with both outcomes of the mean over (passing i, failing j) pairs of
    log(1 + exp(-(s_i - s_j))): each passing rollout should outscore each failing one of its problem."""
    return _mean_over_mixed_groups(final_logits, passed, group_index,
                                   lambda s, y: F.softplus(-(s[y][:, None] - s[~y][None, :])).mean())


def value_loss(logits: torch.Tensor, value_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
               last_index: torch.Tensor | None = None, aux_weight: float = 0.0) -> torch.Tensor:
    """Mean BCE over labelled tokens (+ aux_weight * CE of the verdict class at each row's last token)."""
    mask = value_labels != -100
    loss = F.binary_cross_entropy_with_logits(logits[..., 0][mask].float(), value_labels[mask])  # (N,)
    if aux_weight and logits.shape[-1] > 1:
        rows = torch.arange(logits.shape[0], device=logits.device)
        aux_logits = logits[rows, last_index, 1:].float()  # (B, n_classes)
        loss = loss + aux_weight * F.cross_entropy(aux_logits, class_labels)
    return loss


class ValueTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = value_loss(outputs.logits, inputs["value_labels"], inputs["class_labels"], inputs["last_index"],
                          self.args.aux_weight)
        if self.args.rank_weight and "group_index" in inputs:
            rows = torch.arange(outputs.logits.shape[0], device=outputs.logits.device)
            final = outputs.logits[rows, inputs["last_index"], 0]  # (B,) value logit at each row's last token
            passed = inputs["class_labels"] == 0
            rank = pairwise_loss if self.args.rank_loss == "pairwise" else listwise_loss
            loss = loss + self.args.rank_weight * rank(final, passed, inputs["group_index"])
        return (loss, outputs) if return_outputs else loss


def prepare_model(args: ValueTrainingArguments, base: str | None, tiny: str | None, num_labels: int):
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not base and is_deepspeed_zero3_enabled():  # transformers' weight init fails on shards of a new model
        raise CodevalueError("ZeRO-3 needs a saved backbone (--base), not --tiny; save a tiny one with "
                             "`codevalue pretrain` or train a tiny model without DeepSpeed")
    tokenizer = load_tokenizer(base) if base else load_tokenizer()
    if base:
        model = load_backbone(base, num_labels=num_labels)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = build_tiny_model(tiny or DEFAULT_TINY, tokenizer, num_labels=num_labels, seed=args.seed)
    if args.lora_r > 0:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.TOKEN_CLS, r=args.lora_r, lora_alpha=args.lora_alpha,
                            target_modules="all-linear", modules_to_save=["score"])
        model = get_peft_model(model, config)
    elif args.train_last_layers >= 0:
        freeze_all_but_last(model, args.train_last_layers)
    return model, tokenizer


@dataclass
class _WithStateDict:
    """A model saved with weights gathered from every rank (under ZeRO-3 each rank's module holds a shard)."""
    model: Any
    state_dict: dict

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.model.save_pretrained(path, state_dict=self.state_dict)


def train_value_model(examples: str | os.PathLike | list[dict], output_dir: str | os.PathLike,
                      args: ValueTrainingArguments, base: str | None = None,
                      tiny: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train on `codevalue targets` output and save a standard HF checkpoint (+ codevalue.json)."""
    if base and tiny:
        raise CodevalueError("give either a base model or a tiny size, not both")
    check_launch()
    records = examples if isinstance(examples, list) else load_examples(examples)
    train_recs, eval_recs = split_by_problem(records, args.eval_fraction, args.seed)
    spec = InputSpec(max_length=args.max_length, append_eos=args.append_eos,
                     aux_classes=list(FAILURE_CLASSES) if args.aux_weight > 0 else [], read_checks=args.read_checks)
    source = "<records>" if isinstance(examples, list) else examples
    for i, rec in enumerate(records, start=1):  # fail before training, naming the record
        input_suffix(spec, rec, source, line=i)
    model, tokenizer = prepare_model(args, base, tiny, num_labels=1 + len(spec.aux_classes))
    pass_rate = problem_pass_rates(records) if args.center_targets else {}
    train_ds = [tokenize_example(tokenizer, r, spec, pass_rate.get(str(r["problem_id"]))) for r in train_recs]
    eval_ds = [tokenize_example(tokenizer, r, spec, pass_rate.get(str(r["problem_id"]))) for r in eval_recs] or None
    train_tokens = sum(len(x["input_ids"]) for x in train_ds)
    if args.group_size > 0:
        train_ds = make_groups(train_ds, [str(r["problem_id"]) for r in train_recs], args.group_size, args.seed)
        if eval_ds:
            eval_ds = make_groups(eval_ds, [str(r["problem_id"]) for r in eval_recs], args.group_size, args.seed)
    if eval_ds is None:
        args.eval_strategy = "no"
    trainer = ValueTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                           data_collator=ValueCollator(tokenizer.pad_token_id))
    if trainer.is_deepspeed_enabled and args.lora_r > 0:
        raise CodevalueError("LoRA (--lora-r) is not supported with DeepSpeed; train the last blocks instead")
    start = time.monotonic()
    checkpoints = list(Path(args.output_dir).glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=bool(resume and checkpoints))
    seconds = time.monotonic() - start
    metrics = dict(result.metrics)
    if eval_ds:
        metrics.update(trainer.evaluate())
    # ZeRO-3 shards the weights over the ranks: every rank takes part in gathering them, rank 0 writes them.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_deepspeed_enabled else None
    if args.lora_r > 0:
        model = model.merge_and_unload()  # save a plain HF model: no peft needed to load it
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ds_numel: ZeRO-3's full size
    meta = {
        "backbone": base or f"tiny-{tiny or DEFAULT_TINY}",
        "trainable": f"lora r={args.lora_r}" if args.lora_r > 0 else (
            "all" if args.train_last_layers < 0 else f"head + last {args.train_last_layers} blocks"),
        "parameters": n_params,
        "train_problems": sorted({str(r["problem_id"]) for r in train_recs}),
        "eval_problems": sorted({str(r["problem_id"]) for r in eval_recs}),
        "train_examples": len(train_recs),
        "value_meaning": ("0.5 + (P(pass) - problem pass rate) / 2: relative, not a probability"
                          if args.center_targets else "P(pass | prefix)"),
        "train_tokens": train_tokens,
        "train_seconds": round(seconds, 2),
        "processes": args.world_size,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "optimizer_steps": result.global_step,
        "metrics": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()},
    }
    if trainer.is_world_process_zero():  # one writer, whatever the launcher
        saved = model if state_dict is None else _WithStateDict(model, state_dict)
        ValueModel(saved, tokenizer, spec).save_pretrained(output_dir, extra=meta)
    trainer.accelerator.wait_for_everyone()  # the checkpoint is complete when any rank returns
    return meta

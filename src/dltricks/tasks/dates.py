"""The ``dates`` task: human-readable dates -> ISO 8601 with a seq2seq model (data in :mod:`dltricks.data.dates`).

Batches are ``((src, tgt_in), tgt_out)``: source ids (B, S) right-padded with 0, ``tgt_in`` = ``<bos>`` + the
ISO string (teacher forcing), ``tgt_out`` = the ISO string + ``<eos>``; a model is called as
``model(src, tgt_in)`` and returns logits (B, T, V). The loss is token-level cross-entropy with padding
ignored; the training metrics are the per-sample mean token loss, ``accuracy`` = exact match of the whole
string and ``token_accuracy`` under teacher forcing.

Validation is the task's own evaluation (``Task.evaluate``, run by ``fit``): **greedy decoding**, the model's
own outputs fed back, scored by exact match of the whole ISO string, overall (``val_exact_match``, also
reported as ``val_accuracy``) and per format group (``val_em_<group>``), plus the teacher-forced
``val_loss``. Per sample, greedy exact match equals exact match under teacher forcing: if every arg-max
is right given the true prefix, greedy decoding reproduces that prefix step by step, and a right greedy
decode is a right prefix at every step (``tests/test_dates.py`` checks the equality on a trained model).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dltricks.data.dates import (_GROUPS, BOS_ID, EOS_ID, PAD_ID, SOURCE_VOCAB, TARGET_LEN, TARGET_VOCAB, DatesDataset,
                                 DatesLoader, decode_target, encode_source, sample_dates)
from dltricks.config import check_positive, field
from dltricks.errors import ConfigError
from dltricks.tasks.base import EvalContext, Task, register_task

__all__ = ["DatesOptions", "dates_loss", "dates_metrics", "make_dates_task", "dates_task", "evaluate_dates",
           "translate"]


@dataclass
class DatesOptions:
    """Options of the ``dates`` task (``--data-opt`` or a recipe's ``data`` section)."""

    train_size: int = field(50_000, help="generated training samples (training days only)", check=check_positive)
    val_size: int = field(2_000, help="generated validation samples (held-out days)", check=check_positive)
    data_seed: int = field(0, help="seed of the generated data (train.seed only changes the batch order)")
    groups: str = field(",".join(_GROUPS), help="comma-separated format groups to generate")


def _logits(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def dates_loss(output: Any, target: torch.Tensor, *, label_smoothing: float = 0.0, **_: Any) -> torch.Tensor:
    """Mean token cross-entropy over non-padding target positions; logits (B, T, V), target (B, T)."""
    logits = _logits(output).float()
    return F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD_ID, label_smoothing=label_smoothing)


def dates_metrics(output: Any, target: torch.Tensor) -> dict[str, float]:
    """Per-batch sums: ``loss`` (per-sample mean token CE), ``correct`` (whole string right), ``token_accuracy``
    (per-sample fraction of right tokens) and ``count`` (samples)."""
    logits = _logits(output).float()
    valid = target != PAD_ID  # (B, T)
    tokens = valid.sum(1).clamp(min=1)
    ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD_ID, reduction="none")  # (B, T)
    right = (logits.argmax(-1) == target) | ~valid
    return {
        "loss": (ce.sum(1) / tokens).sum().item(),
        "correct": right.all(1).sum().item(),
        "token_accuracy": (((right & valid).sum(1)) / tokens).sum().item(),
        "count": float(target.shape[0]),
    }


def make_dates_task(*, batch_size: int, eval_batch_size: int | None = None, seed: int = 0, train_size: int = 50_000,
                    val_size: int = 2_000, groups: Sequence[str] = _GROUPS, rank: int = 0, world_size: int = 1,
                    device: str | torch.device = "cpu", data_seed: int = 0, **_: Any) -> Task:
    """The dates task: ``train_size`` samples of training days, ``val_size`` of held-out days.

    ``data_seed`` fixes the generated data (the default is the same data for every run); ``seed`` only
    changes the batch order.
    """
    for name, value in (("train_size", train_size), ("val_size", val_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: got {value!r}, expected a positive integer")
    groups = tuple(groups.split(",")) if isinstance(groups, str) else tuple(groups)
    train = DatesDataset(sample_dates(train_size, held_out=False, seed=data_seed, groups=groups), name="dates/train")
    val = DatesDataset(sample_dates(val_size, held_out=True, seed=data_seed, groups=groups), name="dates/val")
    train_loader = DatesLoader(train, batch_size=batch_size, shuffle=True,
                               drop_last=len(train) // world_size >= batch_size, seed=seed, rank=rank,
                               world_size=world_size, device=device)
    val_loader = DatesLoader(val, batch_size=eval_batch_size or batch_size, seed=seed, rank=rank,
                             world_size=world_size, device=device)
    eval_batch = eval_batch_size or batch_size

    def evaluate(model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        # Each rank decodes its own shard of the validation days; under DDP the trainer's caller averages.
        result = evaluate_dates(model, val, batch_size=eval_batch, device=ctx.device,
                                indices=range(rank, len(val), world_size))
        metrics = {"exact_match": result["exact_match"], "accuracy": result["exact_match"], "loss": result["loss"]}
        metrics.update({f"em_{group}": value for group, value in result["per_group"].items()})
        return metrics

    return Task(
        name="dates", train_loader=train_loader, val_loader=val_loader, num_classes=len(TARGET_VOCAB), in_chans=None,
        loss=dates_loss, batch_metrics=dates_metrics, classes=TARGET_VOCAB, input_shape=(int(train.src.shape[1]),),
        evaluate=evaluate,
        extra={"source_vocab": SOURCE_VOCAB, "target_vocab": TARGET_VOCAB, "bos_id": BOS_ID, "eos_id": EOS_ID,
               "pad_id": PAD_ID, "max_target_len": TARGET_LEN - 1, "train_size": train_size, "val_size": val_size,
               # Constructor options a seq2seq model needs to match this task (besides num_classes):
               "model_kwargs": {"src_vocab_size": len(SOURCE_VOCAB), "pad_id": PAD_ID}},
    )


@register_task("dates", help="human-readable dates in 57 formats and 5 languages -> ISO 8601 (seq2seq, generated)",
               options=DatesOptions)
def dates_task(**options: Any) -> Task:
    """Human-readable dates in 57 formats and 5 languages -> ISO 8601 (seq2seq, generated)."""
    options.pop("data_dir", None)  # generated data: no files
    options.pop("augment", None)
    # The trainer's generic --subset / --val-subset options cap the generated split sizes.
    for option, size in (("subset", "train_size"), ("val_subset", "val_size")):
        cap = options.pop(option, None)
        if cap is not None:
            options[size] = min(int(cap), int(options.get(size, 50_000 if size == "train_size" else 2_000)))
    if "batch_size" not in options:
        raise ConfigError("batch_size is required to build a data task")
    return make_dates_task(**options)


@torch.no_grad()
def evaluate_dates(model: torch.nn.Module, dataset: DatesDataset, *, batch_size: int = 500,
                   device: torch.device | str | None = None, indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Greedy decoding of the samples of ``dataset`` (all, or those at ``indices``): exact match overall and
    per format group, the teacher-forced mean token loss, and up to 20 ``(text, predicted, gold)`` errors."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    right_by_group: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors: list[tuple[str, str, str]] = []
    loss_sum = 0.0
    order = torch.arange(len(dataset)) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        src = dataset.src[index]
        src = src[:, :int((src != PAD_ID).sum(1).max())].to(device)  # (B, S) trimmed to the longest input
        tgt = dataset.tgt[index].to(device)  # (B, T + 1): <bos> ISO <eos>
        loss_sum += dates_metrics(model(src, tgt[:, :-1]), tgt[:, 1:])["loss"]
        out = model.generate(src, max_len=TARGET_LEN - 1, bos_id=BOS_ID, eos_id=EOS_ID)
        tokens = (out[0] if isinstance(out, tuple) else out).cpu()
        for i, row in enumerate(tokens):
            k = int(index[i])
            pred, gold, group = decode_target(row), dataset.isos[k], dataset.groups[k]
            right_by_group[group][0] += pred == gold
            right_by_group[group][1] += 1
            if pred != gold and len(errors) < 20:
                errors.append((dataset.texts[k], pred, gold))
    model.train(was_training)
    right = sum(r for r, _ in right_by_group.values())
    total = sum(n for _, n in right_by_group.values())
    return {"exact_match": right / max(total, 1), "loss": loss_sum / max(total, 1),
            "per_group": {g: r / n for g, (r, n) in sorted(right_by_group.items())}, "errors": errors,
            "count": total}


@torch.no_grad()
def translate(model: torch.nn.Module, texts: Sequence[str]) -> tuple[list[str], torch.Tensor | None]:
    """Greedy ISO translations of ``texts`` by a seq2seq model with ``generate`` (and its attention, if any)."""
    was_training = model.training
    model.eval()
    src = encode_source(texts).to(next(model.parameters()).device)
    out = model.generate(src, max_len=TARGET_LEN - 1, bos_id=BOS_ID, eos_id=EOS_ID)
    tokens, attn = out if isinstance(out, tuple) else (out, None)
    model.train(was_training)
    return [decode_target(row) for row in tokens.cpu()], attn

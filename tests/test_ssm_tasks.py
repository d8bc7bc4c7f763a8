"""Long-sequence tasks: the definitions from the papers, deterministic loaders, masked metrics."""

from __future__ import annotations

import random

import pytest
import torch

from dltricks.data.sequence_tasks import (IGNORE_INDEX, ListOpsVocab, generate_listops, induction_heads_batch,
                                          listops_tokens, listops_tree, listops_value, psmnist_permutation,
                                          selective_copying_batch)
from dltricks.tasks.sequence import masked_token_loss, masked_token_metrics
from dltricks.tasks.base import build_task, list_tasks


def test_tasks_are_registered() -> None:
    assert {"selective_copying", "induction_heads", "smnist", "psmnist", "listops"} <= set(list_tasks())


def test_selective_copying_definition() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = selective_copying_batch(8, seq_len=4096, num_tokens=16, vocab_size=16, generator=g)
    assert x.shape == y.shape == (8, 4096)
    noise, marker = 14, 15
    for row_x, row_y in zip(x, y):
        context = row_x[:-16]
        data = context[context != noise]
        assert data.numel() == 16 and (data < 14).all()  # 16 data tokens from the 14 data symbols
        assert (row_x[-16:] == marker).all()
        assert torch.equal(row_y[-16:], data)  # recalled in order
        assert (row_y[:-16] == IGNORE_INDEX).all()
    # positions vary between sequences (selective, not plain, copying)
    first = [(row[:-16] != noise).nonzero()[0].item() for row in x]
    assert len(set(first)) > 1


def test_induction_heads_definition() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = induction_heads_batch(64, seq_len=256, vocab_size=16, generator=g)
    trigger = 15
    for row_x, row_y in zip(x, y):
        where = (row_x == trigger).nonzero().flatten()
        assert len(where) == 2 and where[1] == 255  # once inside, once at the end
        assert row_y[-1] == row_x[where[0] + 1] and row_y[-1] != trigger
        assert (row_y[:-1] == IGNORE_INDEX).all()


def test_synthetic_loader_is_deterministic_and_resumable() -> None:
    task = build_task("induction_heads", batch_size=4, seq_len=32, train_batches=5, seed=3)
    full = list(task.train_loader.iter_epoch(2))
    resumed = list(task.train_loader.iter_epoch(2, start_batch=3))
    assert len(full) == 5 and len(task.train_loader) == 5
    for (a, b), (c, d) in zip(full[3:], resumed):
        assert torch.equal(a, c) and torch.equal(b, d)
    other_epoch = next(task.train_loader.iter_epoch(3))[0]
    assert not torch.equal(other_epoch, full[0][0])  # fresh data every epoch
    val0, val1 = next(task.val_loader.iter_epoch(0))[0], next(task.val_loader.iter_epoch(5))[0]
    assert torch.equal(val0, val1)  # fixed validation set


def test_masked_metrics() -> None:
    logits = torch.zeros(2, 3, 4)
    logits[0, 2, 1] = logits[1, 2, 3] = 5.0
    target = torch.full((2, 3), IGNORE_INDEX)
    target[:, 2] = torch.tensor([1, 2])
    m = masked_token_metrics(logits, target)
    assert (m["correct"], m["count"]) == (1.0, 2.0)
    assert masked_token_loss(logits, target).item() > 0


def test_listops_semantics() -> None:
    assert listops_value(["[MAX", 4, 3, ["[MIN", 2, 3], 1, 0]) == 4
    assert listops_value(["[SM", 5, 6, 9]) == 0
    assert listops_value(["[MED", 1, 2, 3, 4]) == 2  # int(median) = int(2.5)
    assert listops_value(["[MED", 7, 1, 3]) == 3
    assert listops_tokens(["[MAX", 4, ["[MIN", 2, 3]]) == ["[MAX", "4", "[MIN", "2", "3", "]", "]"]


def test_listops_generator_follows_lra() -> None:
    rng = random.Random(0)
    tree, length = listops_tree(rng, max_depth=10, max_args=10)
    assert length == len(listops_tokens(tree))
    ids, labels = generate_listops(20, seed=0, min_length=30, max_length=120)
    assert ids.shape == (20, 119) and ((labels >= 0) & (labels < 10)).all()
    for row, label in zip(ids, labels):
        tokens = ListOpsVocab.decode(row.tolist())
        assert 30 < len(tokens) < 120
        first = int((row != ListOpsVocab.PAD).nonzero()[0])
        assert (row[first:] != ListOpsVocab.PAD).all()  # left padding: the expression ends the sequence
        assert _evaluate(tokens) == int(label)
    assert len({tuple(r.tolist()) for r in ids}) == 20  # distinct expressions


def _evaluate(tokens: list[str]) -> int:
    """An independent stack evaluator for prefix ListOps token lists."""
    stack: list[list] = []
    value = None
    for tok in tokens:
        if tok.startswith("["):
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            value = {"[MIN": min, "[MAX": max, "[SM": lambda v: sum(v) % 10,
                     "[MED": lambda v: int(sorted(v)[len(v) // 2] if len(v) % 2 else
                                           (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2)}[op](args)
            if stack:
                stack[-1].append(value)
        else:
            stack[-1].append(int(tok)) if stack else None
            value = int(tok) if not stack else value
    return value


def test_permuted_mnist_permutation_is_fixed() -> None:
    p = psmnist_permutation()
    assert sorted(p.tolist()) == list(range(784))
    assert torch.equal(p, psmnist_permutation())
    assert (p != torch.arange(784)).float().mean() > 0.95


@pytest.mark.parametrize("name", ["smnist", "psmnist"])
def test_sequential_mnist_task(name: str) -> None:
    task = build_task(name, batch_size=8, source="embedded", subset=16, val_subset=8)
    x, y = next(task.train_loader.iter_epoch(0))
    assert x.shape == (8, 784, 1) and y.shape == (8,)
    image_task = build_task("mnist-embedded", batch_size=8, subset=16, val_subset=8)
    img, y_img = next(image_task.train_loader.iter_epoch(0))
    assert torch.equal(y, y_img)
    seq = img.flatten(1)
    expected = seq[:, psmnist_permutation()] if name == "psmnist" else seq
    torch.testing.assert_close(x[..., 0], expected)


def test_sequential_mnist_from_files(shared_data) -> None:
    task = build_task("smnist", batch_size=4, data_dir=str(shared_data), subset=8, val_subset=4)
    x, _ = next(task.val_loader.iter_epoch(0))
    assert x.shape == (4, 784, 1)

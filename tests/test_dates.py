"""The dates -> ISO task: the generator, the split, the loaders, the loss and metrics, and a short training run."""

from __future__ import annotations

import datetime as dt
import random

import pytest
import torch

from dltricks.data.dates import (BOS_ID, EOS_ID, FORMATS, PAD_ID, SOURCE_VOCAB, TARGET_VOCAB, UNK_ID, DatesDataset,
                                 DatesLoader, _days, decode_target, encode_source, format_date, is_held_out,
                                 sample_dates)
from dltricks.tasks.dates import dates_loss, dates_metrics, make_dates_task
from dltricks.errors import ConfigError


def test_examples_from_the_issue():
    day = dt.date(1998, 5, 9)
    assert format_date(day, "{d} {M} {yyyy}", "fr") == "9 mai 1998"
    assert format_date(day, "{W} {d} {M} {yyyy}", "en") == "Saturday 9 May 1998"
    assert format_date(day, "{dd}/{mm}/{yy}", "num") == "09/05/98"
    assert format_date(day, "{W}, {d}. {M} {yyyy}", "de") == "Samstag, 9. Mai 1998"
    assert format_date(dt.date(2031, 3, 21), "the {do} of {M} {yyyy}", "en", "upper") == "THE 21ST OF MARCH 2031"
    assert format_date(dt.date(1973, 8, 1), "le {d1er} {M} {yyyy}", "fr") == "le 1er août 1973"
    assert format_date(day, "{W}, {d} de {M} de {yyyy}", "es") == "sábado, 9 de mayo de 1998"


def test_every_string_has_one_reading():
    """No two different dates may produce the same string (else 100 % would be impossible)."""
    rng = random.Random(0)
    days = rng.sample(_days(False) + _days(True), 1500) + [dt.date(2001, 1, 2), dt.date(2001, 2, 1)]
    seen: dict[str, str] = {}
    for day in days:
        for group, templates in FORMATS.items():
            for template in templates:
                for case in ("keep", "lower", "upper"):
                    text = format_date(day, template, group, case)
                    assert seen.setdefault(text, day.isoformat()) == day.isoformat(), text


def test_held_out_days_are_never_in_training():
    train, val = set(_days(False)), set(_days(True))
    assert not train & val and len(train) + len(val) == 36525
    assert 0.08 < len(val) / 36525 < 0.12
    samples = sample_dates(2000, held_out=True, seed=3)
    assert all(is_held_out(dt.date.fromisoformat(iso)) for _, iso, _ in samples)
    assert sample_dates(50, held_out=False, seed=3) == sample_dates(50, held_out=False, seed=3)
    assert sample_dates(50, held_out=False, seed=3) != sample_dates(50, held_out=False, seed=4)
    assert {g for _, _, g in samples} == set(FORMATS)


def test_vocabularies_cover_the_generator():
    samples = sample_dates(3000, held_out=False, seed=1)
    ids = encode_source([s for s, _, _ in samples])
    assert not (ids == UNK_ID).any()
    assert len(TARGET_VOCAB) == 14 and TARGET_VOCAB[BOS_ID] == "<bos>" and TARGET_VOCAB[EOS_ID] == "<eos>"
    assert SOURCE_VOCAB[PAD_ID] == "<pad>" and len(SOURCE_VOCAB) == len(set(SOURCE_VOCAB))


def test_loader_batches_and_resume():
    ds = DatesDataset(sample_dates(100, held_out=False), name="t")
    loader = DatesLoader(ds, batch_size=16, shuffle=True, seed=1)
    batches = list(loader.iter_epoch(2))
    assert len(batches) == len(loader) == 7
    (src, tgt_in), tgt_out = batches[0]
    assert tgt_in.shape == tgt_out.shape == (16, 11)
    assert (tgt_in[:, 0] == BOS_ID).all() and (tgt_out[:, -1] == EOS_ID).all()
    assert torch.equal(tgt_in[:, 1:], tgt_out[:, :-1])
    assert (src != PAD_ID).sum(1).max() == src.shape[1]  # cut to the batch's longest source
    resumed = list(loader.iter_epoch(2, start_batch=3))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches[3:], resumed))
    assert not torch.equal(list(loader.iter_epoch(3))[0][1], batches[0][1])
    # Two ranks see disjoint halves.
    r0 = DatesLoader(ds, batch_size=100, rank=0, world_size=2).order(0)
    r1 = DatesLoader(ds, batch_size=100, rank=1, world_size=2).order(0)
    assert len(set(r0.tolist()) | set(r1.tolist())) == 100


def test_loss_ignores_padding_and_metrics_count_exact_matches():
    target = torch.tensor([[5, 6, 2], [7, 2, PAD_ID]])
    logits = torch.full((2, 3, 14), -10.0)
    logits[0, 0, 5] = logits[0, 1, 6] = logits[0, 2, 2] = 10.0  # sample 0 exactly right
    logits[1, 0, 7] = 10.0
    logits[1, 1, 3] = 10.0  # sample 1: second token wrong
    logits[1, 2, :] = torch.randn(14) * 50  # garbage at the padded position must not matter
    m = dates_metrics(logits, target)
    assert m["correct"] == 1 and m["count"] == 2 and m["token_accuracy"] == pytest.approx(1.5)
    per_token = torch.nn.functional.cross_entropy(logits[1, :2], target[1, :2], reduction="none")
    assert dates_loss(logits[1:], target[1:]).item() == pytest.approx(per_token.mean().item(), rel=1e-5)


def test_task_registration_and_options():
    from dltricks.tasks.base import build_task

    task = build_task("dates", batch_size=8, train_size=64, val_size=16)
    assert task.num_classes == 14 and task.extra["model_kwargs"]["src_vocab_size"] == len(SOURCE_VOCAB)
    assert len(task.train_loader) == 8 and task.val_loader.num_samples == 16
    assert build_task("dates", batch_size=8, subset=32).train_loader.num_samples == 32
    with pytest.raises(ConfigError):
        make_dates_task(batch_size=8, groups=("klingon",))


def test_decode_target():
    assert decode_target([BOS_ID, 5, 6, 3, EOS_ID, 7]) == "12-"  # ids 4.. are the digits 0..9


@pytest.mark.slow
def test_short_training_reaches_high_exact_match():
    """A short run of the Luong-attention GRU (about 30 s on one core) must clear 80 % exact match on held-out
    days with greedy decoding; teacher-forced exact match equals greedy exact match."""
    from dltricks.experiments.attention import DatesConfig, evaluate_dates, train_dates

    cfg = DatesConfig(model="seq2seq_gru_general", steps=300, batch_size=64, lr=5e-3, warmup=30, train_size=20_000,
                      val_size=400, eval_every=0)
    model, result = train_dates(cfg, log=None)
    assert result["exact_match"] > 0.80, result
    task = make_dates_task(batch_size=400, train_size=10, val_size=400)
    model.eval()
    (src, tgt_in), tgt_out = next(task.val_loader.iter_epoch(0))
    with torch.no_grad():
        teacher_forced = dates_metrics(model(src, tgt_in), tgt_out)["correct"] / 400
    assert teacher_forced == pytest.approx(evaluate_dates(model, task.val_loader.dataset)["exact_match"])

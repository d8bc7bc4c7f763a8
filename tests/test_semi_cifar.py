"""The CIFAR-10 labelled-subset tasks (250 and 4,000 labels) and the learn.semi-supervised-cifar tip end to end on
a tiny setting: the draw, the arms, the same labelled batches for every arm, the unlabelled images used."""

from __future__ import annotations

import pytest
import torch

from dltricks.evidence import Context
from dltricks.experiments import transfer_tips, unlabelled_cifar_tips
from dltricks.train.unlabelled import split_labelled
from train_helpers import cifar10_available


needs_cifar = pytest.mark.skipif(not cifar10_available(), reason="CIFAR-10 is not in the data folders")
# The worker that decodes the CIFAR-10 zip once for the other tests (its cache serves these too).
pytestmark = pytest.mark.xdist_group("cifar10-zip")


@needs_cifar
@pytest.mark.parametrize("labels", [250, 4000])
def test_cifar10_labelled_tasks_are_class_balanced_fixed_and_disjoint_from_the_unlabelled_rest(labels) -> None:
    train, _ = transfer_tips._cifar10()
    labelled, rest = split_labelled(train, labels, seed=0)
    assert torch.bincount(labelled.labels, minlength=10).tolist() == [labels // 10] * 10
    assert len(rest) == 50_000 - labels
    again, _ = split_labelled(train, labels, seed=0)
    assert torch.equal(labelled.images, again.images) and torch.equal(labelled.labels, again.labels)
    # No labelled image is in the unlabelled set: compare the images themselves (as bytes).
    seen = {bytes(img.numpy()) for img in labelled.images}
    assert not any(bytes(img.numpy()) in seen for img in rest.images[: 5000])
    # The same draw as `--subset N --subset-seed 0`, so a CLI run trains on exactly these images.
    assert torch.equal(train.sample(labels, seed=0).images, labelled.images)


@needs_cifar
def test_semi_supervised_cifar_tip_runs_every_arm_on_the_same_labelled_images(tmp_path, monkeypatch) -> None:
    calls: list[tuple[str, int, str | None, int]] = []
    original = unlabelled_cifar_tips.train_arm

    def spy(labelled, val, spec, unlabelled, *, widths=(32, 64, 128)):
        method = None if unlabelled is None else unlabelled.config.method
        n_unlabelled = 0 if unlabelled is None else len(unlabelled.images)
        calls.append((labelled.name, len(labelled), method, n_unlabelled))
        assert spec.epochs == 1 and spec.batch_size == 16 and len(val) == 50
        if unlabelled is not None:
            assert unlabelled.config.ratio == 2
        return original(labelled, val, spec, unlabelled, widths=(8, 8, 8))

    monkeypatch.setattr(unlabelled_cifar_tips, "train_arm", spy)
    ctx = Context(tip_id="learn.semi-supervised-cifar", mode="full",
                  settings={"labels": 40, "epochs": 1, "batch_size": 16, "ratio": 2, "val_images": 50}, seeds=[0],
                  workdir=tmp_path)
    ev = unlabelled_cifar_tips.semi_supervised_cifar(ctx)
    assert set(ev.arms) == {"supervised only", "pseudo-label", "mean teacher", "FixMatch"}
    assert [c[2] for c in calls] == [None, "pseudo-label", "mean-teacher", "fixmatch"]
    assert {c[:2] for c in calls} == {(calls[0][0], 40)}  # one labelled set for every arm
    assert {c[3] for c in calls[1:]} == {50_000 - 40}
    for arm, metrics in ev.arms.items():
        assert 0.0 <= metrics["accuracy"][0] <= 1.0 and metrics["cpu_seconds"][0] > 0
    assert ev.budget["optimizer steps"] == 2  # 40 images, batch 16, the last partial batch dropped

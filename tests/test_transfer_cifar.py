"""The CIFAR-10 transfer tip (learn.transfer-cifar) end to end on a tiny setting: class splits, label fractions,
the three arms and the pre-trained stem kept as loaded."""

from __future__ import annotations

import pytest
import torch

from dltricks.evidence import Context
from dltricks.experiments import transfer_tips
from train_helpers import cifar10_available


needs_cifar = pytest.mark.skipif(not cifar10_available(), reason="CIFAR-10 is not in the data folders")
# The worker that decodes the CIFAR-10 zip once for the other tests (its cache serves these too).
pytestmark = pytest.mark.xdist_group("cifar10-zip")


@needs_cifar
def test_class_splits_and_label_fractions_are_disjoint_and_stratified() -> None:
    train, test = transfer_tips._cifar10()
    source = transfer_tips._classes(train, transfer_tips.SOURCE, name="s")
    target = transfer_tips._classes(train, transfer_tips.TARGET, name="t")
    assert len(source) == len(target) == 25_000 and source.classes == train.classes[:5]
    assert target.classes == train.classes[5:] and set(target.labels.tolist()) == set(range(5))
    one = transfer_tips._stratified(target, 0.01, seed=3, name="1%")
    assert len(one) == 250 and torch.bincount(one.labels).tolist() == [50] * 5
    again = transfer_tips._stratified(target, 0.01, seed=3, name="1%")
    assert torch.equal(one.images, again.images)  # the seed fixes the draw
    other = transfer_tips._stratified(target, 0.01, seed=4, name="1%")
    assert not torch.equal(one.images, other.images)


@needs_cifar
def test_transfer_tip_runs_three_arms_and_keeps_the_pretrained_stem(tmp_path, monkeypatch) -> None:
    probed: list[str] = []
    original = transfer_tips._fit

    def spy(model, train, val, spec, finetune=None):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        accuracy = original(model, train, val, spec, finetune)
        if finetune:  # linear probe: the loaded weights (whitening stem included) come out unchanged, the head not
            assert spec.data_init == 0
            after = model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before if k.endswith(("weight", "bias"))
                       and not k.startswith("head")), "a frozen weight changed"
            assert not torch.equal(before["head.weight"], after["head.weight"])
            probed.append(train.name)
        return accuracy

    monkeypatch.setattr(transfer_tips, "_fit", spy)
    monkeypatch.setattr(transfer_tips, "FRACTIONS", {"1%": (0.01, 1), "10%": (0.004, 1), "100%": (0.006, 1)})
    ctx = Context(tip_id="learn.transfer-cifar", mode="full", settings={"pretrain": 300, "pretrain_epochs": 1,
                                                                        "val_images": 100}, seeds=[0],
                  workdir=tmp_path)
    ev = transfer_tips.transfer_cifar(ctx)
    assert set(ev.arms) == {"fine-tune", "linear probe", "scratch", "pre-training (classes 0-4)"}
    for arm in ("fine-tune", "linear probe", "scratch"):
        assert set(ev.arms[arm]) == {"acc_1%", "acc_10%", "acc_100%"}
        assert all(0.0 <= v <= 1.0 for values in ev.arms[arm].values() for v in values)
    assert len(probed) == 3  # one linear probe per label fraction

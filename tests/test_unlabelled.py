"""Training with unlabelled images (dltricks.train.unlabelled): the loss terms against direct computations, the
labelled/unlabelled split, the fit option for every method, AdaBN, and the bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.data.base import ArrayDataset
from dltricks.data.mnist import load_mnist_embedded
from dltricks.errors import ArgumentError, ConfigError, DataError
from dltricks.layers.grad_reverse import dann_lambda
from dltricks.train import Unlabelled, fit, prepare
from dltricks.train.unlabelled import (UnlabelledObjective, adabn, coral_loss, split_labelled, strong_view,
                                       weak_view)

RECIPE = {"optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "train": {"steps": 4, "batch_size": 16,
                                                                          "device": "cpu", "eval_every": 100}}


class Net(nn.Module):
    """conv-BN-ReLU-pool, then a linear classifier: small enough for many short fits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (B, 10)


@pytest.fixture(scope="module")
def mnist() -> ArrayDataset:
    return load_mnist_embedded("train")


def _task(n: int = 64, model: nn.Module | None = None):
    torch.manual_seed(0)
    return prepare(model or Net(), "mnist-embedded", RECIPE, subset=n, val_subset=64)


# --- the loss terms ---------------------------------------------------------------------------------------

def test_coral_loss_matches_elementwise_definition() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 5, generator=g), torch.randn(9, 5, generator=g) * 2 + 1

    def cov(t: torch.Tensor) -> list[list[float]]:  # Deep CORAL Eq. 2, entry by entry
        x, (n, d) = t.tolist(), t.shape
        m = [sum(x[i][a] for i in range(n)) / n for a in range(d)]
        return [[sum((x[i][a] - m[a]) * (x[i][b] - m[b]) for i in range(n)) / (n - 1)
                 for b in range(d)] for a in range(d)]

    cs, ct = cov(s), cov(t)
    expected = sum((cs[a][b] - ct[a][b]) ** 2 for a in range(5) for b in range(5)) / (4 * 5 * 5)
    assert float(coral_loss(s, t)) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(coral_loss(s, s[torch.randperm(12)]), torch.tensor(0.0), atol=1e-6, rtol=0)


def _objective(data: ArrayDataset, task, model: nn.Module, **options) -> UnlabelledObjective:
    return UnlabelledObjective(Unlabelled(data, **options), model, task, batch_size=len(data), total_steps=10,
                               device=torch.device("cpu"))


def test_pseudo_label_term_is_masked_cross_entropy(mnist) -> None:
    model, task = _task()
    data = mnist.subset(slice(0, 32))
    x = (data.images.float() / 255 - torch.tensor(data.mean)) / torch.tensor(data.std)
    model.eval()  # BN statistics fixed, so that the term's own forward pass sees the same model
    with torch.no_grad():
        logits = model(x)
    probs = logits.softmax(1)
    for tau in (0.0, float(probs.max(1).values.median()), 1.0):
        term = _objective(data, task, model, method="pseudo-label", threshold=tau).loss(model, step=100)
        # The batch is the whole set in shuffled order, and the term is a mean over it: the order does not matter.
        mask = (probs.max(1).values >= tau).float()
        expected = (F.cross_entropy(logits, logits.argmax(1), reduction="none") * mask).mean()
        torch.testing.assert_close(term.detach(), expected, rtol=1e-5, atol=1e-6)
    assert float(term.detach()) == 0.0  # tau = 1: no prediction is that confident


def test_weight_ramps_up_as_exp_minus_5_one_minus_t_squared(mnist) -> None:
    model, task = _task()
    obj = UnlabelledObjective(Unlabelled(mnist.subset(slice(0, 8)), method="pseudo-label", weight=2.0, rampup=0.5),
                              model, task, batch_size=4, total_steps=100, device=torch.device("cpu"))
    assert obj.weight(0) == pytest.approx(2.0 * math.exp(-5.0))
    assert obj.weight(25) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    assert obj.weight(50) == obj.weight(99) == 2.0


def test_unlabelled_batches_cover_every_image_once_per_pass(mnist) -> None:
    model, task = _task()
    data = mnist.subset(slice(0, 10))
    obj = UnlabelledObjective(Unlabelled(data, method="pseudo-label"), model, task, batch_size=4, total_steps=10,
                              device=torch.device("cpu"))
    seen = torch.cat([obj._batch() for _ in range(5)])  # 20 images: two passes over the 10
    pixels = data.images.float().flatten(1) / 255
    for half in (seen[:10], seen[10:]):
        matches = (half.flatten(1)[:, None] == pixels[None]).all(-1)  # (10, 10)
        assert matches.any(1).all() and matches.any(0).all()


def test_views_keep_digits_in_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(6, 1, 28, 28)
    x[:, :, 8:20, 8:20] = torch.rand(6, 1, 12, 12, generator=g)
    weak = weak_view(x, g)
    # A shift of at most 2 pixels moves a digit that keeps 4 pixels from the border without cutting it.
    torch.testing.assert_close(weak.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert not torch.equal(weak, x)
    strong = strong_view(x, g)
    assert strong.shape == x.shape and strong.min() >= 0 and strong.max() <= 1


# --- the split -----------------------------------------------------------------------------------------------

def test_split_labelled_is_class_balanced_disjoint_and_the_tasks_subset(mnist) -> None:
    labelled, unlabelled = split_labelled(mnist, 100, seed=0)
    counts = torch.bincount(labelled.labels, minlength=10)
    share = torch.bincount(mnist.labels, minlength=10) * 100 / len(mnist)  # each class keeps its share, rounded
    assert counts.sum() == 100 and ((counts - share).abs() < 1).all()
    assert len(labelled) + len(unlabelled) == len(mnist) == 8000
    rows = torch.cat([labelled.images, unlabelled.images]).flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == torch.unique(mnist.images.flatten(1), dim=0).shape[0]
    _, task = prepare(Net(), "mnist-embedded", RECIPE, subset=100, subset_seed=0)
    torch.testing.assert_close(task.train_loader.dataset.images, labelled.images)


# --- fit ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["pseudo-label", "fixmatch", "mean-teacher", "coral", "dann"])
def test_fit_trains_with_each_method(mnist, method) -> None:
    model, task = _task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlabelled = Unlabelled(mnist.subset(slice(0, 200)), method=method, threshold=0.0, ratio=2)
    result = fit(model, task, RECIPE, unlabelled=unlabelled)
    assert result.final["steps"] == 4 and math.isfinite(result.final["train_loss"])
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])
    assert not model.head._forward_pre_hooks and not model.head._forward_hooks  # hooks removed after fit


def test_unlabelled_term_changes_the_trajectory(mnist) -> None:
    weights = []
    for unlabelled in (None, Unlabelled(mnist.subset(slice(0, 200)), method="fixmatch", threshold=0.0)):
        model, task = _task()
        weights.append(fit(model, task, RECIPE, unlabelled=unlabelled).model.head.weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])


def test_dann_reverses_the_domain_gradient_into_the_features(mnist) -> None:
    model, task = _task()
    obj = _objective(mnist.subset(slice(0, 16)), task, model, method="dann")
    x, _ = next(iter(task.train_loader.iter_epoch(0)))
    model(x)  # the labelled forward pass: the hook keeps the source features
    source = obj.features
    assert source.shape == (x.shape[0], 4 * 7 * 7)
    term = obj.loss(model, step=5)
    target = obj.features
    reversed_grad, disc_grad = torch.autograd.grad(term, [source, obj.discriminator[0].weight], retain_graph=True)
    # Without the reversal: the same domain loss, its plain gradient with respect to the source features.
    domain = torch.cat([torch.zeros(len(source)), torch.ones(len(target))])
    plain = F.binary_cross_entropy_with_logits(obj.discriminator(torch.cat([source, target])).squeeze(1), domain)
    plain_grad = torch.autograd.grad(plain, source)[0]
    torch.testing.assert_close(reversed_grad, -dann_lambda(5 / 10) * plain_grad)
    assert disc_grad.abs().sum() > 0  # the domain classifier itself learns to separate the domains
    assert obj.parameters() == list(obj.discriminator.parameters())
    obj.close()


def test_mean_teacher_follows_the_student(mnist) -> None:
    model, task = _task()
    obj = _objective(mnist.subset(slice(0, 16)), task, model, method="mean-teacher", teacher_decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    obj.after_step(model)
    assert obj.teacher.num_updates == 1
    assert not torch.equal(obj.teacher.module.head.weight, model.head.weight)


# --- AdaBN ---------------------------------------------------------------------------------------------------

def test_adabn_sets_batchnorm_statistics_to_the_target_images(mnist) -> None:
    torch.manual_seed(0)
    model = Net()
    target = mnist.subset(slice(0, 50))
    assert adabn(model, target, batch_size=50) == 1
    x = (target.images.float() / 255 - torch.tensor(target.mean)) / torch.tensor(target.std)
    conv = model.features[0](x)  # (50, 4, 28, 28)
    bn = model.features[1]
    torch.testing.assert_close(bn.running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, conv.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="no BatchNorm layer"):
        adabn(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), target)


# --- bad inputs ----------------------------------------------------------------------------------------------

def test_unlabelled_set_with_another_class_set_is_refused(mnist) -> None:
    model, task = _task()
    letters = ArrayDataset(mnist.images[:20], mnist.labels[:20] % 3, ("a", "b", "c"), "letters", mnist.mean,
                           mnist.std)
    with pytest.raises(DataError, match=r"letters is labelled with classes \[a, b, c\].*has \[0, 1, 2, 3, 4, \.\.\.\]"):
        fit(model, task, RECIPE, unlabelled=Unlabelled(letters))
    small = ArrayDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64),
                         mnist.classes, "tiny", mnist.mean, mnist.std)
    with pytest.raises(DataError, match=r"shape \(1, 8, 8\).*\(1, 28, 28\)"):
        fit(model, task, RECIPE, unlabelled=Unlabelled(small))


def test_bad_unlabelled_options_name_the_key(mnist) -> None:
    data = mnist.subset(slice(0, 4))
    with pytest.raises(ConfigError, match="unlabelled.treshold"):
        Unlabelled(data, treshold=0.9)
    with pytest.raises(ConfigError, match="unlabelled.method"):
        Unlabelled(data, method="co-training")
    with pytest.raises(ConfigError, match="unlabelled.threshold"):
        Unlabelled(data, threshold=1.5)
    with pytest.raises(DataError, match="uint8"):
        Unlabelled(torch.zeros(2, 1, 28, 28))
    model, task = _task()
    with pytest.raises(ArgumentError, match="unlabelled must be"):
        fit(model, task, RECIPE, unlabelled=data)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        fit(model, task, RECIPE, unlabelled=Unlabelled(data), run_dir="unused", resume=True)


# --- dltricks train --unlabelled ----------------------------------------------------------------------------

def _letters_folder(root) -> str:
    """A 28x28 grey image folder whose classes are letters, not digits."""
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                path = root / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8), "L").save(path)
    return str(root)


@pytest.mark.slow
def test_train_cli_with_unlabelled_images(tmp_path, capsys) -> None:
    import json

    from dltricks.cli import main

    out = tmp_path / "run"
    assert main(["train", "mlp", "--data", "mnist-embedded", "--subset", "100", "--val-subset", "100",
                 "--unlabelled", "mean-teacher", "--unlabelled-opt", "ratio=2", "--set", "train.steps=3",
                 "--set", "train.batch_size=16", "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["unlabelled"]["method"] == "mean-teacher" and meta["unlabelled"]["images"] == 7900
    assert meta["unlabelled"]["ratio"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--unlabelled-data", "imagefolder", "--unlabelled-dir", "LETTERS"], "labelled with classes [a, b]"),
    (["--unlabelled-data", "sklearn-digits", "--unlabelled-opt", "weight=-1"], "unlabelled.weight"),
    (["--unlabelled-opt", "method=dann"], "give the method as --unlabelled METHOD"),
])
def test_train_cli_bad_unlabelled_inputs_exit_2(tmp_path, capsys, extra, message) -> None:
    from dltricks.cli import main

    letters = _letters_folder(tmp_path / "letters")
    argv = ["train", "mlp", "--data", "mnist-embedded", "--subset", "100", "--unlabelled", "fixmatch",
            *[letters if x == "LETTERS" else x for x in extra], "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("dltricks train: error:")
    assert not (tmp_path / "run").exists()  # refused before anything was written


# --- the tips -------------------------------------------------------------------------------------------------

TINY = {"learn.semi-supervised": {"labels": 20, "steps": 3, "batch_size": 8, "ratio": 1, "width": 4, "val_subset": 40},
        "learn.domain-adaptation": {"source": 100, "steps": 3, "batch_size": 16, "width": 4, "val_subset": 40}}


def test_the_tips_replace_their_planned_entries() -> None:
    from dltricks.tips.catalog import get_catalog
    from dltricks.tips.planned import PLANNED

    assert set(TINY) <= {t.id for t in get_catalog() if t.implemented}
    assert not set(TINY) & {t.id for t in PLANNED}


@pytest.mark.slow
@pytest.mark.parametrize("tip_id", sorted(TINY))
def test_tip_runs_with_tiny_settings(tip_id, tmp_path) -> None:
    from dltricks.evidence import AllOf
    from dltricks.tips.catalog import get_catalog
    from dltricks.tips.engine import run_tip

    tip = next(t for t in get_catalog() if t.id == tip_id)
    assert tip.settings("quick") != tip.settings("full")
    result, _ = run_tip(tip, mode="quick", seeds=1, cache_dir=tmp_path,
                        settings={**tip.settings("quick"), **TINY[tip_id]})
    assert not result.error, result.error
    assert result.verdict in {"inconclusive", "invalid setup"}  # one seed never gives a direction
    assert isinstance(tip.rule, AllOf)
    for leaf in tip.rule.rules:  # every arm the rule reads was measured, as a fraction
        for arm in (leaf.treatment, leaf.control):
            values = result.evidence["arms"][arm][leaf.metric]
            assert len(values) == 1 and all(0.0 <= v <= 1.0 for v in values), (arm, values)


# --- the MNIST-M-style target ------------------------------------------------------------------------------

def test_mnist_m_grey_is_the_absolute_difference_of_patch_and_digit(mnist, monkeypatch) -> None:
    import numpy as np

    import dltricks.data.shift as shift

    digits = mnist.subset(slice(0, 6))
    g = torch.Generator().manual_seed(1)
    patches = torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)
    calls = []

    def fake_crops(n, *, data_dir=None, image_size=28, seed=0):  # stands in for the CIFAR-10 zip
        calls.append((n, image_size, seed))
        return ArrayDataset(patches, torch.zeros(n, dtype=torch.int64), ("x",), "patches", (0.5,), (0.5,))

    monkeypatch.setattr(shift, "cifar_grey_crops", fake_crops)
    blended = shift.mnist_m_grey(digits, seed=3)
    expected = np.abs(patches.numpy().astype(np.int32) - digits.images.numpy().astype(np.int32)).astype(np.uint8)
    assert np.array_equal(blended.images.numpy(), expected) and calls == [(6, 28, 3)]
    assert torch.equal(blended.labels, digits.labels) and blended.classes == digits.classes
    assert blended.mean == mnist.mean  # normalised as the source is
    rgb = ArrayDataset(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64),
                       mnist.classes, "rgb", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(DataError, match="grey digits"):
        shift.mnist_m_grey(rgb)

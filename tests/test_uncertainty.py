"""Uncertainty: temperature scaling, MC dropout, deep ensembles, selective prediction, OOD AUROC, gradient
reversal, and the shifted data sets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError, DataError
from dltricks.layers.grad_reverse import GradientReversal, dann_lambda, grad_reverse
from dltricks.measure.calibration import negative_log_likelihood
from dltricks.measure.uncertainty import (accuracy_coverage, auroc, check_ensemble, ensemble_probs, fit_temperature,
                                          mc_dropout_probs, predict_probs, uncertainty_metrics)


def _batches(n: int = 64, k: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return [(x[:32], y[:32]), (x[32:], y[32:])]


def _net(drop: float = 0.0, k: int = 5, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(drop), nn.Linear(width, k))


# --- gradient reversal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0])
def test_gradient_reversal_forward_identity_backward_negated(lambd: float) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, lambd)
    torch.testing.assert_close(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -lambd * w)
    layer = GradientReversal(lambd)
    x2 = x.detach().clone().requires_grad_()
    (layer(x2) * w).sum().backward()
    torch.testing.assert_close(x2.grad, -lambd * w)


def test_dann_lambda_schedule() -> None:
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + np.exp(-10)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0


# --- MC dropout and ensembles ---------------------------------------------------------------------------

def test_mc_dropout_with_p0_equals_deterministic_model() -> None:
    model, batches = _net(drop=0.0).eval(), _batches()
    mc, labels = mc_dropout_probs(model, batches, samples=4)
    det, labels2 = predict_probs(model, batches)
    torch.testing.assert_close(mc, det)
    assert torch.equal(labels, labels2)


def test_mc_dropout_samples_differ_and_keep_batchnorm_in_eval() -> None:
    model = _net(drop=0.5)
    model.train()
    batches = _batches()
    running = model[1].running_mean.clone()
    one, _ = mc_dropout_probs(model, batches, samples=1, seed=0)
    other, _ = mc_dropout_probs(model, batches, samples=1, seed=1)
    assert not torch.allclose(one, other)
    assert torch.equal(model[1].running_mean, running)  # BN statistics untouched: BN ran in eval mode
    assert model.training  # mode restored
    torch.testing.assert_close(mc_dropout_probs(model, batches, samples=3, seed=7)[0],
                               mc_dropout_probs(model, batches, samples=3, seed=7)[0])


def test_mc_dropout_without_dropout_layers_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(8, 5))
    with pytest.raises(ConfigError, match="dropout"):
        mc_dropout_probs(model, _batches())


def test_ensemble_of_identical_members_equals_one_member() -> None:
    model, batches = _net().eval(), _batches()
    single, _ = predict_probs(model, batches)
    ens, _ = ensemble_probs([model, copy.deepcopy(model), copy.deepcopy(model)], batches)
    torch.testing.assert_close(ens, single)


def test_ensemble_members_must_share_architecture_and_classes() -> None:
    with pytest.raises(ConfigError, match="member 2"):
        check_ensemble([_net(k=5), _net(k=3)])
    with pytest.raises(ConfigError, match="member 2"):
        check_ensemble([_net(), nn.Linear(8, 5)])


# --- temperature scaling --------------------------------------------------------------------------------

def test_temperature_recovers_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = 2 * torch.randn(4000, 10, generator=g)
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).flatten()
    t = fit_temperature(true_logits * 3.0, labels)  # over-confident by a factor 3
    assert t == pytest.approx(3.0, rel=0.1)


@pytest.fixture(scope="module")
def trained_run() -> tuple[nn.Module, object]:
    from dltricks.train import fit, load_recipe, prepare

    recipe = load_recipe("quick", ["train.epochs=3", "train.label_smoothing=0.0", "augment.crop_padding=0"])
    model, task = prepare("mlp", "mnist-embedded", recipe, model_kwargs={"drop_rate": 0.1}, subset=3000)
    return fit(model, task, recipe).model, task


@pytest.mark.slow
def test_temperature_scaling_keeps_accuracy_and_lowers_nll_on_a_trained_run(trained_run) -> None:
    from dltricks.measure.calibration import collect_logits

    model, task = trained_run
    logits, labels = collect_logits(model, task.val_loader)
    half = len(labels) // 2
    t = fit_temperature(logits[:half], labels[:half])
    assert t != 1.0
    for part in (slice(0, half), slice(half, None)):
        scaled = logits[part] / t
        assert torch.equal(scaled.argmax(1), logits[part].argmax(1))
        assert negative_log_likelihood(scaled, labels[part]) <= negative_log_likelihood(logits[part], labels[part])


@pytest.mark.slow
def test_mc_dropout_on_a_trained_run_is_a_distribution(trained_run) -> None:
    model, task = trained_run
    probs, labels = mc_dropout_probs(model, task.val_loader, samples=5)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    metrics = uncertainty_metrics(probs, labels, ood={"noise": F.softmax(torch.zeros(10, 10), 1)})
    assert metrics["accuracy"] > 0.8
    assert metrics["ood_auroc_noise"] > 0.9


# --- metrics ---------------------------------------------------------------------------------------------

def test_auroc_matches_pairwise_definition() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 5, (40,), generator=g).float(), torch.randint(0, 5, (30,), generator=g).float()
    pairs = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    assert auroc(pos, neg) == pytest.approx(float(pairs.mean()))
    assert auroc(torch.ones(3), torch.zeros(3)) == 1.0


def test_accuracy_coverage_ends_at_full_accuracy() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 0])
    coverage, accuracy = accuracy_coverage(probs, labels)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 2 / 3, 0.5])
    metrics = uncertainty_metrics(probs, labels)
    assert metrics["accuracy"] == 0.5 and metrics["aurc"] == pytest.approx(np.mean([0, 0, 1 / 3, 0.5]))


# --- shifted data ----------------------------------------------------------------------------------------

def test_sklearn_digits_in_mnist_frame_and_target_split() -> None:
    from dltricks.data.shift import load_sklearn_digits, split_target

    digits = load_sklearn_digits()
    assert tuple(digits.images.shape) == (1797, 1, 28, 28) and digits.num_classes == 10
    assert digits.images[:, :, :4].max() == 0 and digits.images.max() > 200  # padded border, full range
    adapt, test = split_target(digits, test_fraction=0.5, seed=0)
    assert len(adapt) + len(test) == 1797
    assert torch.bincount(test.labels).min() >= 85  # every class in the test half


# --- dltricks eval --uncertainty ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[str, str]:
    from dltricks.cli import main

    root = tmp_path_factory.mktemp("runs")
    for name, model in (("a", "mlp"), ("b", "small_cnn")):
        assert main(["train", model, "--data", "mnist-embedded", "--epochs", "1", "--subset", "600",
                     "--model-opt", "drop_rate=0.1", "--out", str(root / name), "--no-progress"]) == 0
    return str(root / "a"), str(root / "b")


@pytest.mark.slow
def test_eval_uncertainty_cli(two_runs, capsys, tmp_path) -> None:
    import json

    from dltricks.cli import main

    a, b = two_runs
    assert main(["eval", a, "--uncertainty", "temperature", "--ood", "digits", "--json",
                 "--plots", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    soft, temp = report["metrics"]["softmax"], report["metrics"]["temperature"]
    assert soft["accuracy"] == temp["accuracy"] and 0.0 <= temp["ood_auroc_digits"] <= 1.0
    assert (tmp_path / "accuracy-coverage.png").is_file() and (tmp_path / "reliability-temperature.png").is_file()
    assert main(["eval", a, "--uncertainty", "ensemble", "--members", a, "--ood", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["ensemble"]["nll"] == pytest.approx(report["metrics"]["softmax"]["nll"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--uncertainty", "ensemble"], "needs --members"),
    (["--uncertainty", "ensemble", "--members", "B"], "share one architecture"),
    (["--uncertainty", "softmax", "--members", "B"], "--members is for"),
])
def test_eval_uncertainty_bad_inputs_exit_2(two_runs, capsys, argv, message) -> None:
    from dltricks.cli import main

    a, b = two_runs
    assert main(["eval", a, "--ood", *[b if x == "B" else x for x in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("dltricks eval: error:")


@pytest.fixture(scope="module")
def odd_runs(tmp_path_factory) -> tuple[str, str]:
    """A run without dropout layers (speedrun_cnn) and an MLP with dropout trained on two letter classes."""
    from PIL import Image

    from dltricks.cli import main

    root = tmp_path_factory.mktemp("odd")
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                (root / "letters" / split / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8), "L").save(root / "letters" / split / c /
                                                                                     f"{i}.png")
    assert main(["train", "speedrun_cnn", "--data", "mnist-embedded", "--epochs", "1", "--subset", "200",
                 "--val-subset", "100", "--out", str(root / "plain"), "--no-progress"]) == 0
    assert main(["train", "mlp", "--data", "imagefolder", "--data-dir", str(root / "letters"), "--epochs", "1",
                 "--model-opt", "drop_rate=0.1", "--out", str(root / "letters-run"), "--no-progress"]) == 0
    return str(root / "plain"), str(root / "letters-run")


@pytest.mark.slow
def test_eval_uncertainty_model_and_member_mismatch_exit_2(two_runs, odd_runs, capsys) -> None:
    from dltricks.cli import main

    a, _ = two_runs
    plain, letters = odd_runs
    for argv, message in ((["eval", plain, "--uncertainty", "mc-dropout"], "has no dropout layers"),
                          (["eval", a, "--uncertainty", "ensemble", "--members", letters], "but the first member has")):
        capsys.readouterr()
        assert main([*argv, "--ood"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error" in line]  # an info line may come first
        assert len(errors) == 1 and message in err[-1] and err[-1].startswith("dltricks eval: error:"), err


def test_mnist_rgb_is_the_digits_padded_on_three_channels() -> None:
    from dltricks.data.mnist import load_mnist_embedded
    from dltricks.data.shift import mnist_rgb

    ood = mnist_rgb(50)
    digits = load_mnist_embedded("val").images[:50]
    assert ood.images.shape == (50, 3, 32, 32) and ood.images.dtype == torch.uint8
    assert torch.equal(ood.images[:, :, 2:30, 2:30], digits.expand(-1, 3, -1, -1))  # each channel the digit
    border = ood.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.sum()) == 0  # a black 2 px frame
    with pytest.raises(DataError, match="cannot take"):
        mnist_rgb(0)


@pytest.mark.slow
def test_a_cifar_shaped_run_gets_mnist_as_its_ood_set(tmp_path, capsys) -> None:
    """A model of 3x32x32 inputs is scored against MNIST digits by default; the 28x28 grey sets are refused."""
    import json

    from PIL import Image

    from dltricks.cli import main

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("sky", "sea"):
            (tmp_path / "rgb" / split / c).mkdir(parents=True)
            for i in range(6):
                colour = (40, 90, 200) if c == "sky" else (20, 140, 120)
                pixels = np.clip(rng.normal(colour, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(tmp_path / "rgb" / split / c / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "small_cnn", "--data", "imagefolder", "--data-dir", str(tmp_path / "rgb"), "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--uncertainty", "softmax", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ood_sets"] == ["mnist"] and 0.0 <= report["metrics"]["softmax"]["ood_auroc_mnist"] <= 1.0
    assert main(["eval", str(run), "--uncertainty", "softmax", "--ood", "digits"]) == 2
    assert "--ood digits holds 1x28x28 images" in capsys.readouterr().err

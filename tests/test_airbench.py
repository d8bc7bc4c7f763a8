"""The CIFAR-10 speedrun parts: patch whitening, airbench_cifar, Lookahead, flip TTA, data-dependent init, the
BN-shift learning-rate multiplier and the cifar10-speedrun recipe on the real CIFAR-10 JPEG zip."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from dltricks.errors import ConfigError
from dltricks.layers.conv_pool import ConvPoolGroup
from dltricks.layers.whitening import PatchWhitening, patch_statistics, whitening_weights
from dltricks.models import create_model
from dltricks.train import fit, load_recipe, prepare
from dltricks.train.lookahead import Lookahead
from dltricks.train.optim import build_optimizer, param_groups
from dltricks.train.trainer import evaluate

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_whitened_patches_have_identity_covariance() -> None:
    torch.manual_seed(0)
    # Correlated, shifted images: neighbouring pixels and channels share a smooth component.
    base = torch.randn(64, 1, 12, 12)
    x = 0.8 * base.repeat(1, 3, 1, 1) + 0.5 * torch.randn(64, 3, 12, 12) + torch.tensor([0.3, -0.2, 0.1])[:, None,
                                                                                                          None]
    x = x + 0.7 * torch.roll(x, 1, dims=-1)
    layer = PatchWhitening(3, kernel_size=2, eps=1e-9)
    layer.init_from_data(x)
    with torch.no_grad():
        z = layer(x.double().float())  # (B, 24, 11, 11)
    d = layer.dim
    first = z[:, :d].permute(0, 2, 3, 1).reshape(-1, d).double()  # (B*L, 12): the whitened patches
    torch.testing.assert_close(first.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-4, rtol=0)
    cov = first.T @ first / first.shape[0]
    torch.testing.assert_close(cov, torch.eye(d, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(z[:, d:], -z[:, :d])  # the negated copy
    assert not layer.weight.requires_grad and layer.bias.requires_grad


def test_patch_statistics_match_a_loop_over_patches() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 2, 4, 5)
    patches = torch.stack([x[b, :, i:i + 2, j:j + 2].reshape(-1) for b in range(2) for i in range(3)
                           for j in range(4)]).double()  # (24, 8), conv-weight order (C, kh, kw)
    mean, cov = patch_statistics(x, 2)
    torch.testing.assert_close(mean, patches.mean(0))
    torch.testing.assert_close(cov, torch.cov(patches.T, correction=0))
    weight, bias = whitening_weights(mean, cov, eps=0.0)
    torch.testing.assert_close(weight @ cov @ weight.T, torch.eye(8, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(bias, -weight @ mean)


def test_airbench_parameter_count_matches_its_layer_list() -> None:
    model = create_model("airbench_cifar")
    # airbench94's layers: whitening conv 24x3x2x2 + 24 bias; per group two 3x3 convs (no bias) and two BNs of
    # weight + bias; a 256 -> 10 linear layer without bias.
    convs = [(24, 64), (64, 64), (64, 256), (256, 256), (256, 256), (256, 256)]
    expected = 24 * 12 + 24 + sum(i * o * 9 for i, o in convs) + 2 * 2 * (64 + 256 + 256) + 256 * 10
    assert sum(p.numel() for p in model.parameters()) == expected == 1_972_792
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem.weight"} | {f"stages.{g}.norm{k}.weight" for g in range(3) for k in (1, 2)}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 9x9"):
        model(torch.randn(1, 3, 8, 8))


def test_conv_pool_group_starts_as_identity_on_its_first_channels() -> None:
    torch.manual_seed(0)
    group = ConvPoolGroup(4, 8, norm_layer=lambda c: nn.Identity(), act_layer=nn.Identity)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        first = group.pool(group.conv1(x))  # (2, 8, 3, 3)
        out = group(x)
    torch.testing.assert_close(first[:, :4], nn.functional.max_pool2d(x, 2))  # dirac filters pass x through
    torch.testing.assert_close(out, first)  # 8 -> 8: every filter of conv2 is an identity
    assert out.shape == (2, 8, 3, 3)


def test_lookahead_matches_a_hand_computed_update() -> None:
    # f(p) = p^2 / 2, so grad = p; SGD lr 0.1 makes p <- 0.9 p. k = 2, alpha = 0.5:
    # steps 1-2: p = 0.9, 0.81 -> slow = 1 + 0.5 (0.81 - 1) = 0.905, p = 0.905
    # steps 3-4: p = 0.8145, 0.73305 -> slow = 0.905 + 0.5 (0.73305 - 0.905) = 0.819025, p = 0.819025
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=2, alpha=0.5)
    seen = []
    for _ in range(4):
        opt.zero_grad()
        (p.square().sum() / 2).backward()
        opt.step()
        seen.append(p.item())
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64),
                               torch.tensor([0.9, 0.905, 0.8145, 0.819025], dtype=torch.float64))


def test_lookahead_state_dict_resumes_the_same_trajectory() -> None:
    def run(opt: torch.optim.Optimizer, p: nn.Parameter, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            (p.square().sum() / 2).backward()
            opt.step()

    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1, momentum=0.9), k=3, alpha=0.5)
    run(opt, p, 4)
    state, weights = copy.deepcopy(opt.state_dict()), p.detach().clone()  # as a checkpoint file holds it
    run(opt, p, 4)
    q = nn.Parameter(weights)
    resumed = Lookahead(torch.optim.SGD([q], lr=0.1, momentum=0.9), k=3, alpha=0.5)
    resumed.load_state_dict(state)
    run(resumed, q, 4)
    torch.testing.assert_close(q, p)


def test_recipe_keys_build_lookahead_and_bias_lr_multiplier() -> None:
    model = create_model("airbench_cifar", widths=(8, 8, 8))
    recipe = load_recipe("cifar10-speedrun")
    opt = build_optimizer(model, recipe.optim)
    assert isinstance(opt, Lookahead) and opt.k == 5 and opt.alpha == 0.5
    groups = param_groups(model, weight_decay=1e-3, skip_norm_bias=True, no_decay_lr_mult=64.0)
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(no_decay) == 1 and no_decay[0]["lr_mult"] == 64.0
    assert all("lr_mult" not in g for g in groups if g["weight_decay"] > 0)
    with pytest.raises(ConfigError, match="optim.lookahead_alpha"):
        load_recipe(None, ["optim.lookahead_alpha=0"])
    with pytest.raises(ConfigError, match="train.tta_flip"):
        load_recipe(None, ["train.tta_flip=sometimes"])


class _Asymmetric(nn.Module):
    """Logits that change under a left-right flip: the mean of the left and right halves of each channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W = x.shape[-1]
        return torch.cat([x[..., : W // 2].mean((2, 3)), x[..., W // 2:].mean((2, 3))], dim=1)  # (B, 2C)


class _Loader:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.num_samples = x, y, len(y)

    def __len__(self) -> int:
        return 1

    def iter_epoch(self, epoch: int, start_batch: int = 0):
        yield self.x, self.y


def test_flip_tta_averages_the_logits_of_both_mirror_images() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 5, 4, 6), torch.randint(0, 10, (16,))
    model = _Asymmetric()
    plain = evaluate(model, _Loader(x, y))
    tta = evaluate(model, _Loader(x, y), tta_flip=True)
    expected = 0.5 * (model(x) + model(x.flip(-1)))
    loss = nn.functional.cross_entropy(expected, y).item()
    assert tta["loss"] == pytest.approx(loss, rel=1e-5)
    assert plain["loss"] != pytest.approx(loss, rel=1e-3)


def small_cifar_zip(shared_data: Path, tmp_path: Path, *, train: int, test: int) -> Path:
    """The real layout with the first ``train`` / ``test`` JPEGs of every class."""
    out = tmp_path / "cifar-subset.zip"
    with zipfile.ZipFile(shared_data / "cifar10-jpg.zip") as src, zipfile.ZipFile(out, "w") as dst:
        for split, count in (("train", train), ("test", test)):
            for cls in CLASSES:
                for i in range(count):
                    name = f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg"
                    dst.writestr(name, src.read(name))
    return out


def test_speedrun_recipe_builds_and_trains_on_real_cifar(shared_data: Path, tmp_path: Path) -> None:
    data = small_cifar_zip(shared_data, tmp_path, train=26, test=10)
    recipe = load_recipe("cifar10-speedrun", ["train.batch_size=64", "train.eval_batch_size=100",
                                              "train.data_init=128", "train.max_steps=3", "train.amp=false",
                                              "train.device=cpu"])
    model, task = prepare("airbench_cifar", "cifar10", recipe, data_dir=data)
    assert task.num_classes == 10 and task.extra["train_size"] == 260
    # The images data_init sees: the first 128 of the training loader's first epoch.
    init_images = torch.cat([x for x, _ in task.train_loader.iter_epoch(0)])[:128]
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    result = fit(model, task, recipe)
    assert result.final["steps"] == 3 and result.stop_reason == "max_steps"
    assert 0.0 <= result.final["val_accuracy"] <= 1.0
    mean, cov = patch_statistics(init_images, 2)
    weight, _ = whitening_weights(mean, cov, eps=model.stem.eps)
    torch.testing.assert_close(model.stem.weight[:12].flatten(1).double(), weight, atol=1e-4, rtol=1e-4)
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.dim() > 1), "a weight did not train"


def test_data_init_needs_a_model_that_has_it(tmp_path: Path) -> None:
    recipe = load_recipe("quick", ["train.data_init=16", "train.max_steps=1", "train.device=cpu"])
    model, task = prepare("small_cnn", "mnist-embedded", recipe, subset=256)
    with pytest.raises(ConfigError, match="train.data_init: model small_cnn has no init_from_data"):
        fit(model, task, recipe)


def test_cifar_testbed_is_offered_by_name_and_trains(shared_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dltricks.experiments._harness import train
    from dltricks.experiments.training import testbed

    bed = testbed("cifar10")
    spec = bed.make_spec(seed=3)
    assert (spec.dataset, spec.seed, spec.data_init) == ("cifar10", 3, 2000)
    assert testbed("mnist").make_spec().dataset == "mnist-embedded"
    with pytest.raises(ConfigError, match="unknown testbed 'cifar'"):
        testbed("cifar")
    # The testbed's code path on real CIFAR-10 JPEGs, shrunk: 100 training / 50 test images, one epoch.
    monkeypatch.setenv("DLTRICKS_DATA", str(small_cifar_zip(shared_data, tmp_path, train=10, test=5)))
    out = train(bed.make_model(), bed.make_spec(subset=100, val_subset=50, epochs=1, batch_size=50, data_init=50))
    assert not out.diverged and out.steps == 2 and 0.0 <= out.val_acc <= 1.0

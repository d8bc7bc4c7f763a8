"""GPU paths, skipped without CUDA: the trainer's float16 autocast with GradScaler and bf16, channels_last, the
speedrun network and its recipe, torch.compile, the CUDA memory statistics and the optional mamba_ssm kernel.

Run on a GPU machine by ``benchmarks/gpu_suite.sh`` (``pytest tests/test_cuda.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from dltricks.layers.ssm.selective_scan import cuda_selective_scan_available, selective_scan
from dltricks.measure.memory import peak_memory
from dltricks.models import create_model
from dltricks.train import fit, load_recipe
from train_helpers import toy_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_fit_on_cuda_with_autocast_and_channels_last(amp_dtype: str) -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=4, in_chans=1, widths=(8, 16))
    recipe = load_recipe(None, ["train.device=cuda", "train.amp=true", f"train.amp_dtype={amp_dtype}",
                                "train.channels_last=true", "train.epochs=2", "train.batch_size=16", "optim.lr=0.05"])
    result = fit(model, toy_task(), recipe)
    assert next(result.model.parameters()).is_cuda
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_speedrun_recipe_steps_on_cuda() -> None:
    torch.manual_seed(0)
    model = create_model("airbench_cifar", num_classes=4, in_chans=1, widths=(16, 32))  # 8x8 toy images
    recipe = load_recipe("cifar10-speedrun", ["train.device=cuda", "train.batch_size=16", "train.eval_batch_size=64",
                                              "train.data_init=64", "train.epochs=2"])
    task = toy_task(augment=recipe.augment, batch_size=16)
    result = fit(model, task, recipe)
    assert result.final["steps"] == 2 * len(task.train_loader)
    assert math.isfinite(result.final["val_loss"])


def test_compiled_speedrun_network_matches_eager() -> None:
    torch.manual_seed(0)
    model = create_model("airbench_cifar").cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


def test_cuda_peak_memory_counts_the_activations() -> None:
    model = create_model("airbench_cifar").cuda()
    small = peak_memory(model, [torch.randn(8, 3, 32, 32, device="cuda")], mode="train")
    large = peak_memory(model, [torch.randn(64, 3, 32, 32, device="cuda")], mode="train")
    assert 0 < small.peak_bytes < large.peak_bytes


@pytest.mark.skipif(not cuda_selective_scan_available(), reason="needs the mamba_ssm CUDA kernel")
def test_mamba_ssm_kernel_matches_the_chunked_scan() -> None:
    torch.manual_seed(0)
    Bsz, D, L, N = 2, 8, 64, 4
    u, delta = torch.randn(Bsz, D, L, device="cuda"), torch.rand(Bsz, D, L, device="cuda")
    A = -torch.rand(D, N, device="cuda")
    B, C = torch.randn(Bsz, N, L, device="cuda"), torch.randn(Bsz, N, L, device="cuda")
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, impl="cuda"),
                               selective_scan(u, delta, A, B, C, impl="chunked"), rtol=1e-3, atol=1e-3)

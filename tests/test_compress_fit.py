"""Compression methods that train through ``fit``: quantization-aware training and iterative prune -> fine-tune,
each against a reference (the fake-quantized simulation; one-shot magnitude pruning)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dltricks.compress import prune_unstructured
from dltricks.compress.prune import PRUNABLE, prune_finetune
from dltricks.compress.quantize import convert_qat, prepare_qat, quantize_aware
from dltricks.errors import ConfigError
from dltricks.train import load_recipe
from train_helpers import TOY, tiny_cnn, toy_task


def _recipe(*overrides: str):
    return load_recipe(None, ["train.epochs=1", "optim.lr=0.05", "checkpoint.keep_best=false", *TOY, *overrides])


# --- quantization-aware training -----------------------------------------------------------------------------

def test_qat_int8_model_computes_what_the_fake_quantized_model_simulated():
    task = toy_task(n_train=64)
    model = tiny_cnn(seed=3)
    int8, fake = quantize_aware(model, task, _recipe())
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    fake.eval().apply(torch.ao.quantization.disable_observer)  # freeze the ranges the int8 model was made with
    x = next(iter(task.val_loader.iter_epoch(0)))[0]
    with torch.no_grad():
        simulated, got = fake(x), int8(x)
    # The output's fake-quant: x86's QAT qconfig simulates 7-bit activations (reduce_range) and clamps to that
    # range, the int8 kernels do not clamp there, so compare where the simulation did not saturate.
    out = fake.get_submodule(next(n for n in fake.graph.nodes if n.op == "output").args[0].target)
    scale, zero = float(out.scale), int(out.zero_point)
    lo, hi = (out.quant_min - zero) * scale, (out.quant_max - zero) * scale
    inside = (simulated > lo + scale) & (simulated < hi - scale)
    assert inside.float().mean() > 0.5
    # Intermediate activations round (and saturate) a little differently in the kernels: most outputs agree to
    # one step; a conversion error (BN not folded, a wrong scale) is tens of steps off.
    steps = ((got - simulated).abs() / scale)[inside]
    assert float(steps.mean()) <= 1.5 and float(steps.max()) <= 10
    assert (got.argmax(1) == simulated.argmax(1)).float().mean() >= 0.9


def test_qat_fake_quantizes_weights_to_the_int8_grid():
    model = tiny_cnn(seed=4)
    x = torch.randn(8, 1, 8, 8)
    prepared = prepare_qat(model, x)
    prepared(x)  # observers see one batch
    fq = [m for m in prepared.modules() if type(m).__name__.endswith("FakeQuantize")]
    assert fq, "no fake-quantization module was inserted"
    convs = [m for m in prepared.modules() if isinstance(m, nn.Conv2d) and hasattr(m, "weight_fake_quant")]
    w = convs[0].weight_fake_quant(convs[0].weight.detach())  # (C_out, C_in, k, k), per-channel scales
    scale = convs[0].weight_fake_quant.scale.view(-1, 1, 1, 1)
    torch.testing.assert_close(w / scale, (w / scale).round(), atol=1e-3, rtol=0)
    assert convert_qat(prepared, x)(x).shape == (8, 4)


# --- iterative prune -> fine-tune ----------------------------------------------------------------------------

def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, PRUNABLE)]


def test_prune_finetune_reaches_each_sparsity_and_keeps_pruned_weights_zero():
    task = toy_task(n_train=64)
    model = tiny_cnn(seed=5)
    pruned, records = prune_finetune(model, task, _recipe(), [0.5, 0.8])
    total = sum(w.numel() for w in _weights(model))
    zeros = sum(int((w == 0).sum()) for w in _weights(pruned))
    assert [r["amount"] for r in records] == [0.5, 0.8]
    assert records[0]["sparsity"] == pytest.approx(round(0.5 * total) / total)
    assert zeros == round(0.8 * total)  # fine-tuning did not revive a pruned weight
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())
    # Fine-tuning changed the surviving weights and did not make the pruned model worse on the training task.
    assert records[1]["after_loss"] < records[1]["before_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(_weights(pruned), _weights(prune_unstructured(model, 0.8))))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_finetune_without_learning_equals_one_shot_pruning(scope):
    # With a learning rate too small to move any weight the magnitude order never changes, so the steps
    # 0.3 -> 0.6 -> 0.9 must remove exactly the weights one-shot pruning at 0.9 removes.
    task = toy_task(n_train=32)
    model = tiny_cnn(seed=6)
    stepwise, _ = prune_finetune(model, task, _recipe("optim.lr=1e-30", "optim.momentum=0"), [0.3, 0.6, 0.9],
                                 scope=scope)
    one_shot = prune_unstructured(model, 0.9, scope=scope)
    for a, b in zip(_weights(stepwise), _weights(one_shot)):
        if scope == "global":
            assert torch.equal(a == 0, b == 0)
        else:  # per layer the counts are rounded per step: the same to a weight or two
            assert int(((a == 0) != (b == 0)).sum()) <= 3


def test_prune_finetune_rejects_a_bad_schedule():
    with pytest.raises(ConfigError, match="increasing"):
        prune_finetune(tiny_cnn(), toy_task(n_train=16), _recipe(), [0.8, 0.5])


# --- the ResNet-20 acceptance run: the shipped recipe builds and trains --------------------------------------

def test_the_cifar10_resnet_recipe_trains_resnet20_on_a_cifar_folder(tmp_path):
    """benchmarks/compress_resnet20.py trains `resnet20 --data cifar10 --recipe cifar10-resnet`; here the same path
    on a 10-class image folder of 32x32 PNGs (3 per class) for 2 steps."""
    from PIL import Image

    from dltricks.train import fit, prepare

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for k in range(10):
            folder = tmp_path / "cifar10" / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    recipe = load_recipe("cifar10-resnet", ["train.steps=2", "train.batch_size=8", "train.eval_batch_size=30",
                                            "train.device=cpu", "checkpoint.keep_best=false"])
    assert recipe.optim.nesterov and recipe.train.label_smoothing == 0.1 and recipe.augment.hflip  # as shipped
    model, task = prepare("resnet20", "cifar10", recipe, data_dir=tmp_path / "cifar10")
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(model, task, recipe, progress=False)
    assert result.final["steps"] == 2 and 0.0 <= result.final["val_accuracy"] <= 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.dim() == 4)


# --- the recipe path: compress.qat and compress.prune_amounts as options of fit ------------------------------

def test_recipe_qat_equals_fake_quant_training_then_conversion_by_hand():
    """``compress.qat`` inside fit against the reference: prepare_qat, a plain fit of the prepared copy,
    convert_qat (what quantize_aware did before it became an option of fit)."""
    from dltricks.train import fit

    task = toy_task(n_train=48)
    model = tiny_cnn(seed=7)
    example = next(iter(task.train_loader.iter_epoch(0)))[0][:2]
    prepared = prepare_qat(model, example)
    fit(prepared, task, _recipe(), progress=False)
    reference = convert_qat(prepared, example)
    result = fit(model, task, _recipe("compress.qat=true"), progress=False)
    got, want = result.model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key].dequantize() if got[key].is_quantized else got[key],
                                       value.dequantize() if value.is_quantized else value, msg=key)
    assert isinstance(result.float_model, torch.fx.GraphModule)  # the trained fake-quantized copy
    x = next(iter(task.val_loader.iter_epoch(0)))[0]
    torch.testing.assert_close(result.model(x), reference(x))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_cnn(seed=7).state_dict().values()))


def test_recipe_prune_schedule_equals_the_function_and_prunes_at_epoch_boundaries():
    from dltricks.train import fit

    task = toy_task(n_train=48)
    model = tiny_cnn(seed=8)
    pruned, records = prune_finetune(model, task, _recipe(), [0.5, 0.8])
    result = fit(tiny_cnn(seed=8), task, _recipe("train.epochs=2", "compress.prune_amounts=[0.5, 0.8]"),
                 progress=False)
    for a, b in zip(pruned.state_dict().values(), result.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r.get("prune_amount") for r in result.history] == [0.5, 0.8]
    assert result.history[1]["sparsity"] == records[1]["sparsity"] == result.final["sparsity"]
    assert not any(n.endswith(("_orig", "_mask")) for n in result.model.state_dict())
    # One-step reference: prune one-shot by hand, then a plain fit of as many epochs (the masks kept on).
    from torch.nn.utils import prune

    by_hand = tiny_cnn(seed=8)
    params = [(m, "weight") for m in by_hand.modules() if isinstance(m, PRUNABLE)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)
    fit(by_hand, task, _recipe("train.epochs=2"), progress=False)
    for m, name in params:
        prune.remove(m, name)
    one_step = fit(tiny_cnn(seed=8), task, _recipe("train.epochs=2", "compress.prune_amounts=[0.5]",
                                                   "compress.prune_epochs=2"), progress=False)
    for a, b in zip(by_hand.state_dict().values(), one_step.model.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("overrides,message", [
    (["compress.prune_amounts=[0.8, 0.5]"], "compress.prune_amounts: got \\[0.8, 0.5\\], expected increasing"),
    (["compress.prune_amounts=[0.5, 1.0]"], "compress.prune_amounts: got .*expected fractions in \\(0, 1\\)"),
    (["compress.prune_amounts=[0.0]"], "compress.prune_amounts: got .*expected fractions in \\(0, 1\\)"),
    (["compress.prune_scope=row"], "compress.prune_scope: got 'row'"),
    (["compress.prune_epochs=0"], "compress.prune_epochs"),
    (["compress.qat_backend=arm"], "compress.qat_backend"),
    (["compress.pruning=[0.5]"], "unknown key 'compress.pruning'"),
    (["compress.qat=true", "compress.prune_amounts=[0.5]"], "compress.qat: not with compress.prune_amounts"),
    (["compress.qat=true", "ema.decay=0.9"], "compress.qat: not with ema.decay"),
])
def test_bad_compress_keys_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, overrides)


def test_fit_refuses_a_prune_schedule_longer_than_the_run_and_resuming(tmp_path):
    from dltricks.train import fit

    with pytest.raises(ConfigError, match="compress.prune_epochs: 2 pruning step.*need at least 4 epochs"):
        fit(tiny_cnn(), toy_task(n_train=16), _recipe("train.epochs=3", "compress.prune_amounts=[0.5, 0.8]",
                                                      "compress.prune_epochs=2"), progress=False)
    with pytest.raises(ConfigError, match="compress.qat: a run that compresses while training cannot be resumed"):
        fit(tiny_cnn(), toy_task(n_train=16), _recipe("compress.qat=true"), run_dir=tmp_path, resume=True)


class _Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # data-dependent control flow: FX cannot trace it


def test_recipe_qat_on_a_model_the_quantizer_rejects_names_the_module():
    from dltricks.errors import ModelError
    from dltricks.train import fit

    model = nn.Sequential(nn.Conv2d(1, 4, 3), _Gate(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(ModelError, match="cannot quantize Sequential: graph tracing failed in module '1' \\(_Gate\\)"):
        fit(model, toy_task(n_train=16), _recipe("compress.qat=true"), progress=False)


def test_train_command_with_qat_writes_an_int8_file_that_loads_back_exactly(tmp_path):
    """`dltricks train ... --set compress.qat=true`: the fake-quantized model trains, and the converted int8
    model is written beside it (model-int8.safetensors) and read back bit for bit."""
    from dltricks.cli import main
    from dltricks.compress.storage import load_quantized
    from dltricks.models import create_model
    from dltricks.train.checkpoint import read_metadata

    run = tmp_path / "run"
    assert main(["train", "small_cnn", "--data", "mnist-embedded", "--subset", "64", "--model-opt", "widths=[4,8]",
                 "--set", "train.epochs=1", "--set", "train.batch_size=32", "--set", "train.device=cpu",
                 "--set", "compress.qat=true", "--out", str(run)]) == 0
    meta = read_metadata(run / "model-int8.safetensors")
    assert meta["method"] == "qat" and meta["backend"] == "x86" and meta["model"] == "small_cnn"
    x = torch.randn(3, 1, 28, 28)
    loaded = load_quantized(run / "model-int8.safetensors", create_model("small_cnn", num_classes=10, in_chans=1,
                                                                         widths=(4, 8)), x)
    again = load_quantized(run / "model-int8.safetensors", create_model("small_cnn", num_classes=10, in_chans=1,
                                                                        widths=(4, 8)), 3 * x)
    with torch.no_grad():  # everything that matters comes from the file, not from the batch the structure saw
        assert torch.equal(loaded(x), again(x))
    # The run's model.safetensors holds the trained fake-quantized model: load_model (and eval/serve, which use
    # the same structure_for_weights) rebuild that structure, and it computes what the int8 model computes.
    from dltricks.train.runs import load_model

    fake, run_meta = load_model(run)
    assert run_meta["qat_backend"] == "x86"
    with torch.no_grad():
        simulated, real = fake(x), loaded(x)
    # the fake-quantized model simulates the int8 one: they differ by rounding, not by a different network
    assert float((simulated - real).abs().max()) <= 0.1 * float(real.abs().max()) + 1e-3
    assert main(["eval", str(run)]) == 0


def test_qat_int8_safetensors_round_trip_is_exact(tmp_path):
    from dltricks.compress.storage import load_quantized, save_quantized

    task = toy_task(n_train=32)
    int8, _ = quantize_aware(tiny_cnn(seed=9), task, _recipe())
    path = save_quantized(tmp_path / "q.safetensors", int8, {"method": "qat", "backend": "x86"})
    x = next(iter(task.val_loader.iter_epoch(0)))[0]
    loaded = load_quantized(path, tiny_cnn(seed=10), 3 * x[:2])  # other float weights, another batch
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))

"""Compression: int8 quantization, pruning, ONNX export checked in onnxruntime, and `dltricks compress` end to
end with its bad inputs (one line, exit code 2, no partial output)."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn

from dltricks.cli import main
from dltricks.compress import (count_nonzero, onnx_session, parse_methods, prune_channels,
                               prune_unstructured, quantize_dynamic, quantize_static)
from dltricks.compress.storage import load_quantized, save_quantized
from dltricks.errors import CheckpointError, ConfigError, ModelError
from dltricks.models import create_model
from dltricks.train import save_weights
from dltricks.train.checkpoint import read_metadata


def _small(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=4, **kw).eval()


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that folding and channel surgery are really tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# --- quantization -------------------------------------------------------------------------------------------

def test_static_int8_is_close_to_float_and_runs_int8_kernels():
    model = _randomise_bn(_small("small_cnn", widths=(8, 16)))
    x = torch.randn(16, 1, 16, 16)
    q = quantize_static(model, [x[:8], x[8:]])
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert any("quantized" in type(m).__module__ for m in q.modules())
    # int8 error: a few per cent of the logit range, not more.
    assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.05
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.8


def test_dynamic_int8_linear_model():
    model = _small("mlp", in_chans=1, img_size=8, hidden=(32,))
    x = torch.randn(8, 1, 8, 8)
    q = quantize_dynamic(model)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules())
    torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0.05)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.gate = _Gate()

    def forward(self, x):
        return self.gate(self.conv(x))


class _Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # data-dependent control flow: FX cannot trace it


def test_a_model_the_quantizer_rejects_names_the_module():
    with pytest.raises(ModelError, match="'gate'.*_Gate"):
        quantize_static(_DataDependent(), [torch.randn(2, 1, 8, 8)])
    with pytest.raises(ModelError, match="no Linear, LSTM or GRU"):
        quantize_dynamic(nn.Sequential(nn.Conv2d(1, 2, 3)))


# --- int8 files: safetensors, no pickle ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["static-int8", "dynamic-int8"])
def test_int8_safetensors_round_trip_is_exact(method, tmp_path):
    model = _randomise_bn(_small("resnet20", in_chans=3))
    x = torch.randn(6, 3, 16, 16)
    q = quantize_static(model, [x]) if method == "static-int8" else quantize_dynamic(model)
    path = save_quantized(tmp_path / "q.safetensors", q, {"method": method})
    assert path.read_bytes()[:2] != b"PK" and read_metadata(path)["format"] == "dltricks-int8-v1"
    # The structure is rebuilt from a float model with other weights (and, for static int8, calibrated on
    # another batch): everything that matters must come from the file.
    other = _small("resnet20", in_chans=3)
    torch.nn.init.normal_(other.fc.weight)
    loaded = load_quantized(path, other, 3 * torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
        assert not torch.equal(quantize_dynamic(other)(x) if method == "dynamic-int8"
                               else quantize_static(other, [3 * torch.randn(2, 3, 16, 16)])(x), q(x))


def test_int8_file_that_does_not_fit_is_refused(tmp_path):
    model = _small("small_cnn", widths=(8, 16))
    path = save_quantized(tmp_path / "q.safetensors", quantize_static(model, [torch.randn(4, 1, 16, 16)]),
                          {"method": "static-int8"})
    with pytest.raises(CheckpointError, match="do not fit|does not have"):
        load_quantized(path, _small("small_cnn", widths=(8, 32)), torch.randn(2, 1, 16, 16))
    with pytest.raises(CheckpointError, match="not a dltricks int8 file"):
        save_weights(tmp_path / "w.safetensors", model, {"model": "small_cnn"})
        load_quantized(tmp_path / "w.safetensors", model, torch.randn(2, 1, 16, 16))


# --- pruning ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_pruning_reaches_the_sparsity(scope):
    model = _small("small_cnn", widths=(8, 16))
    pruned = prune_unstructured(model, 0.8, scope=scope)
    layers = [m for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert zeros / total == pytest.approx(0.8, abs=0.01)
    if scope == "layer":
        assert all((m.weight == 0).float().mean() == pytest.approx(0.8, abs=0.05) for m in layers)
    assert count_nonzero(pruned) < count_nonzero(model)
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())  # no masks left behind


def test_unstructured_pruning_of_channels_last_weights():
    """``fit`` may leave conv weights channels-last; pruning flattens them and must not fail on that layout."""
    model = _small("small_cnn", widths=(8, 16)).to(memory_format=torch.channels_last)
    pruned = prune_unstructured(model, 0.5)
    dense = prune_unstructured(_small("small_cnn", widths=(8, 16)), 0.5)
    for a, b in zip(pruned.parameters(), dense.parameters()):
        torch.testing.assert_close(a, b)


def _silence_removed_channels(dense: nn.Module, pruned: nn.Module) -> None:
    """In ``dense``, make every channel that ``pruned`` removed output zero (BN weight and bias 0): after ReLU,
    pooling and the next conv (or global pooling and the head) that is the same as the channel being absent."""
    small = dict(pruned.named_modules())
    for name, m in dense.named_modules():
        p = small.get(name)
        if isinstance(m, nn.BatchNorm2d) and isinstance(p, nn.BatchNorm2d) and p.num_features < m.num_features:
            # The randomised running means identify the channels that were kept.
            removed = [i for i in range(m.num_features) if not bool((p.running_mean == m.running_mean[i]).any())]
            assert len(removed) == m.num_features - p.num_features
            m.weight.data[removed] = 0
            m.bias.data[removed] = 0


@pytest.mark.parametrize("name,kw,shape", [("small_cnn", {"widths": (8, 16)}, (1, 16, 16)),
                                            ("resnet20", {"in_chans": 3}, (3, 16, 16)),  # zero-padding shortcuts
                                            ("resnet18", {"in_chans": 3}, (3, 32, 32)),  # projection shortcuts
                                            ("preact_resnet18_cifar", {"in_chans": 3}, (3, 16, 16))])
def test_channel_pruning_equals_the_dense_model_without_those_channels(name, kw, shape):
    model = _randomise_bn(_small(name, **kw))
    pruned = prune_channels(model, 0.5)
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    if name.startswith("resnet"):  # the residual streams are pruned too: every conv has about half its inputs
        assert pruned.fc.in_features == model.fc.in_features // 2
        assert sum(p.numel() for p in pruned.parameters()) < 0.3 * sum(p.numel() for p in model.parameters())
    dense = copy.deepcopy(model)
    _silence_removed_channels(dense, pruned)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), atol=1e-4, rtol=1e-4)


def test_channel_pruning_refuses_a_model_without_prunable_channels():
    with pytest.raises(ModelError, match="cannot prune channels"):
        prune_channels(_small("mlp", in_chans=1, img_size=8, hidden=(8,)), 0.5)
    with pytest.raises(ConfigError, match="fraction"):
        prune_channels(_small("small_cnn"), 1.0)


# --- ONNX ---------------------------------------------------------------------------------------------------

# ONNX export of every model family: tests/test_onnx_zoo.py.

def test_a_corrupted_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(CheckpointError, match="not a valid ONNX model"):
        onnx_session(bad)


# --- methods, the command -----------------------------------------------------------------------------------

def test_parse_methods():
    assert [m.label for m in parse_methods("fp32, channels:0.5,prune:0.8")] == ["fp32", "channels:0.5", "prune:0.8"]
    with pytest.raises(ConfigError, match="unknown compression method 'int8'"):
        parse_methods("fp32,int8")
    with pytest.raises(ConfigError, match="fraction"):
        parse_methods("prune")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    # The weights file of a run on mnist-embedded: compress rebuilds the model and the data from its metadata.
    torch.manual_seed(0)
    m = create_model("small_cnn", num_classes=10, in_chans=1, widths=(4, 8))
    save_weights(run / "model.safetensors", m, {"model": "small_cnn", "model_kwargs": {
        "num_classes": 10, "in_chans": 1, "widths": [4, 8]}, "data": {"name": "mnist-embedded", "options": {},
                                                                      "subset": 200}})
    return run


def test_compress_command_writes_one_table(trained_run, tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["compress", str(trained_run), "--methods", "fp32,static-int8,prune:0.5,channels:0.5,onnx",
                 "--val-subset", "100", "--min-time", "0.01", "--calibration-batches", "1", "--out", str(out)])
    assert code == 0
    text = (out / "compress.md").read_text()
    for method in ("fp32", "static-int8", "prune:0.5", "channels:0.5", "onnx"):
        assert f"| {method} |" in text
    assert (out / "pareto.png").stat().st_size > 0 and (out / "compress.json").is_file()
    assert read_metadata(out / "static-int8" / "model.safetensors")["method"] == "static-int8"
    assert not list(out.rglob("*.pt"))  # no pickle anywhere
    assert "batch 32 (ms)" in capsys.readouterr().out


def test_compress_methods_that_fine_tune_through_fit(trained_run, tmp_path):
    """qat and prune-finetune train from the run's weights through fit (compress.qat, compress.prune_amounts)."""
    out = tmp_path / "c"
    code = main(["compress", str(trained_run), "--methods", "fp32,qat,prune-finetune:0.5", "--val-subset", "100",
                 "--min-time", "0.01", "--calibration-batches", "1", "--finetune-set", "optim.lr=0.01",
                 "--out", str(out)])
    assert code == 0
    rows = {r["method"]: r for r in json.loads((out / "compress.json").read_text())["rows"]}
    assert set(rows) == {"fp32", "qat", "prune-finetune:0.5"}
    assert rows["prune-finetune:0.5"]["nonzeros"] < rows["fp32"]["nonzeros"]
    assert read_metadata(out / "qat" / "model.safetensors")["method"] == "qat"
    # The int8 file of QAT loads back into the structure prepare_qat + convert_qat rebuild.
    from dltricks.train.runs import load_model

    float_model, _ = load_model(trained_run)
    x = torch.randn(2, 1, 28, 28)
    loaded = load_quantized(out / "qat" / "model.safetensors", float_model, x)
    assert any("quantized" in type(m).__module__ for m in loaded.modules())


@pytest.mark.parametrize("args,message", [
    (["--methods", "fp32,int9"], "unknown compression method"),
    (["--methods", "prune"], "give the fraction to prune"),
    (["--calibration-batches", "0"], "--calibration-batches"),
    (["--methods", "prune-finetune"], "give the fraction to prune"),
    (["--methods", "qat", "--finetune-epochs", "0"], "--finetune-epochs"),
    (["--methods", "qat", "--finetune-set", "compress.qatt=1"], "unknown key 'compress.qatt'"),
])
def test_compress_bad_arguments(trained_run, tmp_path, capsys, args, message):
    out = tmp_path / "c"
    assert main(["compress", str(trained_run), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_compress_not_a_run_and_rejected_model_leave_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compress", str(empty), "--out", str(tmp_path / "o1")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    # A model without prunable channels: the error comes mid-way, after fp32 was measured.
    run = tmp_path / "mlp"
    run.mkdir()
    torch.manual_seed(0)
    save_weights(run / "model.safetensors", create_model("mlp", num_classes=10, hidden=(8,)),
                 {"model": "mlp", "model_kwargs": {"num_classes": 10, "hidden": [8]},
                  "data": {"name": "mnist-embedded", "options": {}, "subset": 100}})
    assert main(["compress", str(run), "--methods", "fp32,channels:0.5", "--val-subset", "50", "--min-time", "0.01",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "cannot prune channels of mlp" in capsys.readouterr().err
    # A model the quantizer rejects (a ViT: FX cannot trace its shape checks): its name and the reason.
    vit = tmp_path / "vit"
    vit.mkdir()
    options = {"num_classes": 10, "in_chans": 1, "img_size": 28}
    save_weights(vit / "model.safetensors", create_model("vit_cifar_patch4_32", **options),
                 {"model": "vit_cifar_patch4_32", "model_kwargs": options,
                  "data": {"name": "mnist-embedded", "options": {}, "subset": 100}})
    assert main(["compress", str(vit), "--methods", "static-int8", "--val-subset", "50", "--calibration-batches", "1",
                 "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err
    assert "cannot quantize vit_cifar_patch4_32: graph tracing failed" in err and err.count("\n") == 1
    shutil.rmtree(vit)
    # An ONNX file instead of a run: corrupted, or valid but not something compress reads.
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    assert main(["compress", str(bad), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "not a valid ONNX model" in err and err.count("\n") == 1
    bad.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mlp"]

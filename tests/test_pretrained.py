"""Weights saved by timm/torchvision loaded into our models (dltricks.models._pretrained).

The fixtures in ../shared/fixtures/timm give timm's key names and shapes for 20 reference architectures and,
for four of them, timm-format weights with timm's outputs on a fixed input (their README).
"""

from __future__ import annotations

import json
import pathlib
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dltricks.errors import ModelError
from dltricks.models import create_model, model_info
from dltricks.models._pretrained import check_fit, map_reference_keys

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "timm"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "key_manifests.json").is_file(),
                                    reason="../shared/fixtures/timm is not there")
WEIGHTS = {"resnet18": "resnet18", "mobilenetv2_100": "mobilenet_v2",
           "vit_tiny_patch16_224": "vit_tiny_patch16_224", "mambaout_femto": "mambaout_femto"}
# Reference architectures whose names we do not map yet: loading them must fail with a clear error.
NOT_MAPPED: set[str] = set()


def _manifests() -> dict:
    path = FIXTURES / "key_manifests.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@needs_fixtures
@pytest.mark.parametrize("arch", sorted(WEIGHTS))
def test_fixture_weights_reproduce_timm_outputs(arch):
    model = create_model(WEIGHTS[arch], pretrained=FIXTURES / f"{arch}.safetensors").eval()
    io = load_file(str(FIXTURES / f"{arch}.io.safetensors"))
    with torch.no_grad():
        logits = model(io["input"])
    torch.testing.assert_close(logits, io["output"], atol=1e-5, rtol=0)
    assert model.pretrained_report.head_reinitialised == []


@needs_fixtures
@pytest.mark.parametrize("ref", sorted(_manifests()))
def test_manifest_keys_map_onto_our_model(ref):
    entry = _manifests()[ref]
    with torch.device("meta"):  # no memory: names and shapes only
        model = create_model(entry["ours"])
        state = {k: torch.empty(shape, dtype=getattr(torch, dtype.split(".")[-1]))
                 for k, shape, dtype in entry["state_dict"]}
    fmt = "timm" if ref.startswith("timm:") else "torchvision"
    rules, mapped = map_reference_keys(model, model_info(entry["ours"]).family, state, fmt=fmt)
    if ref in NOT_MAPPED:
        with pytest.raises(ModelError, match="missing: .*unexpected: "):
            check_fit(model, mapped, what=ref)
        return
    assert len(mapped) == len(state)  # the rules are one-to-one
    assert check_fit(model, mapped, what=ref) == []


@needs_fixtures
def test_other_head_size_is_reinitialised_and_reported():
    path = FIXTURES / "resnet18.safetensors"
    model = create_model("resnet18", num_classes=10, pretrained=path)
    report = model.pretrained_report
    assert sorted(report.head_reinitialised) == ["fc.bias", "fc.weight"]
    assert "head re-initialised" in report.summary()
    state = load_file(str(path))
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].float())
    assert model.fc.weight.shape == (10, 512)


@needs_fixtures
def test_wrong_architecture_names_the_first_mismatches():
    with pytest.raises(ModelError, match=r"for resnet18.*resnet34.*missing: layer1\.2\."):
        create_model("resnet34", pretrained=FIXTURES / "resnet18.safetensors")
    with pytest.raises(ModelError, match=r"wrong shape: conv1\.weight \(64, 3, 7, 7\) vs ours \(64, 1, 7, 7\)"):
        create_model("resnet18", in_chans=1, pretrained=FIXTURES / "resnet18.safetensors")


def test_pth_file_and_checkpoint_wrapper_load(tmp_path):
    source = create_model("small_cnn", num_classes=10)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    model = create_model("small_cnn", num_classes=10, pretrained=tmp_path / "w.pth")
    for a, b in zip(source.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_truncated_and_executable_files_are_refused(tmp_path):
    source = create_model("small_cnn", num_classes=10)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        create_model("small_cnn", pretrained=tmp_path / "cut.safetensors")

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    torch.save({"weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match=r"refused, .* \(it would call getattr\); nothing in it was run"):
        create_model("small_cnn", pretrained=tmp_path / "evil.pth")
    (tmp_path / "evil.bin").write_bytes(pickle.dumps({"weight": Payload()}))  # a raw pickle, protocol 4+
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected pickle protocol" warning must not reach the user
        with pytest.raises(ModelError, match="refused, the file is a pickle"):
            create_model("small_cnn", pretrained=tmp_path / "evil.bin")
    assert not marker.exists()
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelError, match=r"truncated or not a PyTorch file \(EOFError\)"):
        create_model("small_cnn", pretrained=tmp_path / "empty.pth")
    torch.save(source.state_dict(), tmp_path / "w.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated or not a PyTorch file"):
        create_model("small_cnn", pretrained=tmp_path / "cut.pth")
    torch.save({"epoch": 3}, tmp_path / "not_weights.pth")
    with pytest.raises(ModelError, match="entry 'epoch' is a int"):
        create_model("small_cnn", pretrained=tmp_path / "not_weights.pth")
    with pytest.raises(ModelError, match="never downloads"):
        create_model("small_cnn", pretrained=True)


def test_cli_train_pretrained(tmp_path, capsys):
    from dltricks.cli import main

    weights = tmp_path / "five.safetensors"
    save_file(create_model("small_cnn", num_classes=5, in_chans=1, widths=[4, 8]).state_dict(), str(weights))
    small = ["--data", "mnist-embedded", "--subset", "128", "--model-opt", "widths=[4, 8]", "--epochs", "1",
             "--set", "train.batch_size=64", "--no-progress"]
    assert main(["train", "small_cnn", *small, "--out", str(tmp_path / "run"), "--pretrained", str(weights)]) == 0
    assert "head re-initialised" in capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["meta"]["pretrained"] == str(weights.resolve())
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    (tmp_path / "cut.safetensors").write_bytes(weights.read_bytes()[:-8])
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"conv.weight": Payload()}))
    # the must-hold: wrong architecture, truncated file, pickle with code -> one line, exit code 2
    for bad in (tmp_path / "bad.pth", FIXTURES / "resnet18.safetensors", tmp_path / "cut.safetensors",
                tmp_path / "evil.pkl"):
        assert main(["train", "small_cnn", *small, "--out", str(tmp_path / "run2"), "--pretrained", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad.name in err[0], err
    assert not marker.exists() and not (tmp_path / "run2").exists()

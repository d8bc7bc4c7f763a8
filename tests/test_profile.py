"""``dltricks profile`` over every registered model, and ``dltricks compare`` end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from dltricks import create_model, list_models, model_info
from dltricks.cli import main
from dltricks.measure import count_macs, count_params
from dltricks.experiments.leaderboard import disagreeing_pairs, leaderboard_markdown
from dltricks.measure.profile import parse_input_size, profile_model

ALL_MODELS = list_models()
# Models needing more than this many MACs per image even at their smallest input (Mixer-B/16 needs 224x224:
# 12.6 G) are profiled at batch 1 without the memory passes, to keep the suite within its time budget.
HEAVY_MACS = 3e9
# The fewest timed calls that still give a spread (one call to size the block, then two timed blocks).
TEST_TIMING = {"min_run_time": 0.0, "warmup": 0, "min_runs": 2}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_profile_every_registered_model(name: str) -> None:
    """Profile at the registry's small test input. The receptive field of every image model is traced in
    tests/test_receptive_field.py, so it is left out here to keep the suite fast."""
    info = model_info(name)
    image = info.make_test_input is None and len(info.test_input_size) == 3
    num_classes = 5 if info.task in ("classification", "segmentation") else None
    with torch.device("meta"):  # shapes only: an independent parameter count and a cost estimate
        meta = create_model(name, num_classes=num_classes)
    params = count_params(meta).total
    heavy = image and count_macs(meta.eval(), torch.empty(1, *info.test_input_size, device="meta")) > HEAVY_MACS
    # The training-step memory is exercised in test_measure.py and by the CLI tests below; here every model
    # gets MACs, latency, throughput and its inference peak.
    report = profile_model(name, input_size=info.test_input_size if image else None, batch=1 if heavy else 2,
                           quick=True, timing=TEST_TIMING, memory=not heavy, train_memory=False,
                           receptive_field=False, num_classes=num_classes)
    d = report.to_dict()
    assert d["params"]["total"] == params > 0
    assert d["macs"] >= 0 and d["macs"] == d["flops"]["flops"] // 2
    lat, bt = report.speed.latency, report.speed.batch_timing
    n = 1 if heavy else 2
    assert lat.batch == 1 and bt.batch == n and lat.runs >= 2
    assert lat.q25 <= lat.median <= lat.q75
    # Self-consistency: the reported batch-N throughput is N over the batch-N median time per call.
    assert d["throughput"] == pytest.approx(n / bt.median, rel=1e-9)
    assert d["batch_timing"]["throughput"] == d["throughput"]
    if heavy:
        return
    infer = report.memory["inference"]
    assert infer.peak_bytes >= infer.baseline_bytes >= report.params.param_bytes
    assert infer.extra_bytes > 0  # at least the output
    json.dumps(d)  # serialisable
    assert all(math.isfinite(v) for v in (lat.median, bt.median, d["throughput"]))


def test_profile_cli_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "small_cnn", "--quick", "--batch", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "small_cnn" and data["input_shape"] == [1, 28, 28] and data["batch"] == 4
    assert data["throughput"] == pytest.approx(4 / (data["batch_timing"]["median_ms"] / 1e3))
    assert data["receptive_field"]["feature_layer"]["size"][0] > 1
    assert set(data["memory"]) == {"inference", "train"}
    assert main(["profile", "lenet5", "--quick", "--layers", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "MACs" in out and "latency" in out and "features.0" in out and "total" in out


@pytest.mark.parametrize("argv,message", [
    (["profile", "resnet5O"], "unknown model"),
    (["profile", "small_cnn", "--input", "3xabc"], "--input"),
    (["profile", "small_cnn", "--batch", "0"], "--batch"),
    (["profile", "mlp", "--input", "1x32x32", "--quick"], "cannot run on input"),
])
def test_profile_cli_errors(argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_parse_input_size() -> None:
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size("1X28x28") == (1, 28, 28)


def test_leaderboard_marks_disagreeing_pairs() -> None:
    rows = [{"model": "a", "macs": 100, "latency_ms": 1.0, "latency_iqr_ms": 0.1},
            {"model": "b", "macs": 10, "latency_ms": 2.0, "latency_iqr_ms": 0.1},
            {"model": "c", "macs": 5, "latency_ms": 0.5, "latency_iqr_ms": 0.1}]
    assert disagreeing_pairs(rows) == [("a", "b")]
    text = leaderboard_markdown(rows)
    assert "a has more MACs than b but is faster (beyond the timing spread)" in text and "| a |" in text
    rows[1]["latency_iqr_ms"] = 5.0
    assert "within the timing spread" in leaderboard_markdown(rows)


def test_compare_end_to_end(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", "small_cnn", "lenet5", "mlp", "--data", "mnist-embedded", "--subset", "512", "--epochs",
                 "1", "--quick", "--batch", "8", "--out", str(out), "--set", "train.batch_size=64",
                 "--no-progress"])
    assert code == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "accuracy_vs_latency.png",
                 "macs_vs_latency.png", "params_vs_memory.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["model"] for r in rows] == ["small_cnn", "lenet5", "mlp"]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and 0.0 <= float(row["ece"]) <= 1.0
        assert int(row["params"]) > 0 and int(row["macs"]) > 0
        assert float(row["latency_ms"]) > 0 and float(row["throughput"]) > 0
        assert float(row["peak_train_mib"]) > float(row["peak_inference_mib"]) > 0
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["env"]["torch"] == torch.__version__
    assert [r["model"] for r in data["rows"]] == ["small_cnn", "lenet5", "mlp"]
    # Eight steps on 512 digits: at least one model is well above chance (10 %).
    assert max(float(r["accuracy"]) for r in rows) > 0.3
    assert (out / "small_cnn" / "config.json").is_file()  # the training run directory
    assert "Leaderboard" in capsys.readouterr().out


def test_compare_refuses_bad_arguments(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "small_cnn", "small_cnn", "--data", "mnist-embedded"]) == 2
    assert "only once" in capsys.readouterr().err
    assert main(["compare", "small_cnn", "--data", "mnist-embedded", "--weights", "lenet5=x.safetensors",
                 "--eval-only"]) == 2
    assert "--weights" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

"""Output that reads anywhere: at COLUMNS=80 the leaderboard, profile, tips, models and history tables fit and
cut no number (`--wide` shows every column), progress in a log is plain lines, and every `--json` is JSON."""

from __future__ import annotations

import json
import math

import pytest

from dltricks.cli import main
from dltricks.commands._args import json_text, print_history
from dltricks.commands.compare import print_leaderboard
from dltricks.utils.progress import ProgressBar

ROWS = [
    {"model": "small_cnn", "accuracy": 0.0952, "val_loss": 2.3012, "ece": 0.0143, "params": 27_402,
     "macs": 2_134_016, "latency_ms": 2.345, "latency_iqr_ms": 0.412, "throughput": 82_345.6, "batch": 128,
     "peak_inference_mib": 26.7, "peak_train_mib": 84.2, "train_time_s": 12.3},
    {"model": "mlp", "accuracy": 0.9811, "val_loss": 0.0712, "ece": 0.035, "params": 235_146, "macs": 234_752,
     "latency_ms": 0.123, "latency_iqr_ms": 0.01, "throughput": 191_234.5, "batch": 128, "peak_inference_mib": 1.5,
     "peak_train_mib": 3.2, "train_time_s": 61.5},
    {"model": "resnet50", "accuracy": 0.9952, "val_loss": 0.0212, "ece": float("nan"), "params": 25_557_032,
     "macs": 4_111_514_624, "latency_ms": 123.456, "latency_iqr_ms": 1.5, "throughput": 1_234.5, "batch": 128,
     "peak_inference_mib": 2026.7, "peak_train_mib": 8400.2, "train_time_s": 1234.5},
]


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def _fits(text: str, width: int = 80) -> None:
    assert "…" not in text, text  # rich's mark of a cut cell
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, "\n".join(too_long)


def test_leaderboard_fits_80_columns_without_cutting_numbers(narrow, capsys):
    print_leaderboard(ROWS, title="Leaderboard on cifar10")
    out = capsys.readouterr().out
    _fits(out)
    for number in ("235,146", "25,557,032", "4,111,514,624", "99.52%", "123.456"):
        assert number in out  # the most important columns are kept, whole
    assert "left out" in out and "--wide" in out

    print_leaderboard(ROWS, title="Leaderboard on cifar10", wide=True)
    out = capsys.readouterr().out
    assert "…" not in out and "left out" not in out
    for number in ("82,345.6", "191,234.5", "8400.2", "1234.5", "2.3012"):
        assert number in out


def test_profile_tables_fit_80_columns(narrow, capsys):
    from dltricks.commands.profile import print_report
    from dltricks.measure.profile import profile_model

    report = profile_model("resnet18_cifar", quick=True, latency=False, memory=False, receptive_field=False,
                           layers=True)
    print_report(report)
    out = capsys.readouterr().out
    _fits(out)
    assert f"{report.params.total:,}" in out
    assert all(f"{row.params:,}" in out for row in report.layers if row.params)
    assert all(row.name in out for row in report.layers)  # layer names stay whole


def test_tips_tables_fit_80_columns(narrow, capsys):
    assert main(["tips", "conv.*"]) == 0
    _fits(capsys.readouterr().out)
    assert main(["tips", "conv.*", "--rules"]) == 0
    out = capsys.readouterr().out
    _fits(out)
    assert "rule:" in out and "claim:" in out


def test_models_table_and_history_fit_80_columns(narrow, capsys):
    assert main(["models", "resnet*", "--params"]) == 0
    out = capsys.readouterr().out
    _fits(out)
    assert "60,192,808" in out  # resnet152
    history = [{"epoch": e, "train_loss": 0.5, "train_accuracy": 0.91, "val_loss": 0.4, "val_accuracy": 0.9234,
                "val_dice": 0.8, "val_boundary_f1": 0.7, "lr": 0.05, "images_per_s": 123_456.0,
                "epoch_time_s": 1234.5} for e in (1, 2)]
    print_history(history, title="unet_small on isbi2012-membrane (completed)")
    out = capsys.readouterr().out
    _fits(out)
    assert "92.34%" in out and "0.8000" in out


def test_wide_is_an_option_of_every_table_command(narrow, capsys):
    """`--wide` exists for every command and makes every table full width (issue 24: "--wide for everything")."""
    from dltricks.cli import build_parser
    from dltricks.utils.tables import set_wide

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert all("--wide" in p._option_string_actions for p in sub.choices.values())
    history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.91, "val_loss": 0.4, "val_accuracy": 0.9234,
                "val_dice": 0.8, "val_boundary_f1": 0.7, "lr": 0.05, "images_per_s": 123_456.0,
                "epoch_time_s": 1234.5}]
    print_history(history, title="narrow")
    assert "left out" in capsys.readouterr().out
    try:
        set_wide(True)
        print_history(history, title="wide")
        out = capsys.readouterr().out
    finally:
        set_wide(False)
    assert "left out" not in out and "…" not in out and max(map(len, out.splitlines())) > 80
    assert "123,456" in out and "1234.5" in out
    assert main(["models", "resnet*", "--params", "--wide"]) == 0
    assert "…" not in capsys.readouterr().out


def test_progress_in_a_log_is_plain_lines(capsys):
    with ProgressBar(10, "epoch 1/2", enabled=True, every_s=0.0) as bar:
        for _ in range(10):
            bar.advance(1, loss=0.25)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("epoch 1/2: 1/10 (10%)") and "loss 0.25" in lines[0]
    assert lines[-1].startswith("epoch 1/2: 10/10 (100%)")
    with ProgressBar(10, "quiet", enabled=False) as bar:
        bar.advance(10)
    assert capsys.readouterr().err == ""


def test_json_text_is_strict_json():
    text = json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}, "e": (1, 2)})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) == \
        {"a": None, "b": [1.0, None], "c": {"d": None}, "e": [1, 2]}


@pytest.mark.parametrize("argv", [["models", "lenet*", "--json"], ["tips", "conv.*", "--json"],
                                  ["profile", "lenet5", "--quick", "--no-latency", "--no-memory", "--json"]])
def test_every_json_output_is_json(argv, capsys):
    assert main(argv) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

"""The measurement experiments return sound numbers (small settings; the full runs are in
benchmarks/measure_efficiency.py and docs/measure.md)."""

from __future__ import annotations

import pytest

from dltricks import list_models
from dltricks.experiments.measure import (flops_vs_latency, params_vs_memory, plot_flops_vs_latency,
                                          plot_params_vs_memory, plot_receptive_field_comparisons,
                                          receptive_field_comparisons, spearman)


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_receptive_field_comparisons(tmp_path) -> None:
    result = receptive_field_comparisons(channels=4, size=40, erf_samples=2)
    configs = result["configs"]
    for name, c in configs.items():
        assert c["rf"] == c["rf_exact"], name
    assert configs["two 3x3"]["rf"] == configs["one 5x5"]["rf"] == 5
    assert configs["three 3x3"]["rf"] == configs["one 7x7"]["rf"] == 7
    assert configs["3x3 dilation 2"]["rf"] == 5 and configs["3x3 dilation 2"]["weights"] == 9 * 16
    assert result["two3x3_over_5x5"] == pytest.approx(18 / 25)
    assert result["three3x3_over_7x7"] == pytest.approx(27 / 49)
    # Dilation and striding reach the same field at equal depth; striding loses the resolution.
    assert configs["four 3x3 (dilation 1,2,4,8)"]["rf"] == configs["four 3x3 (stride 2 each)"]["rf"] == 31
    assert configs["four 3x3 (stride 2 each)"]["resolution"] < configs["four 3x3 (dilation 1,2,4,8)"]["resolution"]
    assert plot_receptive_field_comparisons(result, tmp_path / "rf.png").stat().st_size > 1000


@pytest.mark.skipif(not {"resnet18", "mobilenet_v2"} <= set(list_models()), reason="needs resnet18 and mobilenet_v2")
def test_flops_latency_and_memory_experiments(tmp_path) -> None:
    models = ("resnet18", "mobilenet_v2")
    lat = flops_vs_latency(models, input_size=(3, 32, 32), min_run_time=0.0, min_runs=3, warmup=0)
    assert [r["model"] for r in lat["rows"]] == list(models)
    assert lat["rows"][0]["macs"] > lat["rows"][1]["macs"] > 0
    assert all(r["latency_ms"] > 0 and r["gmacs_per_s"] > 0 for r in lat["rows"])
    mem = params_vs_memory(models, input_size=(3, 32, 32), batch=2)
    for r in mem["rows"]:
        assert r["train_peak_mib"] > r["inference_peak_mib"] > r["param_mib"] * 0.99
        assert 0 <= r["activation_share"] < 1
    assert plot_flops_vs_latency(lat, tmp_path / "a.png").is_file()
    assert plot_params_vs_memory(mem, tmp_path / "b.png").is_file()

"""Segmentation experiments (a), (d), (e): numbers against formulas; plots are written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dltricks.experiments import segmentation as seg


@given(size=st.integers(1, 40), rate=st.integers(1, 50))
@settings(max_examples=60, deadline=None)
def test_valid_taps_formula_matches_convolution_count(size: int, rate: int) -> None:
    result = seg.aspp_degeneration(feature_size=size, rates=[rate])
    counts = seg.valid_taps_formula(size, rate).double()
    assert result["mean_valid_fraction"][0] == pytest.approx(counts.mean().item() / 9)
    for n, fractions in result["fraction_with"].items():
        assert fractions[0] == pytest.approx((counts == n).double().mean().item())


def test_aspp_degenerates_to_1x1_on_65x65(tmp_path: Path) -> None:
    result = seg.aspp_degeneration()  # 65x65, rates 1..72
    rates = result["rates"]
    nine = result["fraction_with"][9]
    assert nine[rates.index(1)] > 0.93  # rate 1: all 9 taps valid almost everywhere
    assert nine[rates.index(6)] > nine[rates.index(12)] > nine[rates.index(18)]
    assert nine[rates.index(33)] == 0.0  # beyond half the map no position sees all 9 taps
    # From rate 65 on, only the centre tap is ever valid: the 3x3 filter is a 1x1 filter.
    assert result["degenerate_from_rate"] == 65
    assert result["mean_valid_fraction"][rates.index(65)] == pytest.approx(1 / 9)
    assert seg.plot_aspp_degeneration(result, tmp_path / "a.png").stat().st_size > 0


def test_receptive_field_growth_formula_and_plot(tmp_path: Path) -> None:
    result = seg.receptive_field_growth(depths=(1, 2, 3, 4, 5), input_size=64, trace=False)
    kinds = result["kinds"]
    assert kinds["plain"]["rf_formula"] == [3, 5, 7, 9, 11]
    assert kinds["strided"]["rf_formula"] == kinds["dilated"]["rf_formula"] == [3, 7, 15, 31, 63]
    assert kinds["strided"]["output_size"] == [32, 16, 8, 4, 2]
    assert kinds["dilated"]["output_size"] == [64] * 5  # same field, full resolution
    assert seg.plot_receptive_field_growth(result, tmp_path / "d.png").stat().st_size > 0


def test_receptive_field_formula_matches_measurement() -> None:
    """The textbook recursion equals the tracer's and the gradient's receptive field."""
    result = seg.receptive_field_growth(depths=(2, 3), input_size=32, trace=True)
    for rows in result["kinds"].values():
        assert rows["rf_traced"] == rows["rf_formula"]
        assert rows["rf_gradient"] == rows["rf_formula"]


def test_checkerboard_artifacts(tmp_path: Path) -> None:
    result = seg.checkerboard_artifacts(size=12, channels=4, seeds=3)
    methods = result["methods"]
    # Uneven overlap: with all-ones weights outputs get 1, 2, 2, 4 taps -> relative std sqrt(1.1875) / 2.25.
    assert methods["transposed k3 s2"]["ones_relative_std"] == pytest.approx(1.1875 ** 0.5 / 2.25, rel=1e-5)
    assert methods["transposed k4 s2"]["ones_relative_std"] < 1e-6
    assert methods["transposed k2 s2"]["ones_relative_std"] < 1e-6
    for name in ("nearest + conv3x3", "bilinear + conv3x3"):
        assert methods[name]["ones_relative_std"] < 1e-6
        assert methods[name]["random_checkerboard_mean"] < 1e-5  # no pattern for any weights
    # Random weights give every transposed conv a pattern, divisible kernel or not.
    assert methods["transposed k4 s2"]["random_checkerboard_mean"] > 0.1
    assert seg.plot_checkerboard(result, tmp_path / "e.png").stat().st_size > 0


def test_count_macs() -> None:
    net = torch.nn.Conv2d(2, 3, 3, padding=1)
    assert seg.count_macs(net, (1, 2, 8, 8)) == 2 * 3 * 9 * 64


def test_error_and_weight_map_figures(tmp_path) -> None:
    from PIL import Image

    from dltricks.experiments.segmentation import plot_error_map, plot_weight_map
    from dltricks.tasks.segmentation.weights import unet_weight_map

    membrane = torch.zeros(32, 32, dtype=torch.bool)
    membrane[:, 14:17] = True
    predicted = torch.roll(membrane, 1, dims=1)
    image = torch.rand(32, 32)
    for path in (plot_error_map(image, membrane, predicted, tmp_path / "errors.png", title="t"),
                 plot_weight_map(image, membrane, unet_weight_map(membrane), tmp_path / "weights.png")):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 400

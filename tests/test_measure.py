"""Parameters, FLOPs/MACs, the per-layer table, latency and peak memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks import create_model, list_models
from dltricks.measure import (count_flops, count_macs, count_params, layer_table, measure_latency, measure_speed,
                              params_by_module, peak_memory, time_function)
from dltricks.measure.memory import profiled_peak_bytes, tensor_bytes

# ---------------------------------------------------------------------------------------------
# Parameters


def test_count_params_counts_shared_weights_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(4))
    model[3].weight.requires_grad_(False)
    p = count_params(model)
    assert p.total == 20 + 8 and p.trainable == 20 + 4 and p.frozen == 4
    assert p.param_bytes == 28 * 4
    assert p.buffers == 4 + 4 + 1  # running mean, var, num_batches_tracked
    own = params_by_module(model)
    assert sum(own.values()) == p.total
    assert params_by_module(model, recurse=True)[""] == p.total


@pytest.mark.parametrize("name,published", [("resnet50", 25_557_032), ("mobilenet_v2", 3_504_872),
                                            ("convnext_tiny", 28_589_128)])
def test_published_parameter_counts(name: str, published: int) -> None:
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    with torch.device("meta"):
        model = create_model(name)
    assert count_params(model).total == published


# ---------------------------------------------------------------------------------------------
# FLOPs / MACs


def test_conv_and_linear_macs_by_formula() -> None:
    conv = nn.Conv2d(64, 256, 3, padding=1)
    x = torch.randn(2, 64, 14, 14)
    assert count_macs(conv, x) == 2 * 14 * 14 * 256 * 64 * 9  # bias not counted
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    assert count_macs(dw, torch.randn(1, 32, 8, 8)) == 8 * 8 * 32 * 9
    lin = nn.Linear(100, 30)
    assert count_macs(lin, torch.randn(5, 100)) == 5 * 100 * 30
    # Elementwise work is not counted.
    assert count_macs(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3).eval(), nn.MaxPool2d(2)), torch.randn(1, 3, 8, 8)) == 0


def test_cpu_attention_kernel_is_counted() -> None:
    """torch 2.13 has no formula for aten._scaled_dot_product_flash_attention_for_cpu; ours must match
    the explicit matmul version."""
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))

    class Fused(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    class Explicit(nn.Module):
        def forward(self, q, k, v):
            return ((q @ k.transpose(-2, -1)) / math.sqrt(8)).softmax(-1) @ v

    fused = count_flops(Fused(), q, k, v)
    assert fused.flops == count_flops(Explicit(), q, k, v).flops == 2 * (2 * 3 * 10 * 10 * 8) * 2
    # Backward: forward + (dq, dk, dv, dattention) products.
    q.requires_grad_(True)
    back = count_flops(Fused(), q, k, v, backward=True)
    assert back.flops > fused.flops


def test_backward_conv_flops_are_twice_forward() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(1, 8, 10, 10, requires_grad=True)
    fwd = count_flops(conv, x).flops
    assert count_flops(conv, x, backward=True).flops == 3 * fwd  # forward + grad input + grad weight


# Forward MACs at 1x3x224x224 (the CNN issue's figures, +-1 %). Counted on the meta device: shapes only.
PUBLISHED_MACS = {"resnet50": 4.09e9, "convnext_tiny": 4.46e9, "mobilenet_v2": 0.30e9, "resnet18": 1.82e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_published_macs_at_224(name: str) -> None:
    if name not in list_models():
        pytest.skip(f"{name} is not registered yet")
    model = create_model(name).to("meta").eval()
    macs = count_macs(model, torch.empty(1, 3, 224, 224, device="meta"))
    assert macs == pytest.approx(PUBLISHED_MACS[name], rel=0.01), f"{name}: {macs / 1e9:.3f} G MACs"


def test_flops_by_module_add_up() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5))
    result = count_flops(model, torch.randn(1, 3, 8, 8))
    assert result.by_module[""] == result.flops
    assert result.by_module["0"] + result.by_module["1"] + result.by_module["3"] == result.flops
    assert set(result.by_op) == {"convolution", "addmm"}


# ---------------------------------------------------------------------------------------------
# Per-layer table


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224", "small_cnn"])
def test_layer_table_sums_to_totals(name: str) -> None:
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    model = create_model(name, num_classes=10).eval()
    size = {"small_cnn": (1, 28, 28), "vit_tiny_patch16_224": (3, 224, 224)}.get(name, (3, 64, 64))
    x = torch.randn(1, *size)
    rows = layer_table(model, (x,))
    total = count_flops(model, x).macs
    assert sum(r.macs for r in rows) == total
    assert sum(r.params for r in rows) == count_params(model).total
    assert rows[-1].output_shape == (1, 10) or any(r.output_shape == (1, 10) for r in rows)
    by_stage = layer_table(model, (x,), depth=1)
    assert sum(r.macs for r in by_stage) == total
    assert sum(r.params for r in by_stage) == count_params(model).total


def test_layer_table_rows() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    rows = layer_table(model, (torch.randn(2, 1, 5, 5),))
    assert [(r.name, r.type, r.output_shape, r.params, r.macs) for r in rows] == [
        ("0", "Conv2d", (2, 4, 5, 5), 40, 2 * 25 * 4 * 9),
        ("1", "ReLU", (2, 4, 5, 5), 0, 0),
        ("2", "Flatten", (2, 100), 0, 0),
        ("3", "Linear", (2, 3), 303, 2 * 100 * 3),
    ]


# ---------------------------------------------------------------------------------------------
# Latency


def test_timing_reports_spread() -> None:
    x = torch.randn(64, 64)
    t = time_function(lambda: x @ x, min_run_time=0.01, warmup=1, min_runs=5)
    assert t.runs >= 5 and t.number_per_run >= 1
    assert 0 < t.q25 <= t.median <= t.q75 and t.iqr >= 0
    assert t.throughput == pytest.approx(1 / t.median)
    assert t.to_dict()["median_ms"] == pytest.approx(t.median * 1e3)


def test_throughput_is_n_over_batch_latency() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    speed = measure_speed(model, lambda n: (torch.randn(n, 3, 16, 16),), batch=6, min_run_time=0.01, warmup=1,
                          min_runs=3)
    assert speed.latency.batch == 1 and speed.batch_timing.batch == 6
    assert speed.throughput == pytest.approx(6 / speed.batch_timing.median, rel=1e-12)
    lo, hi = speed.batch_timing.throughput_range
    assert lo <= speed.throughput <= hi


def test_train_mode_latency_restores_state() -> None:
    model = nn.Linear(8, 2)
    model.eval()
    t = measure_latency(model, (torch.randn(4, 8),), mode="train", min_run_time=0.005, warmup=1, min_runs=3)
    assert t.median > 0 and not model.training and model.weight.grad is None


# ---------------------------------------------------------------------------------------------
# Peak memory


def test_profiled_peak_counts_frees() -> None:
    def work() -> None:
        a = torch.empty(1_000_000, dtype=torch.uint8)
        b = torch.empty(2_000_000, dtype=torch.uint8)
        del a
        c = torch.empty(1_500_000, dtype=torch.uint8)
        del b, c

    peak = profiled_peak_bytes(work)
    assert 3_500_000 <= peak <= 3_500_000 + 4096  # b + c live together; a was freed before c (a + b = 3.0 MB)


def test_peak_memory_inference_and_train() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    x = torch.randn(8, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer = peak_memory(model, (x,), mode="inference")
    assert infer.method == "profiler"
    assert infer.baseline_bytes == tensor_bytes(model.parameters()) + tensor_bytes(model.buffers()) + x.numel() * 4
    activation = 8 * 16 * 32 * 32 * 4  # one (8, 16, 32, 32) feature map
    assert infer.extra_bytes >= activation
    train = peak_memory(model, (x,), mode="train", optimizer="sgd")
    # Gradients of every parameter plus the activations autograd keeps (two conv outputs, two ReLU outputs).
    assert train.extra_bytes >= tensor_bytes(model.parameters()) + 3 * activation
    assert train.parts["optimizer_state"] == tensor_bytes(model.parameters())  # one momentum buffer each
    assert train.peak_bytes > infer.peak_bytes
    # Nothing changed, and a second measurement after a training step is not inflated.
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert peak_memory(model, (x,), mode="inference").peak_bytes == infer.peak_bytes
    # Twice the batch: more activation memory, same parameters.
    assert peak_memory(model, (torch.randn(16, 3, 32, 32),), mode="train").extra_bytes > train.extra_bytes


def test_param_count_as_a_dict() -> None:
    """Every field under its name, frozen = total - trainable (the keys are read by reports and --json)."""
    from dltricks.measure.params import ParamCount

    count = ParamCount(total=10, trainable=7, param_bytes=40, buffers=3, buffer_bytes=24)
    assert count.to_dict() == {"total": 10, "trainable": 7, "frozen": 3, "param_bytes": 40, "buffers": 3,
                               "buffer_bytes": 24}


@pytest.mark.parametrize("n, unit, text", [
    (25_557_032, "", "25.56 M"), (4.09e9, "", "4.09 G"), (2.5e12, "MACs", "2.50 TMACs"), (1e12, "", "1.00 T"),
    (999_999_999_999, "", "1000.00 G"), (1e9, "", "1.00 G"), (999_999_999, "", "1000.00 M"), (1e6, "B", "1.00 MB"),
    (999_999, "", "1000.00 k"), (1000, "", "1.00 k"), (999, "", "999"), (999, "B", "999 B"), (0, "", "0"),
    (-2e6, "", "-2.00 M"), (12.5, "", "12.5"), (12.5, "ms", "12.5 ms"), (0.0123456, "", "0.0123"),
])
def test_format_count_at_every_threshold(n: float, unit: str, text: str) -> None:
    from dltricks.measure.params import format_count

    assert format_count(n, unit) == text
    if not unit:
        assert format_count(n) == text  # the default unit is none


class _TwoOutputs(nn.Module):
    """A linear layer whose output comes back as a tuple, a dict or (for a bad model) a string."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x: torch.Tensor, *, times: int = 1):
        y = sum(self.fc(x) for _ in range(times))
        if self.kind == "tuple":
            return y, (y * 2, [y])
        if self.kind == "dict":
            return {"a": y, "b": {"c": y}}
        return "not a tensor"


def test_flop_count_by_module_kwargs_backward_and_its_dict() -> None:
    """The counts of a (4 -> 3) linear layer on a batch of 2: 2 * 2 * 4 * 3 = 48 FLOPs forward; the module
    breakdown names the root "" and the child; keyword arguments reach the model (``times=2`` runs the layer
    twice); backward=True reduces tuple
    and dict outputs (nested) and adds the weight gradient's matrix product (48 FLOPs; the input needs no
    gradient)."""
    from dltricks.measure.flops import FlopCount, count_flops, image_input

    x = torch.randn(2, 4)
    for kind in ("tuple", "dict"):
        model = _TwoOutputs(kind)
        forward = count_flops(model, x)
        assert forward.flops == 48 and forward.macs == 24 and forward.by_op == {"addmm": 48}
        assert forward.by_module == {"": 48, "fc": 48}
        assert count_flops(model, x, times=2).flops == 96
        both = count_flops(model, x, backward=True)
        assert both.flops == 96 and both.by_op == {"addmm": 48, "mm": 48} and both.by_module == {"": 96, "fc": 96}
        assert count_flops(model, x, backward=True, times=2).flops == 192
    with pytest.raises(TypeError, match="cannot reduce a model output of type str"):
        count_flops(_TwoOutputs("str"), x, backward=True)
    assert FlopCount(flops=10, by_op={"mm": 10}).to_dict() == {"flops": 10, "macs": 5, "by_op": {"mm": 10}}
    batch = image_input((3, 8, 5), batch=4, dtype=torch.float64)
    assert batch.shape == (4, 3, 8, 5) and batch.dtype == torch.float64 and batch.device.type == "cpu"
    assert image_input((1, 2, 2)).shape == (1, 1, 2, 2) and image_input((1, 2, 2)).dtype == torch.float32


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.fc(x), "skip": x[:, :1]}  # a dict output: its first value gives the shape


class _Split(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :3], x[:, 3:]  # a tuple output: its first element gives the shape


class _Tag(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "not a tensor"  # no shape


class _TableNet(nn.Module):
    """A root with its own parameter, a ModuleList never called itself, a module called three times, a tuple, a
    dict and a string output, and a module never called."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(4))
        self.stem = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.act = nn.ReLU()
        self.split = _Split()
        self.head = nn.Linear(3, 2)
        self.unused = nn.Linear(2, 2)
        self.tag = _Tag()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tag(x)
        h = self.act(self.stem(x)) + self.token
        for block in self.blocks:
            h = self.act(block(h)["y"])
        return self.head(self.split(h)[0])


def test_layer_table_rows_of_a_hand_built_model() -> None:
    """Every row of every depth worked out by hand (batch 2: stem 2*3*4 = 24 MACs, each block 32, head 12)."""
    from dltricks.measure.layer_table import LayerRow, format_shape

    model = _TableNet()
    x = torch.randn(2, 3)
    rows = [r.to_dict() for r in layer_table(model, (x,))]
    assert rows == [
        {"name": "(model)", "type": "_TableNet", "output_shape": None, "params": 4, "macs": 0, "calls": 1},
        {"name": "tag", "type": "_Tag", "output_shape": None, "params": 0, "macs": 0, "calls": 1},
        {"name": "stem", "type": "Linear", "output_shape": [2, 4], "params": 16, "macs": 24, "calls": 1},
        {"name": "act", "type": "ReLU", "output_shape": [2, 4], "params": 0, "macs": 0, "calls": 3},
        {"name": "blocks.0.fc", "type": "Linear", "output_shape": [2, 4], "params": 20, "macs": 32, "calls": 1},
        {"name": "blocks.1.fc", "type": "Linear", "output_shape": [2, 4], "params": 20, "macs": 32, "calls": 1},
        {"name": "split", "type": "_Split", "output_shape": [2, 3], "params": 0, "macs": 0, "calls": 1},
        {"name": "head", "type": "Linear", "output_shape": [2, 2], "params": 8, "macs": 12, "calls": 1},
        {"name": "unused", "type": "Linear", "output_shape": None, "params": 6, "macs": 0, "calls": 0},
    ]
    assert all(isinstance(r["macs"], int) for r in rows)  # whole multiply-adds
    one = [(r.name, r.output_shape, r.params, r.macs, r.calls) for r in layer_table(model, (x,), depth=1)]
    assert all(isinstance(r[3], int) for r in one)
    assert one == [("(model)", None, 4, 0, 1), ("tag", None, 0, 0, 1), ("stem", (2, 4), 16, 24, 1),
                   ("act", (2, 4), 0, 0, 3), ("blocks", None, 40, 64, 0), ("split", (2, 3), 0, 0, 1),
                   ("head", (2, 2), 8, 12, 1), ("unused", None, 6, 0, 0)]
    two = {r.name: (r.type, r.output_shape, r.params, r.macs) for r in layer_table(model, (x,), depth=2)}
    assert two["blocks.0"] == ("_Block", (2, 4), 20, 32) and two["blocks.1"] == ("_Block", (2, 4), 20, 32)
    assert "blocks" not in two and "blocks.0.fc" not in two and two["stem"] == ("Linear", (2, 4), 16, 24)
    assert sum(r.params for r in layer_table(model, (x,), depth=2)) == sum(p.numel() for p in model.parameters())
    assert LayerRow("a", "T", None, 1, 2).to_dict() == {"name": "a", "type": "T", "output_shape": None,
                                                        "params": 1, "macs": 2, "calls": 1}
    assert format_shape(None) == "-" and format_shape((2, 3, 4)) == "2x3x4" and format_shape(()) == ""

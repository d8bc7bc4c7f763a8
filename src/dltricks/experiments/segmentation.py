"""Experiments on keeping resolution: atrous rates, output stride, skips, receptive fields, checkerboards.

Each experiment is a plain function returning a dict of numbers; ``plot_*`` functions draw them
(matplotlib, Agg) into PNG files; ``python -m dltricks.experiments.segmentation a b c d e --out DIR`` runs
them and writes ``results.json`` plus the plots. Measured results are in ``docs/segmentation.md``.

(a) :func:`aspp_degeneration` - the fraction of a 3x3 atrous filter's weights that land inside a 65x65
    feature map (not on padding) as the rate grows (DeepLabV3, Chen et al. 2017, Fig. 4). With rate
    ``r`` the taps of output ``i`` sit at ``i - r, i, i + r``; along one axis ``c(i) = 1 + [i >= r] +
    [i + r < n]`` of them are valid and in 2D ``c(i) c(j)`` of the 9. Once ``r >= n`` only the centre tap is
    valid everywhere: the filter has degenerated to a 1x1 conv. Counted by convolving an all-ones map
    with an all-ones 3x3 kernel at each rate and checked against the formula in the tests.
(b) :func:`output_stride_tradeoff` - DeepLabV3 at output stride 8 / 16 / 32 trained on ISBI 2012: Dice and
    boundary F1 vs forward MACs, parameters and latency.
(c) :func:`skip_ablation` - U-Net with vs without skip connections, accuracy on the pixels within 2 px of
    a true boundary vs the rest.
(d) :func:`receptive_field_growth` - stacks of ``L`` 3x3 convs: plain, stride 2 at every layer, and
    dilation ``2^(l-1)`` at layer ``l`` (Yu & Koltun, "Multi-Scale Context Aggregation by Dilated
    Convolutions", ICLR 2016). Textbook recursion ``size_l = size_{l-1} + (k - 1) d_l jump_{l-1}``,
    ``jump_l = jump_{l-1} s_l``, checked against :mod:`dltricks.measure.receptive_field`'s graph tracer and
    gradient support: plain ``2L + 1``; strided and dilated both ``2^(L+1) - 1``, but the dilated stack
    keeps the full resolution.
(e) :func:`checkerboard_artifacts` - a constant input through transposed convs with kernel 3 / stride 2
    (not divisible), kernel 4 and 2 / stride 2 (divisible), and resize + 3x3 conv (Odena, Dumoulin & Olah,
    Distill 2016), with all-ones and with random weights; score
    :func:`dltricks.layers.upsample.checkerboard_score` and the relative standard deviation of the interior.
(f) :func:`token_mixer_ablation` - MambaOut's Hypothesis 2 on a long, non-causal visual task: the same plain
    encoder with Vision Mamba blocks (bidirectional SSM) or MambaOut's Gated CNN blocks (no SSM), trained on
    ISBI crops whose token count is ``(crop_size / patch_size)^2`` (4,096 for 128 px crops and 2x2 patches)
    and evaluated with sliding windows of the training crop, so evaluation sees as many tokens as training.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.train import fit, task_for_recipe
from dltricks.train.recipe import Recipe, load_recipe
from dltricks.utils.figures import jsonable, save_figure
from dltricks.utils.io import atomic_write_json

__all__ = ["plot_error_map", "plot_weight_map", "aspp_degeneration", "valid_taps_formula", "receptive_field_growth",
           "dilated_stack", "checkerboard_artifacts", "output_stride_tradeoff", "skip_ablation", "count_macs",
           "plot_aspp_degeneration", "plot_receptive_field_growth", "plot_checkerboard", "plot_output_stride",
           "plot_skip_ablation", "token_mixer_ablation", "plot_token_mixer_ablation", "main"]


# --- (a) ASPP degeneration -------------------------------------------------------------------------------


def valid_taps_formula(size: int, rate: int, kernel_size: int = 3) -> torch.Tensor:
    """``(size, size)`` number of taps of a ``kernel_size`` filter at ``rate`` that fall inside the map."""
    half = kernel_size // 2
    i = torch.arange(size)
    offsets = torch.arange(-half, half + 1) * rate  # (k,)
    pos = i[:, None] + offsets[None, :]  # (size, k)
    per_axis = ((pos >= 0) & (pos < size)).sum(1)  # (size,)
    return per_axis[:, None] * per_axis[None, :]  # (size, size)


def aspp_degeneration(feature_size: int = 65, rates: Sequence[int] = tuple(range(1, 73)),
                      kernel_size: int = 3) -> dict[str, Any]:
    """For each rate, how many of the ``kernel_size**2`` weights of an atrous filter see the feature map.

    Returns per rate: ``mean_valid_fraction`` (average over output positions of valid taps / k^2) and
    ``fraction_with[n]`` (share of output positions with exactly ``n`` valid taps, for n = 1, 2, 3, 4, 6, 9),
    counted by convolving a ones map with a ones kernel (zero padding = invalid).
    """
    ones = torch.ones(1, 1, feature_size, feature_size, dtype=torch.float64)
    kernel = torch.ones(1, 1, kernel_size, kernel_size, dtype=torch.float64)
    half = kernel_size // 2
    result: dict[str, Any] = {"feature_size": feature_size, "kernel_size": kernel_size, "rates": list(rates),
                              "mean_valid_fraction": [], "fraction_with": {}}
    counts_seen = sorted({a * b for a in range(1, kernel_size + 1) for b in range(1, kernel_size + 1)})
    for n in counts_seen:
        result["fraction_with"][n] = []
    for rate in rates:
        # Conv2d pads with zeros, so the output counts the taps that land inside the map.
        valid = F.conv2d(ones, kernel, padding=half * rate, dilation=rate)[0, 0].round().long()  # (size, size)
        result["mean_valid_fraction"].append(valid.double().mean().item() / kernel_size ** 2)
        for n in counts_seen:
            result["fraction_with"][n].append((valid == n).double().mean().item())
    # The rates at which the filter has degenerated to 1x1 (only the centre tap valid everywhere).
    result["degenerate_from_rate"] = next((r for r, f in zip(rates, result["fraction_with"][1]) if f == 1.0), None)
    return result


def plot_aspp_degeneration(result: dict[str, Any], path: str | Path) -> Path:
    """Normalised count of positions with 1, 4 and 9 valid weights vs rate (DeepLabV3 Fig. 4 layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    k2 = result["kernel_size"] ** 2
    for n, style in ((1, "-"), (4, "--"), (k2, "-.")):
        ax.plot(result["rates"], result["fraction_with"][n], style, label=f"{n} valid weight{'s' if n > 1 else ''}")
    ax.plot(result["rates"], result["mean_valid_fraction"], ":", color="k", label="mean fraction of valid weights")
    ax.set_xlabel("atrous rate")
    ax.set_ylabel("normalized count")
    ax.set_title(f"{result['kernel_size']}x{result['kernel_size']} filter on a "
                 f"{result['feature_size']}x{result['feature_size']} feature map")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


# --- (d) receptive-field growth --------------------------------------------------------------------------


def dilated_stack(depth: int, kind: str, *, channels: int = 4, in_chans: int = 1, seed: int = 0) -> nn.Sequential:
    """``depth`` 3x3 conv + ReLU layers: ``"plain"``, ``"strided"`` (stride 2 each) or ``"dilated"`` (rate 2^(l-1))."""
    if kind not in ("plain", "strided", "dilated"):
        raise ValueError(f"kind must be 'plain', 'strided' or 'dilated', got {kind!r}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = in_chans
    for layer in range(depth):
        stride = 2 if kind == "strided" else 1
        dilation = 2 ** layer if kind == "dilated" else 1
        layers += [nn.Conv2d(c, channels, 3, stride=stride, padding=dilation, dilation=dilation), nn.ReLU()]
        c = channels
    return nn.Sequential(*layers)


def _rf_formula(depth: int, kind: str) -> tuple[int, int]:
    """Textbook (size, jump) after ``depth`` layers (Araujo et al., Distill 2019)."""
    size, jump = 1, 1
    for layer in range(depth):
        stride = 2 if kind == "strided" else 1
        dilation = 2 ** layer if kind == "dilated" else 1
        size += (3 - 1) * dilation * jump
        jump *= stride
    return size, jump


def receptive_field_growth(depths: Sequence[int] = tuple(range(1, 8)), *, input_size: int = 256,
                           trace: bool = True) -> dict[str, Any]:
    """Receptive field (formula, graph trace, gradient support) and output size of plain / strided / dilated stacks.

    ``trace=False`` skips the measurement with :mod:`dltricks.measure.receptive_field` (formula only).
    Per kind and depth: ``rf_formula``, ``rf_traced``, ``rf_gradient`` (side of the exact support for the
    centre unit on an ``input_size`` image; clipped when the field exceeds the image), ``output_size``,
    ``macs_per_input_pixel`` (with 4 channels).
    """
    result: dict[str, Any] = {"depths": list(depths), "input_size": input_size, "kinds": {}}
    if trace:
        from dltricks.measure.receptive_field import gradient_support, support_box, theoretical_receptive_field
    for kind in ("plain", "strided", "dilated"):
        rows: dict[str, list[Any]] = {"rf_formula": [], "rf_traced": [], "rf_gradient": [], "output_size": [],
                                      "macs_per_input_pixel": []}
        for depth in depths:
            net = dilated_stack(depth, kind).eval()
            size, _ = _rf_formula(depth, kind)
            rows["rf_formula"].append(size)
            with torch.no_grad():
                out = net(torch.zeros(1, 1, input_size, input_size))
            rows["output_size"].append(int(out.shape[-1]))
            macs = count_macs(net, (1, 1, input_size, input_size))
            rows["macs_per_input_pixel"].append(macs / input_size ** 2)
            if trace:
                canvas = max(input_size, 2 * size + 1)
                rows["rf_traced"].append(theoretical_receptive_field(net, (1, canvas, canvas), layer="").size[0])
                # The centre unit of the output (gradient_support's default unit is the whole output).
                centre = {2: _out_center(net, canvas), 3: _out_center(net, canvas)}
                mask = gradient_support(net, (1, canvas, canvas), units={"": centre})[""]
                box = support_box(mask)
                rows["rf_gradient"].append(None if box is None else box[2] - box[0] + 1)
        result["kinds"][kind] = rows
    return result


def _out_center(net: nn.Module, size: int) -> int:
    """Index of the centre unit of ``net``'s output on a ``size`` input."""
    with torch.no_grad():
        return int(net(torch.zeros(1, 1, size, size)).shape[-1]) // 2


def plot_receptive_field_growth(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, rows in result["kinds"].items():
        ax.plot(result["depths"], rows["rf_formula"], "o-", label=kind)
        ax2.plot(result["depths"], rows["output_size"], "o-", label=kind)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("depth (3x3 conv layers)")
    ax.set_ylabel("receptive field (pixels)")
    ax.set_title("receptive field")
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("depth (3x3 conv layers)")
    ax2.set_ylabel(f"output side for a {result['input_size']} input")
    ax2.set_title("resolution kept")
    for a in (ax, ax2):
        a.legend()
        a.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


# --- (e) checkerboard artifacts --------------------------------------------------------------------------


def _upsamplers(channels: int) -> dict[str, nn.Module]:
    from dltricks.layers.upsample import ResizeConvUpsample, TransposedConvUpsample

    return {
        "transposed k3 s2": TransposedConvUpsample(channels, channels, 2, kernel_size=3),
        "transposed k4 s2": TransposedConvUpsample(channels, channels, 2, kernel_size=4),
        "transposed k2 s2": TransposedConvUpsample(channels, channels, 2, kernel_size=2),
        "nearest + conv3x3": ResizeConvUpsample(channels, channels, 2, mode="nearest", kernel_size=3),
        "bilinear + conv3x3": ResizeConvUpsample(channels, channels, 2, mode="bilinear", kernel_size=3),
    }


def checkerboard_artifacts(*, size: int = 16, channels: int = 8, seeds: int = 10, border: int = 4) -> dict[str, Any]:
    """2x upsampling of a constant input by each method; how uneven is the interior of the output?

    Two weight settings: all-ones (bias 0) isolates the *overlap* pattern of the kernel; PyTorch's default
    random init (``seeds`` draws) adds the pattern the weights themselves create. Metrics on the output
    without its ``border`` pixels: ``relative_std`` (std / |mean|) and ``checkerboard_score`` (spread of the
    four 2x2 phase means relative to the mean magnitude, :func:`dltricks.layers.upsample.checkerboard_score`).
    """
    from dltricks.layers.upsample import checkerboard_score

    x = torch.ones(1, channels, size, size)
    result: dict[str, Any] = {"size": size, "channels": channels, "seeds": seeds, "methods": {}}
    for name in _upsamplers(channels):
        entry: dict[str, Any] = {}
        # All-ones weights.
        module = _upsamplers(channels)[name]
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(1.0 if p.dim() > 1 else 0.0)
            y = module(x)
        interior = y[..., border:-border, border:-border]
        entry["ones_relative_std"] = (interior.std(unbiased=False) / interior.mean().abs()).item()
        entry["ones_checkerboard"] = checkerboard_score(y, 2, border=border)
        entry["ones_map"] = y[0, 0].tolist()
        # Random init.
        scores, rel = [], []
        for seed in range(seeds):
            torch.manual_seed(seed)
            module = _upsamplers(channels)[name]
            with torch.no_grad():
                y = module(x)
            interior = y[..., border:-border, border:-border]
            scores.append(checkerboard_score(y, 2, border=border))
            # Per channel: spatial std over the interior relative to the channel's mean magnitude.
            rel.append((interior.std(dim=(-2, -1), unbiased=False)
                        / interior.abs().mean(dim=(-2, -1)).clamp_min(1e-12)).mean().item())
            if seed == 0:
                entry["random_map"] = y[0, 0].tolist()
        entry["random_checkerboard_mean"] = statistics.fmean(scores)
        entry["random_checkerboard_std"] = statistics.pstdev(scores)
        entry["random_relative_std_mean"] = statistics.fmean(rel)
        result["methods"][name] = entry
    return result


def plot_checkerboard(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["methods"])
    fig, axes = plt.subplots(2, len(methods), figsize=(2.6 * len(methods), 5.4))
    for col, name in enumerate(methods):
        entry = result["methods"][name]
        for row, key, label in ((0, "ones_map", "all-ones weights"), (1, "random_map", "random init")):
            ax = axes[row, col]
            image = np.asarray(entry[key], dtype=np.float64)
            # All-ones weights: a flat output shows as one grey (scale from 0), the pattern as contrast.
            low = 0.0 if row == 0 else float(image.min())
            ax.imshow(image, cmap="gray", vmin=low, vmax=max(float(image.max()), low + 1e-6))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{name}\nrel. std {entry['ones_relative_std']:.2f}", fontsize=9)
            else:
                ax.set_title(f"checkerboard {entry['random_checkerboard_mean']:.3f}", fontsize=9)
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle("2x upsampling of a constant input")
    return save_figure(fig, path, dpi=110)


# --- compute ----------------------------------------------------------------------------------------------


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Forward multiply-accumulates (``torch.utils.flop_counter`` FLOPs / 2) for one input of ``input_shape``."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(*input_shape))
    model.train(was_training)
    return counter.get_total_flops() / 2


def _median_latency(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    model.eval()
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- training runs on ISBI: the isbi-unet recipe, scaled down, trained by fit --------------------------------


def isbi_recipe(*, steps: int, batch_size: int = 4, crop_size: int = 128, lr: float = 2e-3, seed: int = 0,
                amp: bool = True, elastic: bool = False, device: str = "cpu") -> Recipe:
    """The ``isbi-unet`` recipe for a short comparison run: ``steps`` Adam steps of ``batch_size`` crops of
    ``crop_size`` px (flips and rotations; elastic deformation off unless asked), ``min(20, steps / 10)``
    warm-up steps, one evaluation of the whole held-out slices at the end (no sliding windows), after the
    BatchNorm statistics are recomputed over ``min(steps, 25)`` training batches (``train.bn_recalibrate``: the
    running averages of a run this short lag behind its weights)."""
    return load_recipe("isbi-unet", [
        f"train.steps={steps}", f"train.batch_size={batch_size}", f"optim.lr={lr!r}", f"train.seed={seed}",
        f"train.amp={str(amp).lower()}", f"schedule.warmup_steps={min(20, steps // 10)}", f"train.eval_every={steps}",
        f"train.device={device}", f"data.crop_size={crop_size}", f"data.elastic={str(elastic).lower()}",
        "data.final_window=null", "data.final_tta=false", f"train.bn_recalibrate={min(steps, 25)}"])


def _train_seconds(run: Any) -> float:
    return sum(r["train_time_s"] for r in run.history)


# --- (b) output stride ------------------------------------------------------------------------------------


def output_stride_tradeoff(output_strides: Sequence[int] = (8, 16, 32), *, encoder: str = "resnet18",
                           steps: int = 300, batch_size: int = 4, crop_size: int = 128, lr: float = 1e-3,
                           seed: int = 0, data_dir: str | None = None, amp: bool = True,
                           encoder_kwargs: dict[str, Any] | None = None, log: Any = None) -> dict[str, Any]:
    """DeepLabV3 (``encoder``, no multi-grid) at each output stride, trained ``steps`` Adam steps on ISBI 2012
    crops (BCE + Dice) and evaluated on the 5 held-out whole slices. ``encoder_kwargs`` go to the ResNet
    constructor (e.g. ``stem_width`` / ``stage_widths`` for a narrow encoder in a quick check).

    Per output stride: ``dice``, ``iou``, ``boundary_f1``, ``pixel_accuracy`` (membrane class),
    ``macs_512`` (forward MACs for one 1x512x512 slice), ``params``, ``latency_512_s`` (median forward time)
    and ``train_seconds``.
    """
    from dltricks.models.segmentation.deeplab import DeepLabV3
    from dltricks.tasks.segmentation.evaluate import evaluate_segmentation

    recipe = isbi_recipe(steps=steps, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed, amp=amp)
    task = task_for_recipe("isbi2012-membrane", recipe, data_dir=data_dir)
    result: dict[str, Any] = {"encoder": encoder, "steps": steps, "batch_size": batch_size, "crop_size": crop_size,
                              "lr": lr, "seed": seed, "output_strides": list(output_strides),
                              "encoder_kwargs": dict(encoder_kwargs or {}), "runs": {}}
    for os_ in output_strides:
        torch.manual_seed(seed)
        model = DeepLabV3(encoder=encoder, num_classes=1, in_chans=1, output_stride=os_, multi_grid=None,
                          **(encoder_kwargs or {}))
        macs = count_macs(model, (1, 1, 512, 512))
        latency = _median_latency(model, torch.zeros(1, 1, 512, 512))
        run = fit(model, task, recipe, progress=False)
        model = model.to(memory_format=torch.contiguous_format)
        metrics = evaluate_segmentation(model, task.val_loader)
        result["runs"][str(os_)] = {"macs_512": macs, "params": sum(p.numel() for p in model.parameters()),
                                    "latency_512_s": latency, "train_seconds": _train_seconds(run), **metrics}
        if log is not None:
            log(f"output stride {os_}: {result['runs'][str(os_)]}")
    return result


def plot_output_stride(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for os_, run in result["runs"].items():
        ax.scatter(run["macs_512"] / 1e9, run["dice"], s=40, label=f"OS {os_}: BF {run['boundary_f1']:.3f}")
        ax.annotate(f"OS {os_}", (run["macs_512"] / 1e9, run["dice"]))
    ax.set_xscale("log")
    ax.set_xlabel("forward GMACs per 512x512 slice")
    ax.set_ylabel("membrane Dice (held-out slices)")
    ax.set_title(f"DeepLabV3-{result['encoder']}: output stride vs accuracy and compute")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


# --- (c) skip connections ---------------------------------------------------------------------------------


def skip_ablation(*, base_channels: int = 16, steps: int = 300, batch_size: int = 4, crop_size: int = 128,
                  lr: float = 2e-3, seed: int = 0, band_width: int = 2, data_dir: str | None = None,
                  amp: bool = True, log: Any = None) -> dict[str, Any]:
    """U-Net with and without skip connections, same budget; accuracy within ``band_width`` px of the true
    membrane boundaries (``boundary_accuracy``) vs elsewhere (``interior_accuracy``), boundary F1 and Dice."""
    from dltricks.models.segmentation.unet import UNet
    from dltricks.tasks.segmentation.evaluate import evaluate_segmentation

    recipe = isbi_recipe(steps=steps, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed, amp=amp)
    task = task_for_recipe("isbi2012-membrane", recipe, data_dir=data_dir)
    result: dict[str, Any] = {"base_channels": base_channels, "steps": steps, "batch_size": batch_size,
                              "crop_size": crop_size, "lr": lr, "seed": seed, "band_width": band_width, "runs": {}}
    for skip in (True, False):
        torch.manual_seed(seed)
        model = UNet(num_classes=1, in_chans=1, base_channels=base_channels, skip=skip)
        run = fit(model, task, recipe, progress=False)
        model = model.to(memory_format=torch.contiguous_format)
        metrics = evaluate_segmentation(model, task.val_loader, band_width=band_width)
        key = "with_skips" if skip else "without_skips"
        result["runs"][key] = {"params": sum(p.numel() for p in model.parameters()),
                               "train_seconds": _train_seconds(run), **metrics}
        if log is not None:
            log(f"{key}: {result['runs'][key]}")
    return result


def plot_skip_ablation(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["boundary_accuracy", "interior_accuracy", "boundary_f1", "dice"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, (name, run) in enumerate(result["runs"].items()):
        xs = [k + (i - 0.5) * width for k in range(len(keys))]
        ax.bar(xs, [run[k] for k in keys], width, label=name.replace("_", " "))
    ax.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys])
    ax.set_ylim(0, 1)
    ax.set_title(f"U-Net skips, ISBI 2012 held-out slices (boundary band {result['band_width']} px)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=110)


# --- (f) token mixers: SSM or not, on a long non-causal task -------------------------------------------------


def token_mixer_ablation(mixers: Sequence[str] = ("vim", "mambaout"), *, embed_dim: int = 32, depth: int = 2,
                         patch_size: int = 2, steps: int = 200, batch_size: int = 4, crop_size: int = 128,
                         lr: float = 2e-3, seed: int = 0, overlap: float = 0.5, data_dir: str | None = None,
                         log: Any = None, device: str = "cpu") -> dict[str, Any]:
    """:class:`~dltricks.models.segmentation.token_mixer.TokenMixerSegmenter` with each token mixer, same width,
    depth, patches, recipe (fp32: the selective scan is not run under autocast) and seed, trained ``steps``
    Adam steps on ISBI 2012 crops and evaluated on the 5 held-out slices with sliding windows of
    ``crop_size`` px (``overlap``).

    Per mixer: ``dice``, ``iou``, ``boundary_f1``, ``pixel_accuracy`` (membrane class), ``params``,
    ``train_seconds``, ``final_train_loss``; and ``tokens``, the tokens per crop the encoder mixes;
    ``trivial_dice``, the Dice of marking every held-out pixel as membrane (``2p / (1 + p)`` for a membrane
    fraction ``p``): a run that does not beat it has learnt nothing.
    """
    from dltricks.models.segmentation.token_mixer import TokenMixerSegmenter
    from dltricks.tasks.segmentation.evaluate import evaluate_segmentation

    recipe = isbi_recipe(steps=steps, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed, amp=False,
                         device=device)
    task = task_for_recipe("isbi2012-membrane", recipe, data_dir=data_dir, device=device)
    tokens = (crop_size // patch_size) ** 2
    membrane = total = 0.0
    for _, y in task.val_loader.iter_epoch(0):  # y: (B, 1, H, W), 1 on membrane
        membrane, total = membrane + float(y.sum()), total + y.numel()
    p = membrane / max(total, 1.0)
    # fit would end with a whole-slice evaluation (65,536 tokens per slice for 2x2 patches): train without it
    # and evaluate below with windows of the training crop instead.
    train_task = dataclasses.replace(task, val_loader=None, evaluate=None)
    result: dict[str, Any] = {"embed_dim": embed_dim, "depth": depth, "patch_size": patch_size, "steps": steps,
                              "batch_size": batch_size, "crop_size": crop_size, "lr": lr, "seed": seed,
                              "tokens": tokens, "trivial_dice": 2 * p / (1 + p), "runs": {}}
    for mixer in mixers:
        torch.manual_seed(seed)
        model = TokenMixerSegmenter(mixer=mixer, num_classes=1, in_chans=1, embed_dim=embed_dim, depth=depth,
                                    patch_size=patch_size)
        run = fit(model, train_task, recipe, progress=False)
        losses = [r["train_loss"] for r in run.history if "train_loss" in r]
        metrics = evaluate_segmentation(model, task.val_loader, window=crop_size, overlap=overlap, device=device)
        result["runs"][mixer] = {"params": sum(p.numel() for p in model.parameters()), "tokens": tokens,
                                 "train_seconds": _train_seconds(run),
                                 "final_train_loss": losses[-1] if losses else float("nan"), **metrics}
        if log is not None:
            log(f"{mixer}: {result['runs'][mixer]}")
    return result


def plot_token_mixer_ablation(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["dice", "boundary_f1", "pixel_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(result["runs"]), 1)
    for i, (name, run) in enumerate(result["runs"].items()):
        xs = [k + (i - (len(result["runs"]) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [run[k] for k in keys], width, label=f"{name} ({run['params']:,} params)")
    ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys])
    ax.set_ylim(0, 1)
    ax.set_title(f"ISBI 2012, {result['tokens']:,} tokens per crop, {result['steps']} steps")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=110)


def plot_error_map(image: torch.Tensor, membrane: torch.Tensor, predicted: torch.Tensor, path: str | Path, *,
                   title: str = "") -> Path:
    """Image, label, prediction and error map of one slice (``(H, W)`` tensors; masks True = membrane).

    Error map: correct pixels grey (membrane dark, interior light), missed membrane red, extra membrane blue.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, pred = membrane.bool().numpy(), predicted.bool().numpy()
    errors = np.where(true[..., None], 0.35, 0.85).repeat(3, axis=-1)  # (H, W, 3) grey background
    errors[true & ~pred] = (0.85, 0.1, 0.1)  # missed membrane
    errors[~true & pred] = (0.1, 0.3, 0.9)  # extra membrane
    panels = [(image.float().numpy(), "image", "gray"), (~true, "label (membrane black)", "gray"),
              (~pred, "prediction", "gray"), (errors, "errors: missed red, extra blue", None)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (data, name, cmap) in zip(axes, panels):
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=100)


def plot_weight_map(image: torch.Tensor, membrane: torch.Tensor, weights: torch.Tensor, path: str | Path, *,
                    title: str = "") -> Path:
    """Image, label and U-Net weight map of one slice side by side (as Fig. 3 of Ronneberger et al. 2015)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    axes[0].imshow(image.float().numpy(), cmap="gray")
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow((~membrane.bool()).numpy(), cmap="gray", interpolation="nearest")
    axes[1].set_title("label (membrane black)", fontsize=10)
    shown = axes[2].imshow(weights.float().numpy(), cmap="jet", interpolation="nearest")
    axes[2].set_title("weight map w(x)", fontsize=10)
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=100)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the chosen experiments; write ``results.json`` and the plots to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m dltricks.experiments.segmentation",
                                     description="Segmentation experiments (a)-(e); see docs/segmentation.md.")
    parser.add_argument("which", nargs="*", default=["a", "d", "e"], choices=["a", "b", "c", "d", "e"],
                        help="experiments to run (default: the fast ones, a d e)")
    parser.add_argument("--out", default="runs/segmentation-experiments", help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="training steps of (b) and (c)")
    parser.add_argument("--crop-size", type=int, default=128, help="training crop side of (b) and (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "a" in args.which:
        results["a_aspp_degeneration"] = r = aspp_degeneration()
        plot_aspp_degeneration(r, out / "a_aspp_degeneration.png")
    if "b" in args.which:
        results["b_output_stride"] = r = output_stride_tradeoff(steps=args.steps, crop_size=args.crop_size,
                                                                 seed=args.seed, log=print)
        plot_output_stride(r, out / "b_output_stride.png")
    if "c" in args.which:
        results["c_skip_ablation"] = r = skip_ablation(steps=args.steps, crop_size=args.crop_size, seed=args.seed,
                                                       log=print)
        plot_skip_ablation(r, out / "c_skip_ablation.png")
    if "d" in args.which:
        results["d_receptive_field"] = r = receptive_field_growth()
        plot_receptive_field_growth(r, out / "d_receptive_field.png")
    if "e" in args.which:
        results["e_checkerboard"] = r = checkerboard_artifacts()
        plot_checkerboard(r, out / "e_checkerboard.png")
    atomic_write_json(out / "results.json", jsonable(results, drop_suffix="_map"), indent=1)
    print(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()

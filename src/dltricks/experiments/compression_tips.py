"""Tips on model compression: knowledge distillation, int8 quantization and pruning.

Every arm trains through :func:`dltricks.train.fit`; distillation is its ``teacher=`` option
(:mod:`dltricks.train.distill`). docs/compression.md has the method and the measured tables.

Distillation (Hinton, Vinyals & Dean 2015), ``L = alpha T^2 KL(p_t^T || p_s^T) + (1 - alpha) CE``: a teacher
(:class:`~dltricks.experiments.training.TinyCNN` of width 16) is trained once per run on the whole embedded
MNIST training split; the student, an MLP with one hidden layer of 64, trains on 1,000 of those images
(class-stratified, the same for every arm) for ``epochs`` epochs, once on the hard labels alone and once per
temperature with the teacher's soft targets (``alpha`` 0.9, the library's default); every arm of a seed has the
same initial weights and batches (paired seeds). The teacher never sees augmented images, so its logits are
computed once per example (``distill.cache_teacher``). A run whose teacher is not at least ``teacher_margin``
more accurate than the hard-label student is an invalid setup. Measured (full mode, 5 seeds, 2026-12-07): see
docs/compression.md, "Measured: the distillation tips".

Quantization and pruning (``scale.quantization``, ``scale.pruning``) compress one ``small_cnn`` per seed (21.9 M
MACs, 279 k parameters), trained 2 epochs on 2,000 embedded-MNIST images through ``fit`` and shared by both
tips. Static int8 (Jacob et al. 2018) stores ``r ~= s (q - z)`` with per-channel weight scales and calibrated
activation scales (:mod:`dltricks.compress.quantize`); it keeps the MAC count and changes the arithmetic.
Unstructured pruning (Han et al. 2015) zeroes the smallest ``|w|`` globally and fine-tunes after each step;
structured pruning (Li et al. 2017) removes the filters with the smallest ``sum |W[c]|`` and their consumers'
inputs (:mod:`dltricks.compress.prune`). Latency is CPU time per call on one thread, every variant timed in
interleaved rounds (A, B, A, B, ...) in one process, each in the default memory layout; the MACs a sparse
kernel could skip (:func:`nonzero_macs`) are recorded beside the measured speed-up. Measured in full mode (5
seeds, 2026-12-07): int8 is 3.84x smaller, 2.11x faster at batch 1 and 4.32x at batch 32 at the same MACs, -0.09
points of accuracy (confirmed); unstructured 80 % gives 1.00x at 4x fewer non-zero MACs and, after 2 fine-tuning
epochs, is 1.90 points below the dense model fine-tuned as long (refuted on accuracy), 50 % of the channels give
2.64x at 3.96x fewer MACs (-1.28 points). Tables: docs/compression.md, "Measured: the quantization and pruning
tips".
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dltricks.compress.prune
import dltricks.compress.quantize
import dltricks.compress.storage
import dltricks.measure.flops
import dltricks.measure.latency
import dltricks.train.distill
from dltricks.compress import count_nonzero, prune_channels, prune_finetune, quantize_static, save_quantized
from dltricks.compress.prune import PRUNABLE
from dltricks.evidence import README, AllOf, Context, Effect, Evidence, Exact, NonInferior, plots
from dltricks.experiments._harness import TrainSpec, health, recipe
from dltricks.experiments.training import TinyCNN, train_tip
from dltricks.measure import count_macs, time_function
from dltricks.measure.flops import count_flops
from dltricks.models import create_model
from dltricks.train import evaluate, fit, load_recipe, prepare, save_weights

LEARN = "Learning setups"
SCALE = "Search, compression and scale"
DISTILL_CODE = (dltricks.train.distill,)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
# Both distillation tips use the same settings, so that they share the teacher and the common arms (``shares``).
DISTILL_QUICK = {"teacher_images": 4000, "teacher_epochs": 3, "student_images": 1000, "epochs": 20}
DISTILL_FULL = {"teacher_images": 8000, "teacher_epochs": 5, "student_images": 1000, "epochs": 30}

_DISTILL_RUNS: dict[tuple, Any] = {}  # memo: the teacher and every student run, keyed by their settings


def _distill_recipe(epochs: int, seed: int, temperature: float) -> Any:
    """SGD with momentum 0.9 at lr 0.02, cosine schedule, batch 64, one evaluation at the end, CPU; soft targets
    at ``temperature`` with alpha 0.9, teacher logits cached (no augmentation)."""
    return load_recipe({
        "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "batch_size": 64, "eval_batch_size": 1000, "seed": seed, "device": "cpu",
                  "eval_every": epochs},
        "distill": {"temperature": temperature, "alpha": 0.9, "cache_teacher": True},
        "checkpoint": {"every_epochs": 0, "keep_best": False},
    })


def _teacher(ctx: Context) -> tuple[torch.nn.Module, float, float]:
    """The teacher of this run (memoised): (model, validation accuracy, seconds)."""
    images, epochs = ctx.get("teacher_images", 8000), ctx.get("teacher_epochs", 5)
    key = ("teacher", images, epochs)
    if key not in _DISTILL_RUNS:
        ctx.report(f"teacher: TinyCNN width 16 on {images} images, {epochs} epochs")
        recipe = _distill_recipe(epochs, 1000, 1.0)  # seed 1000: apart from the students' seeds
        torch.manual_seed(1000)
        model, task = prepare(TinyCNN(width=16), "mnist-embedded", recipe, subset=images, subset_seed=0)
        t0 = time.perf_counter()
        result = fit(model, task, recipe, progress=False)
        _DISTILL_RUNS[key] = (result.model.eval(), float(result.final["val_accuracy"]), time.perf_counter() - t0)
    return _DISTILL_RUNS[key]


def _student(ctx: Context, seed: int, temperature: float | None) -> dict[str, Any]:
    """One student run (memoised): hard labels alone when ``temperature`` is None, else distilled at it."""
    images, epochs = ctx.get("student_images", 1000), ctx.get("epochs", 30)
    teacher = None if temperature is None else _teacher(ctx)
    key = ("student", images, epochs, seed, temperature, ctx.get("teacher_images", 8000),
           ctx.get("teacher_epochs", 5))
    if key not in _DISTILL_RUNS:
        ctx.report(f"seed {seed}: {'hard labels' if temperature is None else f'distilled, T={temperature:g}'}")
        recipe = _distill_recipe(epochs, seed, temperature or 1.0)
        model, task = prepare("mlp", "mnist-embedded", recipe, model_kwargs={"hidden": [64]}, subset=images,
                              subset_seed=0)
        t0 = time.perf_counter()
        result = fit(model, task, recipe, teacher=None if teacher is None else teacher[0], progress=False)
        accuracy = float(result.final["val_accuracy"])
        _DISTILL_RUNS[key] = {"accuracy": accuracy, "loss": float(result.final["val_loss"]),
                              "seconds": time.perf_counter() - t0,
                              "problem": health(val_acc=accuracy, num_classes=task.num_classes,
                                                val_size=len(task.val_loader.dataset))}
    return _DISTILL_RUNS[key]


def _arm(temperature: float | None) -> str:
    return "hard labels" if temperature is None else f"T={temperature:g}"


def _distill_evidence(ctx: Context, temperatures: tuple[float | None, ...], what: str) -> Evidence:
    """The student arms of ``temperatures`` (None: hard labels) over ``ctx.seeds``, and the teacher check."""
    teacher, teacher_acc, teacher_s = _teacher(ctx)
    ev = Evidence(setup=f"{what}: teacher TinyCNN width 16 ({ctx.get('teacher_images', 8000)} embedded-MNIST "
                        f"images, {ctx.get('teacher_epochs', 5)} epochs; validation accuracy {teacher_acc:.4f}); "
                        f"student MLP 784-64-10 on {ctx.get('student_images', 1000)} of those images (class-"
                        f"stratified), {ctx.get('epochs', 30)} epochs of SGD momentum 0.9, lr 0.02, cosine, batch "
                        "64; alpha 0.9; accuracy on the 2,000 validation images")
    for seed in ctx.seeds:
        for temperature in temperatures:
            run = _student(ctx, seed, temperature)
            ev.add(_arm(temperature), accuracy=run["accuracy"], loss=run["loss"], seconds=run["seconds"])
            ev.record_health(_arm(temperature), run["problem"])
    # The setup check: a teacher no better than the student alone has nothing to teach.
    hard = [_student(ctx, seed, None)["accuracy"] for seed in ctx.seeds]
    margin = ctx.get("teacher_margin", 0.03)
    gap = teacher_acc - sum(hard) / len(hard)
    ev.record_health("teacher", "" if gap >= margin else
                     f"not clearly better than the student alone ({teacher_acc:.4f} vs {sum(hard) / len(hard):.4f}, "
                     f"a gap under {margin:g})")
    ev.values.update({"teacher_accuracy": teacher_acc, "teacher_seconds": teacher_s, "teacher_gap": gap})
    ev.budget = {"epochs": ctx.get("epochs", 30), "images": ctx.get("student_images", 1000)}
    return ev


@train_tip(id="learn.distillation", title="A distilled student beats the same student on labels alone",
           claim="A small student (an MLP with one hidden layer of 64) trained on 1,000 MNIST images to match a "
                 "larger CNN teacher's softened outputs (T = 4, alpha = 0.9) is at least half a point more "
                 "accurate than the same student trained with the same steps on the hard labels alone (quick: "
                 "a teacher of 4,000 images and 3 epochs, 20 student epochs; full: 8,000 images and 5 epochs, 30 "
                 "student epochs, 5 seeds).",
           cite=README.at(168, 172, "knowledge distillation"),
           source="Hinton, Vinyals & Dean 2015 (NIPS workshop)", section=LEARN, exercises=DISTILL_CODE,
           quick=DISTILL_QUICK, full=DISTILL_FULL, budget_s=40, shares="distill",
           rule=Effect("accuracy", "T=4", "hard labels", min_effect=0.005))
def distillation(ctx: Context) -> Evidence:
    ev = _distill_evidence(ctx, (None, 4.0), "hard labels vs distilled at T = 4")
    hard, soft = ev.arms["hard labels"]["accuracy"], ev.arms["T=4"]["accuracy"]
    ev.headline = (f"student {100 * sum(hard) / len(hard):.2f}% -> {100 * sum(soft) / len(soft):.2f}% distilled; "
                   f"teacher {100 * ev.values['teacher_accuracy']:.2f}%")
    return ev


@train_tip(id="learn.distillation-temperature", title="The distillation temperature matters",
           claim="With the same teacher, student and steps, soft targets at T = 4 give a more accurate student "
                 "than at T = 1 (where the teacher's probabilities are barely softened); T = 2 and 8 are measured "
                 "alongside (settings as learn.distillation).",
           cite=README.at(172, topic="try several temperatures"),
           source="Hinton, Vinyals & Dean 2015 (NIPS workshop)", section=LEARN, exercises=DISTILL_CODE,
           quick=DISTILL_QUICK, full=DISTILL_FULL, budget_s=50, shares="distill",
           rule=Effect("accuracy", "T=4", "T=1", min_effect=0.0))
def distillation_temperature(ctx: Context) -> Evidence:
    ev = _distill_evidence(ctx, (None, *TEMPERATURES), "distilled at T = 1, 2, 4, 8 (and hard labels)")
    means = {arm: sum(v["accuracy"]) / len(v["accuracy"]) for arm, v in ev.arms.items()}
    best = max((_arm(t) for t in TEMPERATURES), key=means.__getitem__)
    ev.values["best_temperature"] = best
    ev.headline = ", ".join(f"{arm} {100 * means[arm]:.2f}%" for arm in means) + f"; best {best}"
    return ev


# --------------------------------------------------------------------------------- quantization and pruning
# Both tips compress the same trained small_cnn (memoised per seed and setting, shared="compress-mnist"):
# training it is most of their cost.
_DENSE: dict[tuple, tuple[nn.Module, Any]] = {}
# The trained model both tips compress: the same in quick and full mode (full adds seeds, arms and timing rounds).
BASE = {"epochs": 2, "subset": 2000}
COMPRESS_CODE = (dltricks.compress.quantize, dltricks.compress.prune, dltricks.compress.storage,
                 dltricks.measure.latency, dltricks.measure.flops)


def _base_spec(ctx: Context, seed: int) -> TrainSpec:
    return TrainSpec(epochs=ctx.get("epochs", 2), lr=ctx.get("lr", 0.1), optimizer="momentum", schedule="cosine",
                     subset=ctx.get("subset", 2000), seed=seed)


def _finetune_spec(ctx: Context, seed: int, epochs: int) -> TrainSpec:
    return TrainSpec(epochs=epochs, lr=ctx.get("ft_lr", 0.05), optimizer="momentum",
                     schedule="cosine", subset=ctx.get("subset", 2000), seed=seed)


def _dense(ctx: Context, seed: int) -> tuple[nn.Module, Any]:
    """``small_cnn`` (widths 32, 64, 128) trained through ``fit`` on ``ctx['subset']`` embedded-MNIST images, in
    eval mode; memoised so that the quantization and pruning tips compress the same models."""
    spec = _base_spec(ctx, seed)
    key = (seed, spec.epochs, spec.lr, spec.subset)
    if key not in _DENSE:
        ctx.report(f"training small_cnn, seed {seed}")
        torch.manual_seed(seed)
        model, task = prepare(create_model("small_cnn"), "mnist-embedded", recipe(spec), subset=spec.subset)
        fit(model, task, recipe(spec), progress=False)
        _DENSE[key] = (model.eval(), task)
    return _DENSE[key]


def _accuracy(model: nn.Module, task: Any) -> float:
    return float(evaluate(model.eval(), task.val_loader, task, device="cpu")["accuracy"])


def _record_health(ev: Evidence, arm: str, accuracy: float, task: Any) -> None:
    ev.record_health(arm, health(val_acc=accuracy, num_classes=10, val_size=len(task.val_loader.dataset)))


def interleaved_latency(variants: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, *, rounds: int = 5,
                        min_time: float = 0.05) -> dict[str, float]:
    """Median milliseconds per call ``fn(x)`` of every variant, timed in ``rounds`` interleaved rounds (A, B, C,
    A, B, C, ...) so that a change in the machine's load falls on every variant alike: each round is
    :func:`dltricks.measure.time_function` in CPU time on one thread (its median over timed blocks of at least
    ``min_time`` seconds in all), the result the median over rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, fn in variants.items():
                t = time_function(lambda fn=fn: fn(x), batch=x.shape[0], min_run_time=min_time, warmup=2,
                                  min_runs=3, cpu_time=True)
                times[name].append(t.median)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def nonzero_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of ``model(x)`` that a kernel skipping zero weights would still do: each Conv/Linear
    layer's MACs (:func:`dltricks.measure.flops.count_flops`) scaled by the fraction of its weights that are
    non-zero, every other op as counted. A dense model gives :func:`~dltricks.measure.count_macs`."""
    counted = count_flops(model, x)
    macs = float(counted.macs)
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            dense = counted.by_module.get(name, 0) / 2
            macs -= dense * (1.0 - int(torch.count_nonzero(m.weight)) / m.weight.numel())
    return round(macs)


def _file_kb(model: nn.Module, path: Path) -> float:
    """Size of ``model``'s weights as a safetensors file (int8 ones as integers, scales and zero points)."""
    if any(getattr(v, "is_quantized", False) for v in model.state_dict().values()):
        save_quantized(path, model)
    else:
        save_weights(path, model)
    return path.stat().st_size / 1e3


def _contiguous(model: nn.Module) -> nn.Module:
    """``fit`` leaves conv weights channels-last; every timed float variant gets the default layout, so that a
    latency ratio measures the pruning or quantization and not a memory layout."""
    return model.to(memory_format=torch.contiguous_format).eval()


@train_tip(id="scale.quantization", title="int8 quantization: 4x smaller, faster",
           claim="Post-training static int8 quantization (per-channel int8 weights, calibrated int8 activations, "
                 "conv-BN-ReLU fused) makes a trained CNN's weight file about 4x smaller (at least 3.5x) and its "
                 "batch-1 CPU latency lower, losing at most 1 point of accuracy (small_cnn, 2 epochs on 2,000 "
                 "MNIST images, latency on one thread; full mode only). It does not change the MAC count: the "
                 "speed-up comes from cheaper arithmetic and memory traffic, not from fewer FLOPs.",
           cite=README.at(133, 136, "quantization and model compression"),
           source="Jacob et al. 2018 (CVPR); Krishnamoorthi 2018 (arXiv:1806.08342)", section=SCALE,
           exercises=COMPRESS_CODE, shares="compress-mnist",
           quick=None, full={**BASE, "rounds": 9, "min_time": 0.1}, budget_s=230,
           metrics={"accuracy": "validation accuracy (2,000 embedded-MNIST images)",
                    "log2_speedup_b1": "log2(fp32 latency / arm latency) at batch 1 (fp32: 0)",
                    "log2_speedup_b32": "the same at batch 32", "size_kb": "weights file (safetensors), kB"},
           rule=AllOf((NonInferior("accuracy", "static int8", "fp32", margin=0.01),
                       Effect("log2_speedup_b1", "static int8", "fp32", min_effect=0.0),
                       Exact(checks=("int8 file >= 3.5x smaller",)))))
def quantization(ctx: Context) -> Evidence:
    ev = Evidence(setup=f"small_cnn (conv 32-64-64-128-128, BN, ReLU; 21.9 M MACs) trained {ctx.get('epochs', 2)} "
                        f"epoch(s) on {ctx.get('subset', 2000)} embedded-MNIST images (SGD momentum 0.1, cosine), "
                        "then static int8 (dltricks.compress.quantize_static, FX, x86, 8 calibration batches); "
                        "latency: CPU time on one thread, fp32 and int8 timed in interleaved rounds "
                        f"({ctx.get('rounds', 5)} per batch size), median")
    ratios: list[float] = []
    for seed in ctx.seeds:
        model, task = _dense(ctx, seed)
        calibration = [x for _, (x, _) in zip(range(8), task.train_loader.iter_epoch(0))]
        ctx.report(f"int8, seed {seed}")
        int8 = quantize_static(model, calibration)
        fp32 = _contiguous(copy.deepcopy(model))
        x = next(iter(task.val_loader.iter_epoch(0)))[0]
        ms = {b: interleaved_latency({"fp32": fp32, "int8": int8}, x[:b].contiguous(), rounds=ctx.get("rounds", 5),
                                     min_time=ctx.get("min_time", 0.05)) for b in (1, 32)}
        sizes = {name: _file_kb(m, ctx.path(f"{name}-{seed}.safetensors")) for name, m in (("fp32", fp32),
                                                                                           ("int8", int8))}
        ratios.append(sizes["fp32"] / sizes["int8"])
        for arm, name in (("fp32", "fp32"), ("static int8", "int8")):
            accuracy = _accuracy(fp32 if name == "fp32" else int8, task)
            _record_health(ev, arm, accuracy, task)
            ev.add(arm, accuracy=accuracy, size_kb=sizes[name], latency_b1_ms=ms[1][name],
                   latency_b32_ms=ms[32][name], log2_speedup_b1=math.log2(ms[1]["fp32"] / ms[1][name]),
                   log2_speedup_b32=math.log2(ms[32]["fp32"] / ms[32][name]))
    ev.check("int8 file >= 3.5x smaller", min(ratios) >= 3.5)
    x1 = x[:1]
    macs = count_macs(fp32, x1)
    int8_arm = ev.arms["static int8"]
    speed = {b: 2 ** statistics.mean(int8_arm[f"log2_speedup_b{b}"]) for b in (1, 32)}
    drop = 100 * statistics.mean(a - b for a, b in zip(ev.arms["fp32"]["accuracy"], int8_arm["accuracy"]))
    ev.values.update({"size ratio fp32/int8": min(ratios), "MACs per image (fp32 and int8)": macs,
                      "MAC ratio fp32/int8": 1.0, "latency ratio fp32/int8, batch 1 (geometric mean)": speed[1],
                      "latency ratio fp32/int8, batch 32 (geometric mean)": speed[32]})
    ev.headline = (f"int8: {min(ratios):.2f}x smaller, {speed[1]:.2f}x faster at batch 1 and {speed[32]:.2f}x at "
                   f"batch 32 with the same MACs; accuracy {-drop:+.2f} points")
    ev.budget = {"epochs": ctx.get("epochs", 2), "images": ctx.get("subset", 2000)}
    return ev


@train_tip(id="scale.pruning", title="Pruning: sparse keeps accuracy, channels give speed",
           claim="Zeroing the 80 % smallest-magnitude weights (global unstructured pruning, 50 % then 80 % with "
                 "fine-tuning after each step) keeps the accuracy within 1 point of the dense model fine-tuned as "
                 "long, but buys no speed-up on dense kernels (batch-32 CPU latency ratio below 1.1x) although a "
                 "sparse kernel would skip 3/4 of the multiplications; removing half of each conv's channels "
                 "(structured, smallest L1 filter norms) gives a real speed-up of at least 1.5x; its accuracy cost "
                 "is recorded (small_cnn, 2 epochs on 2,000 MNIST images, 1 fine-tuning epoch per step, also 90 % "
                 "and 80/90 % of the channels; full mode only).",
           cite=README.at(133, 136, "quantization and model compression"),
           source="Han et al. 2015 (NeurIPS); Li et al. 2017 (ICLR)", section=SCALE,
           exercises=COMPRESS_CODE, shares="compress-mnist",
           quick=None,
           full={**BASE, "schedule": [0.5, 0.8, 0.9], "channels": [0.5, 0.8, 0.9], "ft_epochs": 1, "ft_lr": 0.05,
                 "rounds": 7, "min_time": 0.05}, budget_s=700,
           may_fail=("channels 80%", "channels 90%", "unstructured 90%"),
           metrics={"accuracy": "validation accuracy after fine-tuning", "accuracy_pruned": "right after pruning",
                    "log2_speedup_b32": "log2(dense latency / arm latency) at batch 32 (dense: 0)",
                    "log2_mac_ratio": "log2(dense MACs / MACs left when zero weights are skipped)"},
           rule=AllOf((NonInferior("accuracy", "unstructured 80%", "dense", margin=0.01),
                       NonInferior("log2_speedup_b32", "dense", "unstructured 80%", margin=math.log2(1.1)),
                       Effect("log2_speedup_b32", "channels 50%", "dense", min_effect=math.log2(1.5)))))
def pruning(ctx: Context) -> Evidence:
    """The rule tests the three parts of the claim: accuracy kept (unstructured 80 % non-inferior to the dense
    model, margin 1 point); no speed-up (dense no slower than unstructured 80 % by more than 10 %: the 95 %
    interval of log2(latency ratio) wholly below log2 1.1); a real one from channels (the interval of log2(latency
    ratio) of 50 % channels wholly above log2 1.5). The base model is not trained to convergence, so more training
    alone raises its accuracy: the dense arm and every channel arm are fine-tuned as many epochs through ``fit``
    as the 80 % arm got in its schedule (Han et al.'s iterative prune -> fine-tune, one
    :func:`~dltricks.compress.prune_finetune` step per sparsity of ``schedule``)."""
    schedule, per_step = ctx.get("schedule", [0.5, 0.8]), ctx.get("ft_epochs", 1)
    matched = per_step * sum(1 for s in schedule if s <= 0.8)  # the fine-tuning epochs of the 80 % arm
    ev = Evidence(setup=f"small_cnn trained {ctx.get('epochs', 2)} epoch(s) on {ctx.get('subset', 2000)} embedded-"
                        "MNIST images; unstructured: global L1 magnitude pruning "
                        f"{' -> '.join(f'{s:.0%}' for s in schedule)}, "
                        f"{per_step} fine-tuning epoch(s) after each step (dltricks.compress.prune_finetune); "
                        "channels: dltricks.compress.prune_channels; dense and channel arms fine-tuned "
                        f"{matched} epoch(s) through fit (lr {ctx.get('ft_lr', 0.05):g}, cosine); batch-32 latency in "
                        "CPU time on one thread, all arms timed in interleaved rounds, median")
    for seed in ctx.seeds:
        model, task = _dense(ctx, seed)
        step = recipe(_finetune_spec(ctx, seed, per_step))
        longer = recipe(_finetune_spec(ctx, seed, matched))
        variants: dict[str, tuple[nn.Module, float]] = {}
        ctx.report(f"dense fine-tune, seed {seed}")
        tuned = copy.deepcopy(model)
        fit(tuned, task, longer, progress=False)
        variants["dense"] = (tuned, _accuracy(model, task))
        current = model
        for amount in schedule:  # each step prunes the previous step's fine-tuned model further
            ctx.report(f"unstructured {amount:.0%}, seed {seed}")
            current, steps = prune_finetune(current, task, step, [amount])
            variants[f"unstructured {amount:.0%}"] = (current, steps[0]["before_accuracy"])
        for amount in ctx.get("channels", [0.5]):
            ctx.report(f"channels {amount:.0%}, seed {seed}")
            pruned = prune_channels(model, amount)
            before = _accuracy(pruned, task)
            fit(pruned, task, longer, progress=False)
            variants[f"channels {amount:.0%}"] = (pruned, before)
        x = next(iter(task.val_loader.iter_epoch(0)))[0][:32].contiguous()
        models = {arm: _contiguous(m) for arm, (m, _) in variants.items()}
        ms = interleaved_latency(models, x, rounds=ctx.get("rounds", 5), min_time=ctx.get("min_time", 0.05))
        dense_macs = count_macs(models["dense"], x[:1])
        for arm, (m, before) in variants.items():
            accuracy = _accuracy(m, task)
            _record_health(ev, arm, accuracy, task)
            ev.add(arm, accuracy=accuracy, accuracy_pruned=before, latency_b32_ms=ms[arm],
                   log2_speedup_b32=math.log2(ms["dense"] / ms[arm]),
                   log2_mac_ratio=math.log2(dense_macs / nonzero_macs(m, x[:1])), nonzeros=count_nonzero(m))
    _pruning_summary(ctx, ev)
    ev.budget = {"epochs": ctx.get("epochs", 2), "images": ctx.get("subset", 2000),
                 "fine-tuning epochs (dense, channels, unstructured 80%)": matched}
    return ev


def _pruning_summary(ctx: Context, ev: Evidence) -> None:
    """Latency ratio next to MAC ratio per arm (FLOPs are not latency), a bar plot and the headline."""
    speed = {arm: 2 ** statistics.mean(a["log2_speedup_b32"]) for arm, a in ev.arms.items()}
    fewer = {arm: 2 ** statistics.mean(a["log2_mac_ratio"]) for arm, a in ev.arms.items()}
    dense = ev.arms["dense"]["accuracy"]
    lost = {arm: 100 * statistics.mean(d - a for d, a in zip(dense, ev.arms[arm]["accuracy"])) for arm in ev.arms}
    for arm in ev.arms:
        ev.values[f"{arm}: batch-32 speed-up, MAC ratio (geometric means)"] = [round(speed[arm], 3),
                                                                               round(fewer[arm], 3)]
    ev.plots.append(plots.bar_plot(ctx.path("speedup.png"), {k: [2 ** v for v in a["log2_speedup_b32"]]
                                                            for k, a in ev.arms.items()},
                                   ylabel="batch-32 speed-up over dense", title="pruning: measured speed-up"))
    ev.headline = "; ".join(f"{arm}: {speed[arm]:.2f}x faster with {fewer[arm]:.1f}x fewer MACs, accuracy "
                            f"{-lost[arm]:+.2f} points" for arm in ev.arms if arm != "dense")

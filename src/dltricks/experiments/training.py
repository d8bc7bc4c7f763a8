"""Training tips on the embedded MNIST split (8,000 train / 2,000 validation images of the official
10k test set), trained with :func:`dltricks.train.fit` through :mod:`._harness`.

Every experiment trains the compared arms with the same seeds (seed i: same initialisation where the
architectures match, same data order), so the rule can pair them. Quick settings keep each arm to a
few seconds on 2 cores: tiny CNNs (``width`` 8-16, about 10-20 k weights) or small MLPs, 1,000-2,000
training images and 1-4 epochs.

Each experiment declares its tips with :func:`train_tip`, which is :func:`dltricks.evidence.tip` with the
training code (the harness, the trainer, the loaders, augmentation and calibration) added to what the tip
exercises, so editing the trainer re-runs every training tip.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import dltricks.data.augment
import dltricks.data.loader
import dltricks.measure.calibration
import dltricks.tasks.classification
import dltricks.train
from dltricks.evidence import (LECTURE, README, AllOf, Context, Effect, Equivalent, Evidence, Exact, NonInferior,
                               plots, tip)
from dltricks.experiments import _harness
from dltricks.experiments._harness import TrainOutcome, TrainSpec, train
from dltricks.experiments.conv import count_weights
from dltricks.layers import multiscale as multiscale_layers
from dltricks.layers import norm as norm_layers
from dltricks.layers import se as se_layers
from dltricks.layers.conv import ConvBottleneck, ConvNormAct
from dltricks.layers.multiscale import TwoPathwayBlock, _pathway
from dltricks.layers.se import SqueezeExcite
from dltricks.measure import count_macs, count_params
from dltricks.models import create_model
from dltricks.models.simple import mlp as mlp_model

ModelFn = Callable[[], nn.Module]

CONV, NORM, REG = "Convolutions", "Normalisation and optimisation", "Regularisation"
# What every training tip runs: the harness, the trainer and its recipe, the MNIST loader and augmentation,
# and the calibration measure of the evaluation.
TRAINING_CODE = (_harness, dltricks.train, dltricks.tasks.classification, dltricks.data.loader, dltricks.data.augment,
                 dltricks.measure.calibration)


# Seeds of every training tip: 3 in quick mode (an interval at all), 5 in full mode (what confirmed needs).
TRAINING_SEEDS = {"quick": 3, "full": 5}


def train_tip(*, exercises: tuple[Any, ...] = (), seeds: dict[str, int] | None = None,
              **declaration: Any) -> Callable:
    """:func:`dltricks.evidence.tip` for a tip trained with the harness: the training code counts as exercised,
    and the seeds default to :data:`TRAINING_SEEDS`."""
    return tip(exercises=(*exercises, *TRAINING_CODE), seeds=seeds or TRAINING_SEEDS, **declaration)


# --------------------------------------------------------------------------------------------- models
class TinyCNN(nn.Module):
    """Two conv stages (``width``, 2*width channels) with 2x2 max-pooling, then a linear classifier on the
    flattened 7x7 map (LeNet-style; it reaches ~95 % MNIST accuracy after one epoch on 2,000 images).

    ``kernel=3, convs_per_stage=2`` and ``kernel=5, convs_per_stage=1`` have the same receptive field;
    with ``constant_width=True`` (a shared 3x3 stem, then width -> width convs) the pair of 3x3 convs also
    has 18/25 of the 5x5 conv's weights, as in the lecture. ``norm``: "batch", "group" (2 groups), or None
    (conv bias instead); ``order``: "cna" (BN before ReLU) or "can" (after); ``se``: squeeze-and-excitation
    after each stage.
    """

    def __init__(self, *, width: int = 8, kernel: int = 3, convs_per_stage: int = 1, norm: str | None = "batch",
                 order: str = "cna", se: bool = False, drop_rate: float = 0.0, num_classes: int = 10,
                 in_chans: int = 1, constant_width: bool = False) -> None:
        super().__init__()
        norm_layer: object = None
        if norm == "batch":
            norm_layer = "batch"
        elif norm == "group":
            norm_layer = lambda c: nn.GroupNorm(2, c)  # noqa: E731
        layers: list[nn.Module] = []
        c_in = in_chans
        widths = (width, 2 * width)
        if constant_width:  # a shared 3x3 stem to ``width``, then every stage conv is width -> width
            layers.append(ConvNormAct(in_chans, width, 3, norm_layer=norm_layer, act_layer="relu", order=order))
            c_in, widths = width, (width, width)
        for c_out in widths:
            for _ in range(convs_per_stage):
                layers.append(ConvNormAct(c_in, c_out, kernel, norm_layer=norm_layer, act_layer="relu", order=order))
                c_in = c_out
            if se:
                layers.append(SqueezeExcite(c_out, rd_ratio=1 / 4))
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(c_in * 7 * 7, num_classes))

    def forward(self, x):
        return self.head(self.features(x))  # (B, num_classes)


def mlp(hidden: tuple[int, ...] = (256, 256), drop_rate: float = 0.0) -> nn.Module:
    return create_model("mlp", num_classes=10, in_chans=1, hidden=hidden, drop_rate=drop_rate)


class DeepMLP(nn.Module):
    """``depth`` blocks of Linear-(BN)-ReLU(-Linear-(BN)) on flattened pixels, with or without identity shortcuts.

    ``residual=True``: ``relu(x + f(x))`` per block (He et al. 2016), with the last BN scale of every block
    initialised to zero; ``False``: ``relu(f(x))``, the same layers with the default initialisation.
    """

    def __init__(self, *, depth: int, width: int = 64, residual: bool, norm: bool = True, num_classes: int = 10,
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width) if norm else nn.Identity(), nn.ReLU(),
                          nn.Linear(width, width), nn.BatchNorm1d(width) if norm else nn.Identity())
            for _ in range(depth))
        self.residual = residual
        self.head = nn.Linear(width, num_classes)
        if residual and norm and zero_init_residual:
            # Each residual branch starts as zero (last BN scale 0; Goyal et al. 2017, torchvision's
            # zero_init_residual), so the deep net starts as the identity instead of a sum of 2*depth noisy layers.
            for block in self.blocks:
                nn.init.zeros_(block[-1].weight)

    def forward(self, x):
        x = self.stem(x)  # (B, width)
        for block in self.blocks:
            x = (x + block(x)).relu() if self.residual else block(x).relu()
        return self.head(x)


# --------------------------------------------------------------------------------------------- helpers
TUNING_SEED = 1000  # the seed of learning-rate grid runs: never one of the seeds that are compared


def run_arms(ctx: Context, ev: Evidence, arms: dict[str, tuple[ModelFn, TrainSpec]],
             extra: Callable[[str, nn.Module, TrainOutcome], dict[str, float]] | None = None) -> None:
    """Train every arm for every seed; record standard metrics, each run's health, the budget of one run and
    per-epoch loss curves.

    With ``lr_grid`` in the settings (multipliers of each arm's learning rate, e.g. ``[1/3, 1, 3]``), every arm
    first trains once per grid value on :data:`TUNING_SEED` and keeps the rate with the best ``tune_metric``
    (default ``val_acc``; lower is better for a metric named ``*loss*``; a run that fails its health check never
    wins): architectures and
    optimizers are compared each at its own rate (:func:`tune_lr`).
    """
    if ctx.get("lr_grid"):
        for name, (make_model, spec) in arms.items():
            tune_lr(ctx, ev, name, make_model, spec)
    curves: dict[str, list[list[float]]] = {}
    for seed in ctx.seeds:
        for name, (make_model, spec) in arms.items():
            ctx.report(f"{name}, seed {seed}")
            torch.manual_seed(seed)
            model = make_model()
            spec.seed = seed
            out = train(model, spec)
            metrics = {"val_acc": out.val_acc, "val_loss": out.val_loss, "val_ece": out.val_ece,
                       "train_loss": out.train_eval_loss, "train_loss_auc": out.train_loss_auc,
                       "final_train_loss": out.train_loss, "generalization_gap": out.val_loss - out.train_eval_loss,
                       "diverged": float(out.diverged), "seconds": out.seconds}
            if extra:
                metrics.update(extra(name, model, out))
            ev.add(name, **metrics)
            ev.record_health(name, out.problem)
            curves.setdefault(name, []).append(out.epoch_train_loss)
            if not ev.budget and out.steps:
                ev.budget = {"epochs": spec.epochs, "optimizer steps": out.steps, "training images seen": out.images}
    ev.curves = {name: {"train_loss": c} for name, c in curves.items()}
    if ev.tuning:
        ev.budget["tuning runs per arm"] = len(ctx.get("lr_grid"))


# run_arms' metric names that differ from the TrainOutcome field they come from.
_OUTCOME_FIELDS = {"train_loss": "train_eval_loss", "final_train_loss": "train_loss"}


def tune_lr(ctx: Context, ev: Evidence, name: str, make_model: ModelFn, spec: TrainSpec) -> float:
    """Set ``spec.lr`` to the best of ``lr_grid`` (multipliers of ``spec.lr``) for arm ``name`` on the tuning seed;
    record the grid, the scores and the choice in ``ev.tuning``."""
    metric = ctx.get("tune_metric", "val_acc")
    grid = [spec.lr * float(m) for m in ctx["lr_grid"]]
    scores = []
    for lr in grid:
        ctx.report(f"{name}, tuning lr {lr:.3g}")
        torch.manual_seed(TUNING_SEED)
        trial = dataclasses.replace(spec, lr=lr, seed=TUNING_SEED)
        out = train(make_model(), trial)
        value = getattr(out, _OUTCOME_FIELDS.get(metric, metric))
        scores.append(value if not out.problem and math.isfinite(value) else float("nan"))
    sign = -1.0 if "loss" in metric else 1.0  # losses: lower is better
    finite = [(sign * v, lr) for v, lr in zip(scores, grid) if math.isfinite(v)]
    chosen = max(finite)[1] if finite else spec.lr
    spec.lr = chosen
    ev.tuning[name] = {"grid": grid, "scores": scores, "chosen": chosen, "metric": metric, "seed": TUNING_SEED}
    return chosen


def _setup(spec: TrainSpec, model: str, extra: str = "") -> str:
    return (f"{model}; embedded MNIST, {spec.subset or 8000} training images, {spec.epochs} epoch(s), batch "
            f"{spec.batch_size}, {spec.optimizer} lr {spec.lr:g}, schedule {spec.schedule}; validation on the 2,000 "
            f"held-out images. {extra}").strip()


def _bars(ctx: Context, ev: Evidence, metric: str, title: str) -> None:
    ev.plots.append(plots.bar_plot(ctx.path(f"{metric}.png"), {a: m[metric] for a, m in ev.arms.items()},
                                   ylabel=metric, title=title))


def _loss_curves(ctx: Context, ev: Evidence, title: str) -> None:
    curves = {a: c["train_loss"] for a, c in ev.curves.items()}
    if max(len(r) for c in curves.values() for r in c) > 1:
        ev.plots.append(plots.curve_plot(ctx.path("train_loss.png"), curves, xlabel="epoch",
                                         ylabel="training loss", title=title))


def _spec(ctx: Context, **kw) -> TrainSpec:
    base = {"subset": ctx.get("subset", 2000), "epochs": ctx.get("epochs", 1), "batch_size": ctx.get("batch_size", 64)}
    base.update(kw)
    return TrainSpec(**base)


# --------------------------------------------------------------------------------------------- testbeds
@dataclasses.dataclass(frozen=True)
class Testbed:
    """A data set, a baseline model and its training settings that tips can train on by name.

    ``spec`` holds :class:`TrainSpec` fields; ``model`` builds the baseline (``model_kwargs`` change it, e.g. a
    tip's arm). ``measured`` records the baseline's validation accuracy per seed, as measured (docs/speedrun.md).
    """

    name: str
    description: str
    spec: dict[str, Any]
    model: str
    model_kwargs: dict[str, Any]
    measured: dict[int, float] = dataclasses.field(default_factory=dict)

    def make_spec(self, **overrides: Any) -> TrainSpec:
        return TrainSpec(**{**self.spec, **overrides})

    def make_model(self, **model_kwargs: Any) -> nn.Module:
        return create_model(self.model, **{**self.model_kwargs, **model_kwargs})


TESTBEDS: dict[str, Testbed] = {
    # The setting of the quick MNIST tips above (their own models: TinyCNN, MLPs).
    "mnist": Testbed("mnist", "embedded MNIST, 2,000 training / 2,000 validation images, 1 epoch, batch 64",
                     {"subset": 2000, "epochs": 1, "batch_size": 64, "optimizer": "momentum", "lr": 0.05},
                     "small_cnn", {"in_chans": 1, "widths": (16, 32, 64)}),
    # The standard image-classification testbed of the full-mode tips: the speedrun network (airbench_cifar) at
    # widths 32-64-128 (airbench94: 64-256-256) on a class-stratified 5,000-image subset of CIFAR-10 for 4 epochs
    # (24-26 s of CPU a run, measured on one EPYC core), validated on 2,000 test images. Nesterov SGD with a
    # one-cycle schedule, 2-pixel reflect crops and flips, bf16, patch whitening from 2,000 images; no label
    # smoothing, Lookahead or TTA, so a tip can add those itself. Needs CIFAR-10 (cifar10-jpg.zip or the
    # tarball) in the default data folders.
    "cifar10": Testbed(
        "cifar10", "CIFAR-10, 5,000 training (stratified) / 2,000 test images, 4 epochs, batch 128, airbench_cifar "
                   "at widths 32-64-128",
        {"dataset": "cifar10", "subset": 5000, "val_subset": 2000, "epochs": 4, "batch_size": 128,
         "optimizer": "nesterov", "lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle",
         "amp": True, "augment": {"crop_padding": 2, "crop_padding_mode": "reflect", "hflip": True},
         "bn_recalibrate": 0, "data_init": 2000},
        "airbench_cifar", {"widths": (32, 64, 128)},
        measured={0: 0.6335, 1: 0.6295, 2: 0.634}),  # validation accuracy per seed (docs/benchmarks.md)
}


def testbed(name: str) -> Testbed:
    """The testbed called ``name`` (:data:`TESTBEDS`)."""
    if name not in TESTBEDS:
        from dltricks.errors import ConfigError, did_you_mean

        raise ConfigError(f"unknown testbed {name!r}.{did_you_mean(name, TESTBEDS)} Testbeds: {', '.join(TESTBEDS)}")
    return TESTBEDS[name]


# --------------------------------------------------------------------------------------------- experiments
@train_tip(id="conv.small-vs-large-kernels", title="Small vs large kernels",
           claim="At the same receptive field, a CNN of stacked 3x3 convolutions has fewer weights and MACs than "
                 "one of 5x5 convolutions and is at least as accurate.",
           cite=(README.at(14, 31, "smaller or larger kernels"),
                 LECTURE.at(497, topic="VGG: 5x5 has 2.8x the weights of 3x3")),
           section=CONV,
           exercises=(ConvNormAct, count_weights, count_macs),
           quick={"subset": 2000, "epochs": 1, "width": 8},
           full={"subset": 8000, "epochs": 3, "width": 16, "lr_grid": [0.33, 1, 3]},
           budget_s=12, metrics={"val_acc": "validation accuracy", "weights": "conv weights"},
           rule=AllOf((Exact(checks=("3x3 net has fewer weights", "3x3 net has fewer MACs")),
                       NonInferior("val_acc", "3x3 stacks", "5x5 kernels", margin=0.01))))
def kernel_size(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    small = lambda: TinyCNN(width=w, kernel=3, convs_per_stage=2, constant_width=True)  # noqa: E731
    large = lambda: TinyCNN(width=w, kernel=5, convs_per_stage=1, constant_width=True)  # noqa: E731
    spec = lambda: _spec(ctx, optimizer="momentum", lr=0.05)  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"TinyCNN width {w} (3x3 stem, then {w}->{w} convs): "
                                       "two 3x3 convs per stage vs one 5x5 (same receptive field)"))
    x = torch.randn(1, 1, 28, 28)
    ws, wl = count_weights(small()), count_weights(large())
    ms, ml = count_macs(small(), x), count_macs(large(), x)
    ev.values.update({"weights 3x3 net": ws, "weights 5x5 net": wl, "MACs 3x3 net": ms, "MACs 5x5 net": ml})
    ev.check("3x3 net has fewer weights", ws < wl)
    ev.check("3x3 net has fewer MACs", ms < ml)
    run_arms(ctx, ev, {"3x3 stacks": (small, spec()), "5x5 kernels": (large, spec())})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


@train_tip(id="conv.squeeze-excitation", title="Squeeze-and-excitation",
           claim="Adding squeeze-and-excitation channel attention to a small CNN improves accuracy for a few extra "
                 "weights.",
           cite=(LECTURE.at(1098, 1104, "squeeze and excitation: attention over channels"),
                 README.at(67, 69, "attention mechanisms improve performance")),
           source="Hu et al., SENet 2018", section=CONV, exercises=(se_layers, ConvNormAct),
           quick={"subset": 2000, "epochs": 1, "width": 8},
           full={"subset": 8000, "epochs": 3, "width": 8, "lr_grid": [0.33, 1, 3]},
           budget_s=10, rule=Effect("val_acc", "with SE", "without SE", min_effect=0.01))
def squeeze_excitation(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    spec = lambda: _spec(ctx, optimizer="momentum", lr=0.05)  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"TinyCNN width {w} with vs without SqueezeExcite (reduction 4) "
                                       "after each stage"))
    run_arms(ctx, ev, {"with SE": (lambda: TinyCNN(width=w, se=True), spec()),
                       "without SE": (lambda: TinyCNN(width=w, se=False), spec())})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


_SWEEPS: dict[str, dict[str, dict[float, list[TrainOutcome]]]] = {}


def _bn_sweep(ctx: Context) -> dict[str, dict[float, list[TrainOutcome]]]:
    """Train TinyCNN with and without batch norm at every learning rate of ``lrs`` (SGD + momentum 0.9).

    Both batch-norm tips use the same sweep; it is memoised per (settings, seeds) within one process.
    """
    key = json.dumps([ctx.settings, ctx.seeds], sort_keys=True)
    if key in _SWEEPS:
        return _SWEEPS[key]
    w = ctx.get("width", 8)
    sweep: dict[str, dict[float, list[TrainOutcome]]] = {"batch norm": {}, "no norm": {}}
    for seed in ctx.seeds:
        for lr in ctx.get("lrs", (0.01, 0.03, 0.1, 0.3, 1.0)):
            for arm, norm in (("batch norm", "batch"), ("no norm", None)):
                ctx.report(f"{arm}, lr {lr:g}, seed {seed}")
                torch.manual_seed(seed)
                spec = _spec(ctx, optimizer="momentum", lr=lr, seed=seed)
                sweep[arm].setdefault(lr, []).append(train(TinyCNN(width=w, norm=norm), spec))
    _SWEEPS[key] = sweep
    return sweep


def _sweep_evidence(ctx: Context, what: str) -> Evidence:
    sweep = _bn_sweep(ctx)
    lrs = sorted(next(iter(sweep.values())))
    threshold = ctx.get("trains_if_val_acc", 0.5)
    spec = _spec(ctx)
    ev = Evidence(setup=f"TinyCNN width {ctx.get('width', 8)} with batch norm vs without (conv bias instead), SGD + "
                        f"momentum 0.9, constant learning rate, each of {lrs}; embedded MNIST, {spec.subset} training "
                        f"images, {spec.epochs} epoch(s), batch {spec.batch_size}; validation on the 2,000 held-out "
                        f"images. A run 'trains' when its validation accuracy reaches {threshold:g}.")
    nan = float("nan")
    for i, _ in enumerate(ctx.seeds):
        for arm, runs in sweep.items():
            # A diverged run has NaN metrics: it counts as "does not train", never with a stand-in value.
            ok = [lr for lr in lrs if not runs[lr][i].diverged and runs[lr][i].val_acc >= threshold]
            ev.add(arm, best_train_loss_auc=min((runs[lr][i].train_loss_auc for lr in ok), default=nan),
                   log10_max_lr=math.log10(max(ok)) if ok else nan,
                   best_val_acc=max((runs[lr][i].val_acc for lr in ok), default=nan))
            ev.record_health(arm, "" if ok else f"no learning rate of the grid {lrs} reaches validation accuracy "
                                                f"{threshold:g}")
    for arm, runs in sweep.items():
        for lr in lrs:
            ev.values[f"{arm}, lr {lr:g}: val acc (seed {ctx.seeds[0]})"] = round(runs[lr][0].val_acc, 4)
    first = sweep["batch norm"][lrs[0]][0]
    ev.budget = {"epochs": spec.epochs, "optimizer steps": first.steps, "training images seen": first.images,
                 "learning rates per arm and seed": len(lrs)}
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.4))
    for i, (arm, runs) in enumerate(sweep.items()):
        for k, lr in enumerate(lrs):  # every seed's run as a dot (a diverged run has no accuracy to show)
            ax.scatter([lr] * len(runs[lr]), [r.val_acc for r in runs[lr]], s=10, color=f"C{i}",
                       label=arm if k == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"TinyCNN after {ctx.get('epochs', 1)} epoch(s): {what}", fontsize=10)
    ax.legend(fontsize=8)
    ev.plots.append(plots.save(fig, ctx.path("lr_sweep.png")))
    return ev


@train_tip(id="norm.batchnorm-convergence", title="Batch norm speeds convergence",
           claim="Each at its best learning rate of a grid, a CNN with batch norm reaches a lower mean training "
                 "loss in the same number of steps than without.",
           cite=(LECTURE.at(585, 590, "batch normalization: faster training"),
                 README.at(59, 60, "batch norm: convergence")),
           source="Ioffe & Szegedy 2015", section=NORM, exercises=(ConvNormAct,),
           quick={"subset": 2000, "epochs": 1, "batch_size": 32, "lrs": [0.03, 0.1, 0.3, 1.0]},
           full={"subset": 8000, "epochs": 1, "batch_size": 32, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}, budget_s=12,
           shares="bn-sweep",
           metrics={"best_train_loss_auc": "lowest mean training loss over the LR grid"},
           rule=Effect("best_train_loss_auc", "batch norm", "no norm", higher_is_better=False, min_effect=0.05))
def batchnorm_convergence(ctx: Context) -> Evidence:
    """Best (over the LR grid) mean training loss with vs without batch norm."""
    return _sweep_evidence(ctx, "convergence")


@train_tip(id="norm.batchnorm-large-lr", title="Batch norm allows a larger learning rate",
           claim="The largest learning rate at which a CNN still trains is higher with batch norm than without "
                 "(by at least a factor 2.5 on the grid).",
           cite=LECTURE.at(590, topic="batch norm: larger learning rates"),
           source="Ioffe & Szegedy 2015, Sec. 3.3", section=NORM, exercises=(ConvNormAct,),
           quick={"subset": 2000, "epochs": 1, "batch_size": 32, "lrs": [0.03, 0.1, 0.3, 1.0]},
           full={"subset": 8000, "epochs": 1, "batch_size": 32, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}, budget_s=1,
           shares="bn-sweep",
           metrics={"log10_max_lr": "log10 of the largest grid LR reaching 50 % validation accuracy"},
           rule=Effect("log10_max_lr", "batch norm", "no norm", min_effect=0.4))
def batchnorm_large_lr(ctx: Context) -> Evidence:
    """Largest learning rate of the grid at which each variant still trains."""
    return _sweep_evidence(ctx, "largest trainable learning rate")


@train_tip(id="norm.placement", title="Norm before vs after the activation",
           claim="Batch norm placed before the ReLU (conv-BN-ReLU) gives a more accurate network than batch norm "
                 "placed after it (conv-ReLU-BN).",
           cite=(README.at(59, 61, "batch norm: usually before the activation, for better performance"),
                 LECTURE.at(589, topic="batch norm before (or after?) the non-linearity")),
           section=NORM, exercises=(ConvNormAct,),
           quick={"subset": 2000, "epochs": 1}, full={"subset": 8000, "epochs": 2, "lr_grid": [0.33, 1, 3]}, budget_s=8,
           rule=Effect("val_acc", "BN before ReLU", "BN after ReLU", min_effect=0.01))
def norm_placement(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    spec = lambda: _spec(ctx, optimizer="momentum", lr=0.05)  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"TinyCNN width {w}, ConvNormAct order conv-BN-ReLU vs conv-ReLU-BN"))
    run_arms(ctx, ev, {"BN before ReLU": (lambda: TinyCNN(width=w, order="cna"), spec()),
                       "BN after ReLU": (lambda: TinyCNN(width=w, order="can"), spec())})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


@train_tip(id="norm.small-batch", title="Group norm for small batches",
           claim="With tiny batches (2 images), group norm trains better than batch norm, whose statistics get noisy.",
           cite=LECTURE.at(630, topic="small batches: group norm, batch norm unreliable"),
           source="Wu & He, Group Normalization 2018", section=NORM, exercises=(norm_layers, ConvNormAct),
           quick={"subset": 600, "epochs": 1, "batch_size": 2},
           full={"subset": 2000, "epochs": 1, "batch_size": 2, "lr_grid": [0.33, 1, 3]},
           budget_s=12, may_fail=("batch norm",), rule=Effect("val_acc", "group norm", "batch norm", min_effect=0.01))
def small_batch_norm(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    spec = lambda: _spec(ctx, optimizer="momentum", lr=ctx.get("lr", 0.01))  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"TinyCNN width {w}, group norm (4 groups) vs batch norm, batch size "
                                       f"{spec().batch_size}"))
    run_arms(ctx, ev, {"group norm": (lambda: TinyCNN(width=w, norm="group"), spec()),
                       "batch norm": (lambda: TinyCNN(width=w, norm="batch"), spec())})
    _bars(ctx, ev, "val_acc", f"validation accuracy, batch {spec().batch_size}")
    return ev


@train_tip(id="arch.residual-degradation", title="Residual connections fix degradation",
           claim="A deep plain network (16 two-layer blocks) trains worse than a shallow one, and the same deep "
                 "network with identity shortcuts reaches a lower training loss than the plain one.",
           cite=(README.at(107, 109, "skip connections: deeper networks without degradation"),
                 LECTURE.at(573, 581, "ResNet: skip connections")),
           source="He et al., ResNet 2016, Fig. 1", section=NORM,
           quick={"subset": 2000, "epochs": 2, "depth": 16},
           full={"subset": 8000, "epochs": 3, "depth": 20, "lr_grid": [0.33, 1, 3], "tune_metric": "final_train_loss"},
           budget_s=6, may_fail=("plain",),
           rule=AllOf((Effect("final_train_loss", "shallow plain", "plain", higher_is_better=False, min_effect=0.05),
                       Effect("final_train_loss", "residual", "plain", higher_is_better=False, min_effect=0.05))))
def residual_degradation(ctx: Context) -> Evidence:
    depth, width = ctx.get("depth", 16), ctx.get("width", 64)
    spec = lambda: _spec(ctx, optimizer="momentum", lr=ctx.get("lr", 0.05))  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"MLP of {depth} two-layer blocks (width {width}, BN) with identity shortcuts "
                                       f"vs the same layers without, plus a {ctx.get('shallow', 2)}-block plain net",
                               "Metric: training loss of the trained model (eval mode) on its training images."))
    run_arms(ctx, ev, {"residual": (lambda: DeepMLP(depth=depth, width=width, residual=True), spec()),
                       "plain": (lambda: DeepMLP(depth=depth, width=width, residual=False), spec()),
                       "shallow plain": (lambda: DeepMLP(depth=ctx.get("shallow", 2), width=width, residual=False),
                                         spec())})
    _bars(ctx, ev, "train_loss", "training loss after training")
    return ev


@train_tip(id="optim.adaptive-vs-sgd", title="Adam / RMSProp / momentum vs plain SGD",
           claim="At their usual learning rates, Adam, RMSProp and SGD with momentum reach a lower training loss "
                 "than plain SGD in the same number of steps.",
           cite=README.at(115, 117, "Adam, RMSProp, SGD with momentum for faster convergence"),
           section=NORM, exercises=(mlp_model,),
           quick={"subset": 2000, "epochs": 1},
           full={"subset": 8000, "epochs": 2, "lr_grid": [0.33, 1, 3], "tune_metric": "train_loss_auc"}, budget_s=16,
           rule=AllOf((Effect("train_loss_auc", "adam", "sgd", higher_is_better=False, min_effect=0.05),
                       Effect("train_loss_auc", "rmsprop", "sgd", higher_is_better=False, min_effect=0.05),
                       Effect("train_loss_auc", "sgd+momentum", "sgd", higher_is_better=False, min_effect=0.05))))
def optimizers(ctx: Context) -> Evidence:
    hidden = tuple(ctx.get("hidden", (256, 256)))
    arms = {"sgd": TrainSpec(optimizer="sgd", lr=0.05), "sgd+momentum": TrainSpec(optimizer="momentum", lr=0.05),
            "adam": TrainSpec(optimizer="adam", lr=1e-3), "rmsprop": TrainSpec(optimizer="rmsprop", lr=1e-3)}
    for spec in arms.values():
        spec.subset, spec.epochs = ctx.get("subset", 2000), ctx.get("epochs", 1)
    ev = Evidence(setup=_setup(arms["sgd"], f"MLP {hidden}", "LRs: SGD 0.05, SGD+momentum(0.9) 0.05, Adam 1e-3, "
                               "RMSProp 1e-3. Metric: mean training loss over all steps."))
    run_arms(ctx, ev, {name: (lambda: mlp(hidden), spec) for name, spec in arms.items()})
    _bars(ctx, ev, "train_loss_auc", "mean training loss")
    return ev


@train_tip(id="optim.lr-annealing", title="LR annealing beats a constant LR",
           claim="Annealing the learning rate (cosine, one-cycle) ends at a lower validation loss than keeping it "
                 "constant.",
           cite=(README.at(78, 81, "learning-rate annealing"), README.at(118, topic="learning-rate scheduling")),
           section=NORM, exercises=(ConvNormAct,),
           quick={"subset": 2000, "epochs": 2, "lr": 0.05}, full={"subset": 8000, "epochs": 4, "lr": 0.05}, budget_s=12,
           rule=AllOf((Effect("val_loss", "cosine", "constant", higher_is_better=False, min_effect=0.01),
                       Effect("val_loss", "one-cycle", "constant", higher_is_better=False, min_effect=0.01))))
def lr_annealing(ctx: Context) -> Evidence:
    w, lr = ctx.get("width", 8), ctx.get("lr", 0.05)
    arms = {name: _spec(ctx, optimizer="momentum", lr=lr, schedule=schedule)
            for name, schedule in (("constant", "constant"), ("cosine", "cosine"), ("one-cycle", "onecycle"))}
    ev = Evidence(setup=_setup(arms["constant"], f"TinyCNN width {w}", "Same peak LR for every schedule."))
    run_arms(ctx, ev, {name: (lambda: TinyCNN(width=w), spec) for name, spec in arms.items()})
    _bars(ctx, ev, "val_loss", "validation loss")
    _loss_curves(ctx, ev, "training loss per epoch")
    return ev


@train_tip(id="optim.gradient-clipping", title="Gradient clipping prevents explosion",
           claim="At a learning rate where an unnormalised MLP blows up (NaN loss), clipping the gradient norm "
                 "keeps training finite and ends at a lower loss.",
           cite=(LECTURE.at(541, 542, "exploding gradients: clip them"), README.at(73, 75, "gradient clipping")),
           source="Pascanu et al. 2013", section=NORM, exercises=(mlp_model,),
           quick={"subset": 2000, "epochs": 1, "lr": 2.0, "clip": 1.0},
           full={"subset": 8000, "epochs": 1, "lr": 2.0, "clip": 1.0}, budget_s=4, may_fail=("no clipping",),
           metrics={"diverged": "1 when the run's loss became NaN/Inf, else 0"},
           rule=Effect("diverged", "clipped", "no clipping", higher_is_better=False, min_effect=0.5))
def gradient_clipping(ctx: Context) -> Evidence:
    lr, clip, hidden = ctx.get("lr", 2.0), ctx.get("clip", 1.0), tuple(ctx.get("hidden", (256, 256)))
    spec = lambda c: _spec(ctx, optimizer="sgd", lr=lr, clip_norm=c)  # noqa: E731
    ev = Evidence(setup=_setup(spec(None), f"MLP {hidden} without normalisation, plain SGD at a large learning rate",
                               f"Clipping the global gradient norm to {clip:g} vs none. A NaN/Inf loss counts as "
                               f"divergence; a diverged run has no loss to compare, so the rule compares the "
                               f"divergence rates and the unclipped arm is allowed to fail."))
    run_arms(ctx, ev, {"clipped": (lambda: mlp(hidden), spec(clip)), "no clipping": (lambda: mlp(hidden), spec(None))})
    ev.headline = ", ".join(f"{arm}: diverged in {int(sum(m['diverged']))}/{len(m['diverged'])} runs"
                            for arm, m in ev.arms.items())
    _bars(ctx, ev, "diverged", "diverged (1) or finite (0), per seed")
    return ev


@train_tip(id="optim.mixed-precision", title="Mixed precision keeps accuracy",
           claim="Training with bf16 autocast reaches the same accuracy as fp32 (within 1 point).",
           cite=(README.at(211, 212, "mixed precision keeps accuracy"), README.at(196, 197, "FP16/AMP")),
           source="Micikevicius et al. 2018", section=NORM, exercises=(ConvNormAct,),
           quick={"subset": 2000, "epochs": 1}, full={"subset": 8000, "epochs": 2}, budget_s=12,
           rule=Equivalent("val_acc", "bf16 autocast", "fp32", margin=0.01))
def mixed_precision(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    spec = lambda amp: _spec(ctx, optimizer="momentum", lr=0.05, amp=amp)  # noqa: E731
    ev = Evidence(setup=_setup(spec(False), f"TinyCNN width {w}", "bf16 autocast on CPU vs fp32; the time per arm "
                               "is reported (bf16 speed depends on the CPU's bf16 support)."))
    run_arms(ctx, ev, {"bf16 autocast": (lambda: TinyCNN(width=w), spec(True)),
                       "fp32": (lambda: TinyCNN(width=w), spec(False))})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    _bars(ctx, ev, "seconds", "training time (s)")
    return ev


@train_tip(id="reg.dropout", title="Dropout against overfitting",
           claim="On a small training set, dropout narrows the gap between training and validation loss.",
           cite=(README.at(120, 121, "dropout against overfitting"), LECTURE.at(448, topic="AlexNet: dropout")),
           source="Srivastava et al. 2014", section=REG, exercises=(mlp_model,),
           quick={"subset": 1000, "epochs": 20, "p": 0.5, "hidden": [256, 256]},
           full={"subset": 1000, "epochs": 40, "p": 0.5}, budget_s=12,
           rule=Effect("generalization_gap", "dropout 0.5", "no dropout", higher_is_better=False, min_effect=0.02))
@train_tip(id="reg.too-much-dropout", title="Too much dropout underfits",
           claim="With dropout 0.9 the network underfits: its training loss stays well above the one without dropout.",
           cite=README.at(122, topic="dropout in moderation, or it underfits"),
           section=REG, exercises=(mlp_model,),
           quick={"subset": 1000, "epochs": 20, "p": 0.9, "hidden": [256, 256]},
           full={"subset": 1000, "epochs": 40, "p": 0.9}, budget_s=12,
           may_fail=("dropout 0.9",),
           rule=Effect("train_loss", "no dropout", "dropout 0.9", higher_is_better=False, min_effect=0.05))
def dropout(ctx: Context) -> Evidence:
    p, hidden = ctx.get("p", 0.5), tuple(ctx.get("hidden", (512, 512)))
    spec = lambda: _spec(ctx, optimizer="momentum", lr=0.05)  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"MLP {hidden} with dropout {p:g} vs none",
                               "generalization_gap = validation loss - training loss (both in eval mode)."))
    run_arms(ctx, ev, {f"dropout {p:g}": (lambda: mlp(hidden, p), spec()),
                       "no dropout": (lambda: mlp(hidden, 0.0), spec())})
    _bars(ctx, ev, "generalization_gap", "validation - training loss")
    _bars(ctx, ev, "train_loss", "training loss (eval mode)")
    return ev


@train_tip(id="reg.weight-decay", title="Weight decay against overfitting",
           claim="On a small training set, L2 weight decay lowers the validation loss.",
           cite=README.at(120, 121, "L2 regularization against overfitting"),
           source="Loshchilov & Hutter 2019", section=REG, exercises=(mlp_model,),
           quick={"subset": 1000, "epochs": 20, "wd": 5e-3, "hidden": [256, 256]},
           full={"subset": 1000, "epochs": 40, "wd": 5e-3},
           budget_s=10,
           rule=Effect("val_loss", "weight decay", "no weight decay", higher_is_better=False, min_effect=0.01))
def weight_decay(ctx: Context) -> Evidence:
    wd, hidden = ctx.get("wd", 5e-3), tuple(ctx.get("hidden", (512, 512)))
    spec = lambda d: _spec(ctx, optimizer="momentum", lr=0.05, weight_decay=d)  # noqa: E731
    ev = Evidence(setup=_setup(spec(0.0), f"MLP {hidden}", f"L2 weight decay {wd:g} vs none."))
    run_arms(ctx, ev, {"weight decay": (lambda: mlp(hidden), spec(wd)),
                       "no weight decay": (lambda: mlp(hidden), spec(0.0))})
    _bars(ctx, ev, "val_loss", "validation loss")
    return ev


@train_tip(id="reg.augmentation", title="Data augmentation",
           claim="On a small training set, random crops and small rotations raise validation accuracy.",
           cite=(README.at(154, 156, "data augmentation"), LECTURE.at(448, topic="AlexNet: data augmentation"),
                 LECTURE.at(1536, 1539, "augmentation among the most successful tricks")),
           section=REG, exercises=(ConvNormAct,),
           quick={"subset": 1000, "epochs": 8, "crop_padding": 2, "rotate_degrees": 10.0},
           full={"subset": 1000, "epochs": 24, "crop_padding": 2, "rotate_degrees": 10.0}, budget_s=12,
           rule=Effect("val_acc", "augmented", "no augmentation", min_effect=0.01))
def augmentation(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    aug = {k: ctx[k] for k in ("crop_padding", "rotate_degrees", "cutout") if k in ctx.settings}
    spec = lambda a: _spec(ctx, optimizer="momentum", lr=0.05, augment=a)  # noqa: E731
    ev = Evidence(setup=_setup(spec({}), f"TinyCNN width {w}", f"augmentation {aug or 'none'} vs none."))
    run_arms(ctx, ev, {"augmented": (lambda: TinyCNN(width=w), spec(aug)),
                       "no augmentation": (lambda: TinyCNN(width=w), spec({}))})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


@train_tip(id="reg.label-smoothing", title="Label smoothing: accuracy and calibration",
           claim="Label smoothing (eps 0.1) does not hurt accuracy and lowers the expected calibration error of an "
                 "over-confident network.",
           cite=(README.at(88, 91, "label smoothing"), LECTURE.at(760, topic="Inception v3: label smoothing")),
           source="Szegedy et al. 2016; Mueller, Kornblith & Hinton 2019", section=REG,
           exercises=(mlp_model,),
           quick={"subset": 1000, "epochs": 20, "eps": 0.1, "hidden": [256, 256]},
           full={"subset": 1000, "epochs": 40, "eps": 0.1},
           budget_s=10,
           rule=AllOf((Effect("val_ece", "label smoothing", "hard labels", higher_is_better=False, min_effect=0.01),
                       NonInferior("val_acc", "label smoothing", "hard labels", margin=0.01))))
def label_smoothing(ctx: Context) -> Evidence:
    eps, hidden = ctx.get("eps", 0.1), tuple(ctx.get("hidden", (512, 512)))
    spec = lambda e: _spec(ctx, optimizer="momentum", lr=0.05, label_smoothing=e)  # noqa: E731
    ev = Evidence(setup=_setup(spec(0.0), f"MLP {hidden}", f"label smoothing eps {eps:g} vs hard labels; ECE with "
                               f"15 equal-width bins on the validation set."))
    run_arms(ctx, ev, {"label smoothing": (lambda: mlp(hidden), spec(eps)),
                       "hard labels": (lambda: mlp(hidden), spec(0.0))})
    _bars(ctx, ev, "val_ece", "expected calibration error (validation)")
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


class MultiScaleCNN(nn.Module):
    """TinyCNN whose first stage is either a :class:`dltricks.layers.multiscale.TwoPathwayBlock` (a full-resolution
    and a 2x-downsampled pathway, fused by concatenation + 1x1) or its full-resolution pathway alone."""

    def __init__(self, *, width: int = 8, two_pathways: bool, num_classes: int = 10) -> None:
        super().__init__()
        first = (TwoPathwayBlock(1, width, scale_factor=2, depth=2) if two_pathways
                 else _pathway(1, width, 2, 3, "batch", "relu"))
        self.features = nn.Sequential(first, nn.MaxPool2d(2), ConvNormAct(width, 2 * width, 3), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 7 * 7, num_classes))

    def forward(self, x):
        return self.head(self.features(x))  # (B, num_classes)


@train_tip(id="conv.multiscale-input", title="Multi-scale two-pathway input",
           claim="Adding a downsampled pathway to the full-resolution one and fusing them (the README's two-pathway "
                 "input) improves accuracy over the full-resolution pathway alone (the extra pathway's weights "
                 "are reported).",
           cite=README.at(44, 50, "multi-scale input processing"),
           section=CONV, exercises=(multiscale_layers, ConvNormAct),
           quick={"subset": 2000, "epochs": 1, "width": 8},
           full={"subset": 8000, "epochs": 3, "width": 8, "lr_grid": [0.33, 1, 3]},
           budget_s=8, rule=Effect("val_acc", "two pathways", "one pathway", min_effect=0.01))
def multiscale_input(ctx: Context) -> Evidence:
    w = ctx.get("width", 8)
    spec = lambda: _spec(ctx, optimizer="momentum", lr=0.05)  # noqa: E731
    two, one = (lambda: MultiScaleCNN(width=w, two_pathways=True)), (lambda: MultiScaleCNN(width=w, two_pathways=False))
    ev = Evidence(setup=_setup(spec(), f"small CNN whose first stage is a two-pathway block (full + 2x-downsampled "
                                       f"input, width {w}) vs its full-resolution pathway alone"))
    ev.values.update({"params, two pathways": count_params(two()).total,
                      "params, one pathway": count_params(one()).total})
    run_arms(ctx, ev, {"two pathways": (two, spec()), "one pathway": (one, spec())})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


class BlockCNN(nn.Module):
    """A 3x3 stem to ``width`` channels, then ``blocks`` blocks per stage (two stages, 2x2 max-pool after
    each) and a linear classifier on the flattened 7x7 map.

    ``kind="residual"``: ``relu(x + conv-BN(conv-BN-ReLU(x)))`` blocks; ``kind="bottleneck"``: residual
    :class:`dltricks.layers.conv.ConvBottleneck` blocks (1x1 reduce to ``mid``, 3x3 with ``groups``, 1x1 expand).
    The last BN scale of every block starts at zero (Goyal et al. 2017): without it these small residual
    nets stay near chance after one epoch at lr 0.05.
    """

    def __init__(self, *, width: int, blocks: int, kind: str = "residual", mid: int | None = None, groups: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()

        def block() -> nn.Module:
            if kind == "bottleneck":
                return ConvBottleneck(width, width, mid or width, groups=groups, last_act=False)
            return nn.Sequential(ConvNormAct(width, width, 3), ConvNormAct(width, width, 3, act_layer=None))

        self.stem = ConvNormAct(1, width, 3)
        self.stages = nn.ModuleList(nn.ModuleList(block() for _ in range(blocks)) for _ in range(2))
        for stage in self.stages:  # zero-init the last BN scale of each block: every block starts as identity
            for b in stage:
                nn.init.zeros_([m for m in b.modules() if isinstance(m, nn.BatchNorm2d)][-1].weight)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x):
        x = self.stem(x)  # (B, width, 28, 28)
        for stage in self.stages:
            for block in stage:
                x = (x + block(x)).relu()
            x = self.pool(x)  # (B, width, H/2, W/2)
        return self.head(x.flatten(1))  # (B, num_classes)


@train_tip(id="conv.group-cardinality", title="Cardinality at equal parameters",
           claim="At equal parameters (11,610 each), bottlenecks whose 3x3 convolution is split into 8 groups and "
                 "made twice as wide (higher cardinality, ResNeXt) are more accurate than plain narrow bottlenecks.",
           cite=LECTURE.at(766, 790, "ResNeXt: group convolutions, cardinality vs error"),
           source="Xie et al., ResNeXt 2017", section=CONV, exercises=(ConvBottleneck, ConvNormAct),
           quick={"subset": 2000, "epochs": 1, "width": 16, "blocks": 2, "groups": 8, "mid_plain": 8,
                  "mid_grouped": 16, "lr": 0.02},
           full={"subset": 8000, "epochs": 3, "width": 16, "blocks": 2, "groups": 8, "mid_plain": 8,
                 "mid_grouped": 16, "lr": 0.02, "lr_grid": [0.33, 1, 3]},
           budget_s=10, rule=Effect("val_acc", "grouped", "plain", min_effect=0.01))
def group_cardinality(ctx: Context) -> Evidence:
    w, g, blocks = ctx.get("width", 16), ctx.get("groups", 8), ctx.get("blocks", 2)
    mid_plain, mid_group = ctx.get("mid_plain", 8), ctx.get("mid_grouped", 16)
    plain = lambda: BlockCNN(width=w, blocks=blocks, kind="bottleneck", mid=mid_plain)  # noqa: E731
    grouped = lambda: BlockCNN(width=w, blocks=blocks, kind="bottleneck", mid=mid_group, groups=g)  # noqa: E731
    spec = lambda: _spec(ctx, optimizer="momentum", lr=ctx.get("lr", 0.02))  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"CNN with {blocks} residual bottleneck blocks per stage (width {w}): "
                                       f"1x1-3x3-1x1 at {mid_plain} channels vs a wider {mid_group}-channel 3x3 "
                                       f"in {g} groups (ResNeXt-style)"))
    p_plain, p_group = count_params(plain()).total, count_params(grouped()).total
    ev.values.update({"params plain": p_plain, "params grouped": p_group,
                      "params ratio grouped/plain": round(p_group / p_plain, 3)})
    run_arms(ctx, ev, {"grouped": (grouped, spec()), "plain": (plain, spec())})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    return ev


@train_tip(id="conv.wide-vs-deep", title="Wide vs deep at equal parameters",
           claim="At (nearly) equal parameters, a wide shallow residual CNN (1 block per stage, width 14) is more "
                 "accurate than a deep thin one (4 blocks per stage, width 8).",
           cite=LECTURE.at(968, 982, "WideResNet: wide and shallow beats thin and deep"),
           source="Zagoruyko & Komodakis, Wide ResNets 2016", section=CONV, exercises=(ConvNormAct,),
           quick={"subset": 2000, "epochs": 1, "deep_width": 8, "deep_blocks": 4, "wide_width": 14, "wide_blocks": 1},
           full={"subset": 8000, "epochs": 3, "deep_width": 8, "deep_blocks": 4, "wide_width": 14, "wide_blocks": 1,
                 "lr_grid": [0.33, 1, 3]},
           budget_s=10, rule=Effect("val_acc", "wide", "deep", min_effect=0.01))
def wide_vs_deep(ctx: Context) -> Evidence:
    deep_w, deep_b = ctx.get("deep_width", 8), ctx.get("deep_blocks", 4)
    wide_w, wide_b = ctx.get("wide_width", 16), ctx.get("wide_blocks", 1)
    deep = lambda: BlockCNN(width=deep_w, blocks=deep_b)  # noqa: E731
    wide = lambda: BlockCNN(width=wide_w, blocks=wide_b)  # noqa: E731
    spec = lambda: _spec(ctx, optimizer="momentum", lr=ctx.get("lr", 0.05))  # noqa: E731
    ev = Evidence(setup=_setup(spec(), f"residual CNN: {deep_b} blocks per stage at width {deep_w} (deep) vs {wide_b} "
                                       f"at width {wide_w} (wide)"))
    p_deep, p_wide = count_params(deep()).total, count_params(wide()).total
    ev.values.update({"params deep": p_deep, "params wide": p_wide,
                      "params ratio wide/deep": round(p_wide / p_deep, 3)})
    run_arms(ctx, ev, {"wide": (wide, spec()), "deep": (deep, spec())})
    _bars(ctx, ev, "val_acc", "validation accuracy")
    _bars(ctx, ev, "seconds", "training time (s)")
    return ev

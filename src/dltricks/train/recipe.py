"""The training recipe: one typed dataclass in which every training trick is one option.

A :class:`Recipe` has these sections, each a small dataclass:

* ``optim``: the optimizer (SGD with optional Nesterov momentum, Adam, AdamW, RMSprop, Adadelta), the
  learning rate and weight decay, optionally not applied to normalisation weights and biases;
* ``schedule``: the learning-rate schedule (constant, step, multistep, exponential, cosine, one-cycle),
  evaluated at every optimizer step, with an optional linear warm-up in front;
* ``train``: epochs, batch size, gradient accumulation, label smoothing, gradient clipping, mixed
  precision, seed, deterministic mode, device, the ``overfit_batch`` sanity mode;
* ``augment``: batched data augmentation (:class:`dltricks.data.augment.AugmentConfig`), applied by the
  data loaders;
* ``ema``: an exponential moving average of the weights, evaluated instead of the raw weights when on;
* ``early_stop``: stop when a validation metric has not improved for ``patience`` epochs;
* ``checkpoint``: how often the full trainer state is saved for ``--resume``.
* ``distill``: knowledge distillation from a teacher run (soft targets at temperature T mixed with the
  hard labels by alpha; optionally a FitNets feature hint, and the teacher's logits cached per example).
* ``finetune``: fine-tuning by layer groups (frozen groups, gradual unfreezing, learning rates per group);
* ``compress``: compression while training (:mod:`dltricks.train.compression`): quantization-aware training
  (fake-quant, then an int8 model) and an iterative prune -> fine-tune schedule;
* ``maml``: the inner loop of gradient-based meta-learning (MAML, first-order MAML, Reptile), read by
  :func:`dltricks.fewshot.maml.fit_meta` and ignored by plain training.

Recipes are YAML files holding any subset of these keys (everything else keeps its default), e.g.::

    optim: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4, skip_norm_bias: true}
    schedule: {name: cosine, warmup_epochs: 1}
    train: {epochs: 30, batch_size: 128, label_smoothing: 0.1}
    augment: {crop_padding: 4, hflip: true}

and the command line overrides single keys: ``--set optim.lr=0.05 --set train.amp=true``. Unknown keys,
values of the wrong type and out-of-range values (a learning rate <= 0...) raise a
:class:`~dltricks.errors.ConfigError` naming the key. Recipes shipped with the package
(``dltricks/recipes/*.yaml``) are found by name: ``--recipe mnist-speedrun``.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dltricks.config import (apply_overrides, check_fraction, check_non_negative, check_positive, describe, field,
                             from_dict, load_yaml, parse_assignment, to_dict)
from dltricks.data.augment import AugmentConfig
from dltricks.errors import ConfigError, did_you_mean

__all__ = ["OptimConfig", "ScheduleConfig", "TrainConfig", "EmaConfig", "EarlyStopConfig", "CheckpointConfig",
           "DistillConfig", "FinetuneConfig", "CompressConfig", "MamlConfig", "Recipe", "load_recipe", "list_recipes",
           "recipe_path", "describe_recipe"]


def _check_momentum(value: Any) -> str | None:
    return None if 0.0 <= value < 1.0 else "a momentum in [0, 1)"


def _check_betas(value: Any) -> str | None:
    return None if all(0.0 <= b < 1.0 for b in value) else "two numbers in [0, 1)"


def _check_unit(value: Any) -> str | None:
    return None if 0.0 <= value <= 1.0 else "a number in [0, 1]"


def _check_open_unit(value: Any) -> str | None:
    return None if 0.0 < value < 1.0 else "a number in (0, 1)"


def _check_lookahead_alpha(value: Any) -> str | None:
    return None if 0.0 < value <= 1.0 else "a number in (0, 1]"


def _check_amounts(value: Any) -> str | None:
    return None if all(0.0 < a < 1.0 for a in value) else "fractions in (0, 1), e.g. [0.5, 0.8]"


def _check_at_least_one(value: Any) -> str | None:
    return None if value >= 1 else "an integer >= 1"


def _check_val_metric(value: Any) -> str | None:
    return (None if re.fullmatch(r"val_[a-z0-9_@]+", value)
            else "a validation metric name such as val_loss or val_accuracy")


def _check_seed(value: Any) -> str | None:
    # torch takes 64-bit seeds and the loaders hash (seed, epoch, batch, rank) as signed 64-bit integers;
    # seed + rank must fit.
    return None if 0 <= value <= 2**62 else "an integer in [0, 2**62]"


def _check_device(value: Any) -> str | None:
    if value in ("auto", "cpu", "cuda", "mps"):
        return None
    if isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return None
    return "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"


@dataclass
class OptimConfig:
    """Optimizer and weight decay."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adadelta"] = field(
        "sgd", help="optimizer: sgd (plain or momentum/Nesterov), adam, adamw (decoupled weight decay, "
                    "Loshchilov & Hutter 2019), rmsprop, adadelta (Zeiler 2012)")
    lr: float = field(0.1, help="peak learning rate (the schedule multiplies it)", check=check_positive)
    momentum: float = field(0.9, help="momentum of sgd and rmsprop (0 = plain SGD)", check=_check_momentum)
    nesterov: bool = field(False, help="Nesterov momentum for sgd (Sutskever et al. 2013); needs momentum > 0")
    weight_decay: float = field(0.0, help="L2 penalty (coupled for sgd/adam/rmsprop, decoupled for adamw)",
                                check=check_non_negative)
    skip_norm_bias: bool = field(False, help="no weight decay on normalisation weights and biases (all 1-D "
                                             "parameters), as in Goyal et al. 2017 and timm")
    betas: tuple[float, float] = field((0.9, 0.999), help="adam/adamw moment decay rates", check=_check_betas)
    eps: float = field(1e-8, help="adam/adamw/rmsprop/adadelta denominator epsilon", check=check_positive)
    alpha: float = field(0.99, help="rmsprop squared-gradient smoothing constant", check=_check_open_unit)
    rho: float = field(0.9, help="adadelta running-average coefficient", check=_check_open_unit)
    no_decay_lr_mult: float = field(1.0, help="learning-rate multiplier of the parameters skip_norm_bias exempts "
                                              "from weight decay (airbench94 trains its BN shifts 64x faster)",
                                    check=check_positive)
    lookahead_steps: int = field(0, help="Lookahead (Zhang et al. 2019): every this many steps the slow weights move "
                                         "lookahead_alpha of the way to the fast ones, which restart there; 0 = off",
                                 check=check_non_negative)
    lookahead_alpha: float = field(0.5, help="Lookahead step size of the slow weights, in (0, 1]",
                                   check=_check_lookahead_alpha)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, evaluated at every optimizer step."""

    name: Literal["constant", "step", "multistep", "exponential", "cosine", "onecycle"] = field(
        "constant", help="constant; step (x gamma every step_epochs); multistep (x gamma at each milestone); "
                         "exponential (x gamma per epoch); cosine (Loshchilov & Hutter 2017, to min_lr_factor); "
                         "onecycle (Smith & Topin 2019)")
    interval: Literal["step", "epoch"] = field(
        "step", help="'step': the lr changes at every optimizer step (smooth); 'epoch': only at epoch "
                     "boundaries, like torch schedulers stepped once per epoch")
    warmup_epochs: float = field(0.0, help="linear warm-up length in epochs (fractions allowed) in front of the "
                                           "schedule (Goyal et al. 2017); 0 = off", check=check_non_negative)
    warmup_steps: int = field(0, help="linear warm-up length in optimizer steps (instead of warmup_epochs, for "
                                       "step-based runs); 0 = off", check=check_non_negative)
    warmup_start_factor: float = field(0.0, help="warm-up starts at lr x this factor", check=_check_unit)
    step_epochs: float = field(30.0, help="step: epochs between decays", check=check_positive)
    milestones: tuple[float, ...] = field((), help="multistep: epochs at which the lr is multiplied by gamma")
    gamma: float = field(0.1, help="step/multistep/exponential: multiplicative decay factor",
                         check=check_positive)
    min_lr_factor: float = field(0.0, help="cosine: final lr = lr x this factor", check=_check_unit)
    pct_start: float = field(0.25, help="onecycle: fraction of the steps spent increasing the lr",
                             check=_check_open_unit)
    div_factor: float = field(25.0, help="onecycle: initial lr = lr / div_factor", check=check_positive)
    final_div_factor: float = field(1e4, help="onecycle: final lr = initial lr / final_div_factor",
                                    check=check_positive)


@dataclass
class TrainConfig:
    """Loop length, batch, regularisers applied in the loop, precision and reproducibility."""

    epochs: int = field(10, help="passes over the training data (ignored when train.steps > 0)",
                        check=_check_at_least_one)
    steps: int = field(0, help="length of the run in optimizer steps instead of epochs (0 = use epochs): the "
                               "schedule spans these steps and an 'epoch' becomes one evaluation period of the "
                               "training loader's length; tasks that stream fresh batches (the synthetic "
                               "sequence tasks) need it", check=check_non_negative)
    batch_size: int = field(128, help="samples per batch (per rank under DDP)", check=_check_at_least_one)
    eval_batch_size: int | None = field(None, help="evaluation batch size (default: 2 x batch_size)",
                                        check=check_positive)
    accum_steps: int = field(1, help="gradient accumulation: micro-batches per optimizer step (the effective "
                                     "batch is batch_size x accum_steps)", check=_check_at_least_one)
    label_smoothing: float = field(0.0, help="label smoothing epsilon (Szegedy et al. 2016); 0 = off",
                                   check=check_fraction)
    grad_clip: float = field(0.0, help="gradient clipping threshold (0 = off)", check=check_non_negative)
    grad_clip_mode: Literal["norm", "value"] = field(
        "norm", help="'norm': rescale all gradients so their global L2 norm is <= grad_clip (Pascanu et al. "
                     "2013); 'value': clamp each gradient element to [-grad_clip, grad_clip]")
    amp: bool = field(False, help="mixed precision: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = field(
        "auto", help="autocast dtype when amp is on ('auto': float16 on CUDA, bfloat16 elsewhere); float16 "
                     "uses a GradScaler")
    channels_last: bool | Literal["auto"] = field(
        "auto", help="NHWC memory format for the model and the 4-D inputs; 'auto': on when the model has 2-D "
                     "convolutions (measured 1.0-1.5x faster training for the CNN families on CPU, "
                     "docs/benchmarks.md), off otherwise")
    seed: int = field(0, help="seed of weights initialisation (CLI), data order, augmentation and dropout "
                              "(0 <= seed <= 2**62)", check=_check_seed)
    deterministic: bool = field(False, help="deterministic kernels (torch.use_deterministic_algorithms, cuDNN "
                                            "benchmark off); slower on GPU, errors on ops without one")
    device: str = field("auto", help="'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'",
                        check=_check_device)
    eval_every: int = field(1, help="evaluate on the validation split every this many epochs (and after the last)",
                            check=_check_at_least_one)
    max_steps: int = field(0, help="stop after this many optimizer steps in total, keeping the schedule of "
                                   "all epochs (0 = no limit; for smoke tests and interruptions)",
                           check=check_non_negative)
    overfit_batch: bool = field(False, help="sanity mode: train on the first training batch only until its "
                                            "loss is below overfit_loss (no augmentation, no label smoothing)")
    overfit_steps: int = field(500, help="overfit_batch: maximum optimizer steps", check=_check_at_least_one)
    overfit_loss: float = field(0.01, help="overfit_batch: target loss", check=check_positive)
    bn_recalibrate: int = field(0, help="after the last epoch, recompute the BatchNorm running statistics of the "
                                        "evaluated model as the plain average over this many training batches "
                                        "(the method of torch.optim.swa_utils.update_bn; 0 = off): after a short "
                                        "run the running averages lag behind the weights", check=check_non_negative)
    data_init: int = field(0, help="before the first step, pass this many training images (one pass of the training "
                                   "loader) to the model's init_from_data(x): data-dependent initialisation such as "
                                   "the patch whitening of airbench_cifar; 0 = off", check=check_non_negative)
    tta_flip: bool = field(False, help="test-time augmentation: validation logits are the mean of the image's and its "
                                       "mirror image's (4-D image inputs)")
    log: Literal["none", "tensorboard"] = field(
        "none", help="run tracking besides the metrics files: 'tensorboard' writes scalars per step and epoch, "
                     "hyper-parameters and images to run_dir/tensorboard (rank 0; docs/serve.md)")


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (Polyak & Juditsky 1992)."""

    decay: float = field(0.0, help="EMA decay per update (e.g. 0.999); 0 = off. When on, validation metrics, "
                                   "best checkpoints and exported weights use the EMA weights", check=check_fraction)
    warmup: bool = field(True, help="use decay min(decay, (1 + n) / (10 + n)) after n updates, so early "
                                    "averages are not dominated by the random initialisation")
    every: int = field(1, help="update the average every this many optimizer steps", check=_check_at_least_one)


@dataclass
class EarlyStopConfig:
    """Stop training when a validation metric stops improving."""

    patience: int = field(0, help="epochs (evaluations) without improvement before stopping; 0 = off",
                          check=check_non_negative)
    metric: str = field("val_loss", help="metric watched: val_loss, val_accuracy or any val_<metric> the task "
                                         "reports (e.g. val_dice); lower is better for names with 'loss' or "
                                         "'error', higher otherwise", check=_check_val_metric)
    min_delta: float = field(0.0, help="smallest change that counts as an improvement", check=check_non_negative)
    target: float | None = field(None, help="stop as soon as the watched metric reaches this value (e.g. "
                                            "val_accuracy 0.999); null = off")

    @property
    def lower_is_better(self) -> bool:
        return "loss" in self.metric or "error" in self.metric


@dataclass
class CheckpointConfig:
    """When the trainer state is saved (only when a run directory is given)."""

    every_epochs: int = field(1, help="save the full state every this many epochs (0 = only at the end)",
                              check=check_non_negative)
    every_steps: int = field(0, help="also save mid-epoch every this many optimizer steps (0 = off)",
                             check=check_non_negative)
    keep_best: bool = field(True, help="also keep best.safetensors, the weights with the best validation metric")


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher (Hinton et al. 2015), with an optional feature hint (FitNets,
    Romero et al. 2015) and a cache of the teacher's logits (:mod:`dltricks.train.distill`)."""

    teacher: str = field("", help="run directory or weights file of the teacher ('' = off; fit(teacher=...) "
                                  "takes a module); it runs in eval mode without gradients")
    temperature: float = field(4.0, help="softmax temperature T of the soft targets; the soft loss is scaled by "
                                         "T^2", check=check_positive)
    alpha: float = field(0.9, help="weight of the soft-target loss; the hard-label loss gets 1 - alpha",
                         check=_check_unit)
    hint_weight: float = field(0.0, help="weight of the FitNets hint loss (Romero et al. 2015): the MSE between a "
                                         "learned regressor of the student's guided_layer output and the teacher's "
                                         "hint_layer output, added to the objective; 0 = off",
                               check=check_non_negative)
    hint_layer: str = field("", help="the teacher's module whose output is the hint, named as in named_modules() "
                                     "(e.g. features.3)")
    guided_layer: str = field("", help="the student's module whose output is regressed onto the hint, named as in "
                                       "named_modules() (e.g. features.1)")
    cache_teacher: bool = field(False, help="compute each training example's teacher logits once, in the first "
                                            "epoch, and reuse them; refused with augmentation (the inputs change) "
                                            "and with a hint (it needs the teacher's features every step); "
                                            "nothing without a teacher")


@dataclass
class FinetuneConfig:
    """Fine-tuning a pretrained network by layer groups stem / stages.N / head (:mod:`dltricks.train.finetune`)."""

    freeze: tuple[str, ...] = field((), help="layer groups kept frozen: stem, stages (all), stages.N, head; "
                                             "default: none")
    linear_probe: bool = field(False, help="train the classifier head only (the same as freeze: [stem, stages])")
    unfreeze_every: float = field(0.0, help="gradual unfreezing (Howard & Ruder 2018): the frozen groups thaw one "
                                            "at a time from the head down, one every this many epochs; 0 = off",
                                  check=check_non_negative)
    lr_mult: dict[str, float] = field(default_factory=dict,
                                      help="discriminative learning rates: lr multiplier per layer group, e.g. "
                                           "{stem: 0.01, stages: 0.1}; a group not named gets 1")
    freeze_bn_stats: bool = field(False, help="BatchNorm layers keep their running statistics (eval mode) while "
                                              "the rest trains")


@dataclass
class CompressConfig:
    """Compression while training (:mod:`dltricks.train.compression`)."""

    qat: bool = field(False, help="quantization-aware training (Jacob et al. 2018): train a fake-quantized copy of "
                                  "the model (FX, per-channel weights, moving-average activation ranges), then "
                                  "convert it to int8; fit returns the int8 model")
    qat_backend: Literal["x86", "fbgemm", "qnnpack", "onednn"] = field(
        "x86", help="the int8 kernels QAT simulates and converts to (torch.backends.quantized.engine)")
    prune_amounts: tuple[float, ...] = field((), help="iterative magnitude pruning (Han et al. 2015): increasing "
                                                      "sparsities of the Conv/Linear weights, one step at the start "
                                                      "of every prune_epochs epochs, masks kept while training, "
                                                      "made permanent at the end; e.g. [0.5, 0.8]; [] = off",
                                             check=_check_amounts)
    prune_scope: Literal["global", "layer"] = field(
        "global", help="'global': one magnitude threshold over all layers; 'layer': the same fraction of every layer")
    prune_epochs: int = field(1, help="fine-tuning epochs after each pruning step (the last step's run to the end)",
                              check=_check_at_least_one)


@dataclass
class MamlConfig:
    """The inner loop of MAML, first-order MAML and Reptile (:mod:`dltricks.fewshot.maml`); only
    :func:`~dltricks.fewshot.maml.fit_meta` reads it."""

    method: Literal["maml", "fomaml", "reptile"] = field(
        "maml", help="maml (Finn et al. 2017, second order: the outer gradient runs through the inner steps); "
                     "fomaml (the first-order approximation: inner gradients are constants); reptile (Nichol et al. "
                     "2018: theta moves towards the adapted weights)")
    inner_steps: int = field(1, help="SGD steps on an episode's support set during meta-training",
                             check=_check_at_least_one)
    inner_lr: float = field(0.4, help="step size alpha of the inner SGD steps", check=check_positive)
    eval_steps: int = field(0, help="inner steps on the support set of a test episode (0 = inner_steps); Finn et "
                                    "al. take more at test than in training", check=check_non_negative)
    tasks_per_batch: int = field(1, help="episodes whose query losses are averaged into one outer step (the "
                                         "meta-batch; Finn et al. use 32 for 5-way Omniglot); with train.steps, "
                                         "a run sees steps x tasks_per_batch episodes", check=_check_at_least_one)


@dataclass
class Recipe:
    """Everything that defines a training run apart from the model and the data."""

    optim: OptimConfig = field(default_factory=OptimConfig, help="optimizer")
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, help="learning-rate schedule")
    train: TrainConfig = field(default_factory=TrainConfig, help="training loop")
    augment: AugmentConfig = field(default_factory=AugmentConfig, help="data augmentation")
    ema: EmaConfig = field(default_factory=EmaConfig, help="weight averaging")
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig, help="early stopping")
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, help="checkpoints")
    distill: DistillConfig = field(default_factory=DistillConfig, help="knowledge distillation")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, help="fine-tuning by layer groups")
    compress: CompressConfig = field(default_factory=CompressConfig, help="compression while training")
    maml: MamlConfig = field(default_factory=MamlConfig, help="meta-learning inner loop")
    model: str = field("", help="the registered model this recipe is tuned for: `dltricks train --recipe R` "
                                "trains it when no MODEL is named (a MODEL given on the command line wins)")
    data: dict[str, Any] = field(default_factory=dict,
                                 help="options of the data set itself (the keys of --data-opt, which win over "
                                      "these; e.g. {elastic: true} for isbi2012-membrane), checked against the "
                                      "data set's own options when the task is built")

    def __post_init__(self) -> None:
        if self.optim.nesterov and self.optim.name != "sgd":
            raise ConfigError(f"optim.nesterov: Nesterov momentum is an sgd option, got optim.name={self.optim.name!r}")
        if self.optim.nesterov and self.optim.momentum == 0:
            raise ConfigError("optim.nesterov: Nesterov momentum needs optim.momentum > 0, got 0")
        if self.schedule.name == "multistep":
            if not self.schedule.milestones:
                raise ConfigError("schedule.milestones: the multistep schedule needs at least one milestone (epochs), "
                                  "e.g. [30, 60, 80]")
            if any(b <= a for a, b in zip(self.schedule.milestones, self.schedule.milestones[1:])):
                raise ConfigError(f"schedule.milestones: got {list(self.schedule.milestones)}, "
                                  "expected increasing epochs")
            if any(m <= 0 for m in self.schedule.milestones):
                raise ConfigError(f"schedule.milestones: got {list(self.schedule.milestones)}, expected epochs > 0")
        if self.schedule.warmup_steps and self.schedule.warmup_epochs:
            raise ConfigError("schedule.warmup_steps: give the warm-up in epochs or in steps, not both "
                              f"(warmup_epochs={self.schedule.warmup_epochs:g})")
        if self.train.overfit_batch and self.train.accum_steps != 1:
            raise ConfigError("train.accum_steps: overfit_batch trains on one batch; expected accum_steps 1")
        self._check_distill()
        self._check_compress()

    def _check_distill(self) -> None:
        d = self.distill
        if d.hint_weight > 0 and not (d.hint_layer and d.guided_layer):
            missing = "distill.hint_layer" if not d.hint_layer else "distill.guided_layer"
            raise ConfigError(f"{missing}: distill.hint_weight={d.hint_weight:g} needs both the teacher's "
                              "hint_layer and the student's guided_layer (module names, e.g. features.3)")
        if d.hint_weight == 0 and (d.hint_layer or d.guided_layer):
            key = "distill.hint_layer" if d.hint_layer else "distill.guided_layer"
            raise ConfigError(f"{key}: set, but distill.hint_weight is 0 so the hint is off; give a weight > 0 "
                              "or leave the layer empty")
        if d.cache_teacher and self.augment.active:
            raise ConfigError(f"distill.cache_teacher: augmentation is on ({self.augment.describe()}), so the "
                              "teacher sees new inputs every epoch and its logits cannot be cached")
        if d.cache_teacher and d.hint_weight > 0:
            raise ConfigError("distill.cache_teacher: not with distill.hint_weight > 0; the hint needs the "
                              "teacher's features at every step")

    def _check_compress(self) -> None:
        c = self.compress
        if any(b <= a for a, b in zip(c.prune_amounts, c.prune_amounts[1:])):
            raise ConfigError(f"compress.prune_amounts: got {list(c.prune_amounts)}, expected increasing fractions, "
                              "e.g. [0.5, 0.8, 0.9]")
        if c.qat and c.prune_amounts:
            raise ConfigError("compress.qat: not with compress.prune_amounts in the same run; prune and fine-tune "
                              "first, then run QAT from those weights")
        if (c.qat or c.prune_amounts) and self.ema.decay > 0:
            key = "compress.qat" if c.qat else "compress.prune_amounts"
            raise ConfigError(f"{key}: not with ema.decay > 0 (the average would hold neither the fake-quant "
                              "ranges nor the masks)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Other names accepted for a key in overrides (``--set``): where a user may look for it first.
ALIASES = {"train.checkpoint_every_steps": "checkpoint.every_steps",
           "train.checkpoint_every_epochs": "checkpoint.every_epochs"}


def _recipes_dir() -> Path:
    return Path(str(importlib.resources.files("dltricks") / "recipes"))


def list_recipes() -> dict[str, str]:
    """Recipes shipped with the package: name -> first comment line of the file."""
    found = {}
    folder = _recipes_dir()
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        found[path.stem] = first
    return found


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or the name of a recipe shipped with the package."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _recipes_dir() / f"{path.name}.yaml" if path.suffix == "" else _recipes_dir() / path.name
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = list(list_recipes())
    raise ConfigError(f"recipe {str(name_or_path)!r} is neither a YAML file nor a shipped recipe."
                      f"{did_you_mean(path.stem, names)} Shipped recipes: {', '.join(names) or '(none)'}")


def load_recipe(source: str | Path | Mapping[str, Any] | Recipe | None = None,
                overrides: Sequence[str | tuple[str, Any]] = ()) -> Recipe:
    """Build a checked :class:`Recipe`.

    Numbers in files and overrides are read as YAML 1.2 (``5e-4`` is a number, not the string YAML 1.1
    makes of it) by the one reader of :mod:`dltricks.config`.

    Args:
        source: ``None`` (all defaults), a :class:`Recipe`, a mapping of sections, a YAML file path, or the
            name of a shipped recipe (``dltricks/recipes/<name>.yaml``).
        overrides: ``("section.key", value)`` pairs or ``"section.key=value"`` text
            (:func:`~dltricks.config.parse_assignment`), applied last.
    """
    pairs = [parse_assignment(o, "override") if isinstance(o, str) else tuple(o) for o in overrides]
    pairs = [(ALIASES.get(key, key), value) for key, value in pairs]
    if source is None:
        base: Recipe | Mapping[str, Any] = {}
    elif isinstance(source, Recipe):
        base = source
    elif isinstance(source, Mapping):
        base = source
    else:
        base = load_yaml(recipe_path(source))
    if pairs or not isinstance(base, Recipe):
        recipe = apply_overrides(Recipe, base, pairs)
    else:
        recipe = from_dict(Recipe, to_dict(base))
    # The keys the caller gave (file, mapping or --set), so that fit can tell "batch 128 asked for" from
    # "batch_size left at its default" (see dltricks.train.prepare.check_task_recipe).
    given = set(getattr(base, "_given_keys", ())) if isinstance(base, Recipe) else _leaf_keys(base)
    given.update(key for key, _ in pairs)
    recipe._given_keys = frozenset(given)  # type: ignore[attr-defined]
    return recipe


def _leaf_keys(data: Any) -> set[str]:
    """``section.key`` for every value of a recipe mapping (``{"train": {"seed": 1}}`` -> ``{"train.seed"}``)."""
    if not isinstance(data, Mapping):
        return set()
    return {f"{section}.{key}" if isinstance(values, Mapping) else str(section)
            for section, values in data.items() for key in (values if isinstance(values, Mapping) else [None])}


def given_keys(recipe: Recipe) -> frozenset[str]:
    """The dotted keys set explicitly in ``recipe``: those its source gave (when it came from
    :func:`load_recipe`) and every value that differs from the default."""
    default, current = to_dict(Recipe()), to_dict(recipe)
    changed = {f"{section}.{key}" for section, values in current.items() if isinstance(values, Mapping)
               for key, value in values.items() if default.get(section, {}).get(key) != value}
    return frozenset(changed | set(getattr(recipe, "_given_keys", ())))


def describe_recipe() -> list[tuple[str, str, str, str]]:
    """``(key, type, default, help)`` for every recipe option (for docs and ``--help``)."""
    return describe(Recipe)

"""Training with unlabelled images: semi-supervised learning and unsupervised domain adaptation.

One option of :func:`dltricks.train.fit`: ``fit(model, task, recipe, unlabelled=Unlabelled(images, method=...))``.
Every optimizer step adds one term computed on a batch ``x_u`` of unlabelled images (drawn in a seeded,
reshuffled order from ``images``) to the task's supervised loss on the labelled batch ``(x, y)``::

    L = L_sup(f(x), y) + w(t) * L_u

The same term serves two settings: the unlabelled images are more images of the training distribution
(semi-supervised: MNIST with 100 labels) or images of a shifted target domain (domain adaptation: MNIST ->
the scikit-learn 8x8 digits). ``L_u`` per method (``p = softmax(f(.))``, ``tau`` the confidence threshold):

* ``pseudo-label`` (Lee 2013, "Pseudo-label: the simple and efficient semi-supervised learning method"):
  ``L_u = mean_i 1[max p_i >= tau] CE(f(x_u,i), argmax p_i)`` with ``p`` the model's own detached prediction
  on the same batch. On target-domain images this is self-training.
* ``fixmatch`` (Sohn et al. 2020, NeurIPS, Eq. 4): the pseudo-label comes from a weakly augmented view
  (random shift) and the loss is taken on a strongly augmented view of the same images (shift, rotation,
  contrast jitter, cutout): ``L_u = mean_i 1[max q_i >= tau] CE(f(strong(x_u,i)), argmax q_i)``, ``q = p(weak)``.
* ``mean-teacher`` (Tarvainen & Valpola 2017, NeurIPS): a teacher whose weights are the exponential moving
  average of the student's (``theta' <- a theta' + (1 - a) theta`` after every step) sees another noisy view;
  ``L_u = mean_i ||p_student(x_u,i) - p_teacher(x_u,i)||^2`` (squared error between the class probabilities).
* ``coral`` (Sun & Saenko 2016, "Deep CORAL", Eq. 1): ``L_u = ||C_s - C_t||_F^2 / (4 d^2)`` with ``C_s, C_t``
  the ``d x d`` covariances of the classifier outputs (the logits, ``d = K``: the paper puts the loss on its last
  classification layer, fc8) of the labelled (source) and unlabelled (target) batch.
* ``dann`` (Ganin et al. 2016, JMLR): a domain classifier ``D`` (Linear-ReLU-Linear) on the pre-logit features
  behind a gradient reversal (:mod:`dltricks.layers.grad_reverse`); ``L_u = BCE(D(R(h_s)), 0) + BCE(D(R(h_t)),
  1)``. ``D`` learns to tell the domains apart while the reversed gradient makes the features indistinguishable;
  the reversal strength follows the standard schedule ``lambda(p) = 2 / (1 + exp(-10 p)) - 1`` over training
  progress ``p``. ``D``'s parameters join the optimizer.

``w(t)`` ramps up as ``weight * exp(-5 (1 - t / T_r)^2)`` over the first ``rampup`` fraction of the steps
(Laine & Aila 2017, the ramp mean teacher uses too); ``rampup = 0`` uses ``weight`` from the first step.

DANN's pre-logit features and CORAL's logits are read by hooks on the model's classifier (``get_classifier()``,
else its last ``nn.Linear``), so the labelled batch is not run twice.
AdaBN (Li et al. 2016), the other adaptation method of docs/domain-adaptation.md, needs no training: see
:func:`adabn`. Measured results: docs/semi-supervised.md and docs/domain-adaptation.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.config import check_fraction, check_non_negative, field, from_dict
from dltricks.data.augment import cutout, random_crop, random_rotate
from dltricks.data.base import ArrayDataset
from dltricks.errors import ConfigError, DataError
from dltricks.layers.grad_reverse import dann_lambda, grad_reverse
from dltricks.tasks.base import _logits
from dltricks.train.batchnorm import batchnorm_layers, recalibrate_batchnorm
from dltricks.train.ema import ModelEma

__all__ = ["UnlabelledConfig", "Unlabelled", "UnlabelledObjective", "coral_loss", "adabn", "weak_view",
           "strong_view", "split_labelled"]

METHODS = ("pseudo-label", "fixmatch", "mean-teacher", "coral", "dann")


def _check_unit_open_right(value: Any) -> str | None:
    return None if 0.0 <= value < 1.0 else "a number in [0, 1)"


def _check_unit(value: Any) -> str | None:
    return None if 0.0 <= value <= 1.0 else "a number in [0, 1]"


def _check_at_least_one(value: Any) -> str | None:
    return None if value >= 1 else "an integer >= 1"


@dataclass
class UnlabelledConfig:
    """How the unlabelled images enter the loss (the module docstring has the equations)."""

    method: Literal["pseudo-label", "fixmatch", "mean-teacher", "coral", "dann"] = field(
        "pseudo-label", help="pseudo-label (Lee 2013; self-training on target images), fixmatch (Sohn et al. "
                             "2020), mean-teacher (Tarvainen & Valpola 2017), coral (Sun & Saenko 2016), dann "
                             "(Ganin et al. 2016)")
    weight: float = field(1.0, help="weight of the unlabelled term once ramped up", check=check_non_negative)
    threshold: float = field(0.95, help="pseudo-label/fixmatch: confidence a prediction needs to become a "
                                        "target", check=_check_unit)
    ratio: int = field(1, help="unlabelled images per labelled image in a step (FixMatch's mu)",
                       check=_check_at_least_one)
    rampup: float = field(0.0, help="fraction of the steps over which the weight ramps up (exp(-5(1-t)^2)); not "
                                    "dann, whose reversal strength follows its own schedule",
                          check=check_fraction)
    teacher_decay: float = field(0.99, help="mean-teacher: EMA decay of the teacher's weights",
                                 check=_check_unit_open_right)
    noise: float = field(0.15, help="mean-teacher: std of the Gaussian input noise of each view (normalised "
                                    "units)", check=check_non_negative)
    dann_hidden: int = field(100, help="dann: hidden width of the domain classifier", check=_check_at_least_one)
    seed: int = field(0, help="seed of the unlabelled batches' order and augmentations", check=check_non_negative)


class Unlabelled:
    """Unlabelled images and how to use them: the ``unlabelled=`` argument of :func:`dltricks.train.fit`.

    ``data`` is an :class:`~dltricks.data.base.ArrayDataset` (its labels are never read; its class names must
    be the task's, checked by :meth:`check_task`) or a ``uint8 (N, C, H, W)`` tensor. Images are normalised
    with the data set's own mean/std (the shifted sets of :mod:`dltricks.data.shift` carry MNIST's, so a target
    image is normalised as the source images are). ``config``: an :class:`UnlabelledConfig` or a mapping of its
    keys (unknown keys and wrong types are :class:`~dltricks.errors.ConfigError` naming the key); keyword
    options override it.
    """

    def __init__(self, data: ArrayDataset | torch.Tensor, config: UnlabelledConfig | Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        if isinstance(config, UnlabelledConfig):
            config = {k: getattr(config, k) for k in UnlabelledConfig.__dataclass_fields__}
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"unlabelled: config must be an UnlabelledConfig or a mapping, got "
                              f"{type(config).__name__}")
        self.config = from_dict(UnlabelledConfig, {**dict(config or {}), **options}, prefix="unlabelled.")
        if isinstance(data, ArrayDataset):
            self.images, self.classes, self.name = data.images, data.classes, data.name
            self.mean, self.std = data.mean, data.std
        elif isinstance(data, torch.Tensor):
            if data.dtype != torch.uint8 or data.dim() != 4 or data.shape[0] == 0:
                raise DataError(f"unlabelled images must be a non-empty uint8 (N, C, H, W) tensor, got "
                                f"{str(data.dtype)} {tuple(data.shape)}")
            self.images, self.classes, self.name, self.mean, self.std = data, None, "unlabelled images", None, None
        else:
            raise DataError(f"unlabelled data must be an ArrayDataset or a uint8 image tensor, got "
                            f"{type(data).__name__}")

    def check_task(self, task: Any) -> None:
        """Refuse images of another shape than the task's inputs, and a data set labelled with another class set."""
        shape = tuple(task.input_shape)
        if tuple(self.images.shape[1:]) != shape:
            raise DataError(f"unlabelled set {self.name} has images of shape {tuple(self.images.shape[1:])} but data "
                            f"set {task.name} has {shape}; give images of the task's size and channels")
        if self.classes is not None and tuple(self.classes) != tuple(str(c) for c in task.classes):
            raise DataError(f"unlabelled set {self.name} is labelled with classes {_names(self.classes)} but data set "
                            f"{task.name} has {_names(task.classes)}; semi-supervised training and adaptation "
                            "need images of the same classes")
        if self.mean is None:
            self.mean, self.std = tuple(task.extra["mean"]), tuple(task.extra["std"])


def _names(classes: Any) -> str:
    classes = [str(c) for c in classes]
    return "[" + ", ".join(classes[:5]) + (", ...]" if len(classes) > 5 else "]")


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||C_s - C_t||_F^2 / (4 d^2)`` for features ``(B_s, d)`` and ``(B_t, d)`` (Deep CORAL Eq. 1); ``C`` is
    the unbiased covariance ``(X^T X - (1^T X)^T (1^T X) / n) / (n - 1)`` (Eq. 2-3)."""
    d = source.shape[1]

    def covariance(x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=0, keepdim=True)  # (n, d)
        return centred.T @ centred / (x.shape[0] - 1)  # (d, d)

    return (covariance(source.float()) - covariance(target.float())).pow(2).sum() / (4 * d * d)


def weak_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """FixMatch's weak augmentation for digits (no flips): a random shift by up to 2 pixels; ``x`` in ``[0, 1]``
    with 0 the background."""
    return random_crop(x, 2, generator)


def strong_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A strong augmentation in the spirit of FixMatch's RandAugment + Cutout, with the operations that keep a
    digit a digit: shift by up to 4 px, rotation by up to 25 degrees, contrast in [0.5, 1.5] and brightness in
    [-0.2, 0.2], then a 10x10 cutout (the paper always applies Cutout after RandAugment)."""
    x = random_rotate(random_crop(x, 4, generator), 25.0, generator)
    B = x.shape[0]
    contrast = (0.5 + torch.rand(B, 1, 1, 1, generator=generator)).to(x.device)  # (B, 1, 1, 1)
    bright = (0.4 * torch.rand(B, 1, 1, 1, generator=generator) - 0.2).to(x.device)
    x = (x * contrast + bright).clamp(0.0, 1.0)
    return cutout(x, 10, generator)


def _classifier(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"unlabelled.method: coral and dann read the classifier's inputs or outputs, and model "
                          f"{type(model).__name__} has no nn.Linear layer")
    return linears[-1]


class UnlabelledObjective:
    """The unlabelled term of one :func:`fit` call, bound to its model and device (built by the trainer)."""

    def __init__(self, unlabelled: Unlabelled, model: nn.Module, task: Any, *, batch_size: int, total_steps: int,
                 device: torch.device) -> None:
        unlabelled.check_task(task)
        self.cfg, self.device = unlabelled.config, device
        self.total_steps = max(int(total_steps), 1)
        self.batch_size = batch_size * self.cfg.ratio
        self.images = unlabelled.images
        self.mean = torch.tensor(unlabelled.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(unlabelled.std, device=device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self._perm, self._pos = torch.empty(0, dtype=torch.int64), 0
        self.teacher = ModelEma(model, decay=self.cfg.teacher_decay) if self.cfg.method == "mean-teacher" else None
        self.features: torch.Tensor | None = None
        self._hook = None
        self.discriminator: nn.Module | None = None
        if self.cfg.method in ("coral", "dann"):
            head = _classifier(model)
            if self.cfg.method == "coral":
                self._hook = head.register_forward_hook(self._keep_output)
            else:
                self._hook = head.register_forward_pre_hook(self._keep_features)
            if self.cfg.method == "dann":
                d, h = head.in_features, self.cfg.dann_hidden
                self.discriminator = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1)).to(device)

    def _keep_features(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.features = inputs[0].flatten(1)  # (B, d)

    def _keep_output(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        self.features = output.flatten(1)  # (B, K)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _batch(self) -> torch.Tensor:
        """The next ``batch_size`` images as float ``[0, 1]`` on the device, reshuffled after each pass."""
        parts: list[torch.Tensor] = []
        need = self.batch_size
        while need > 0:
            if self._pos >= self._perm.numel():
                self._perm, self._pos = torch.randperm(self.images.shape[0], generator=self.generator), 0
            take = self._perm[self._pos:self._pos + need]
            parts.append(take)
            self._pos += take.numel()
            need -= take.numel()
        index = torch.cat(parts)
        return self.images.index_select(0, index).to(self.device).float() / 255.0  # (B_u, C, H, W)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def weight(self, step: int) -> float:
        """``w(t)``: the configured weight, ramped up over the first ``rampup`` fraction of the steps."""
        ramp = self.cfg.rampup * self.total_steps
        if ramp <= 0 or step >= ramp:
            return self.cfg.weight
        return self.cfg.weight * math.exp(-5.0 * (1.0 - step / ramp) ** 2)

    def loss(self, model: nn.Module, step: int) -> torch.Tensor:
        """``w(t) * L_u`` for optimizer step ``step`` (0-based); call right after the labelled forward pass."""
        source_features = self.features
        x_u = self._batch()
        method = self.cfg.method
        if method == "pseudo-label":
            logits = _logits(model(self._normalise(x_u)))
            term = self._masked_ce(logits, logits.detach())
        elif method == "fixmatch":
            with torch.no_grad():
                guess = _logits(model(self._normalise(weak_view(x_u, self.generator))))
            term = self._masked_ce(_logits(model(self._normalise(strong_view(x_u, self.generator)))), guess)
        elif method == "mean-teacher":
            student = _logits(model(self._noisy(x_u))).float().softmax(dim=1)  # (B_u, K)
            with torch.no_grad():
                self.teacher.module.train(model.training)
                target = _logits(self.teacher.module(self._noisy(x_u))).float().softmax(dim=1)  # (B_u, K)
            term = (student - target).pow(2).sum(dim=1).mean()
        else:
            if source_features is None:
                raise ConfigError(f"unlabelled.method={method}: the classifier saw no labelled batch")
            model(self._normalise(x_u))
            target_features = self.features
            if method == "coral":
                term = coral_loss(source_features, target_features)
            else:
                term = self._dann(source_features, target_features, step)
        return term * (self.weight(step) if method != "dann" else self.cfg.weight)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        x = self._normalise(weak_view(x, self.generator))
        noise = torch.randn(x.shape, generator=self.generator).to(x.device) * self.cfg.noise
        return x + noise

    def _masked_ce(self, logits: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:
        probs = guess.float().softmax(dim=1)  # (B_u, K)
        confidence, target = probs.max(dim=1)  # (B_u,)
        mask = (confidence >= self.cfg.threshold).float()
        # The mean over the whole batch (masked images count as 0), as in FixMatch's Eq. 4.
        return (F.cross_entropy(logits.float(), target, reduction="none") * mask).mean()

    def _dann(self, source: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
        lambd = dann_lambda(step / self.total_steps)
        h = grad_reverse(torch.cat([source, target]), lambd)  # (B + B_u, d)
        domain = torch.cat([torch.zeros(source.shape[0]), torch.ones(target.shape[0])]).to(h.device)
        return F.binary_cross_entropy_with_logits(self.discriminator(h.float()).squeeze(1), domain)

    def after_step(self, model: nn.Module) -> None:
        """After each optimizer step: the mean teacher follows the student."""
        if self.teacher is not None:
            self.teacher.update(model)

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer trains besides the model's (DANN's domain classifier)."""
        return list(self.discriminator.parameters()) if self.discriminator is not None else []


def split_labelled(dataset: ArrayDataset, n_labels: int, *, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """``(labelled, unlabelled)``: a class-balanced draw of ``n_labels`` images (the draw of
    ``ArrayDataset.sample`` and of ``prepare(..., subset=n_labels, subset_seed=seed)``, so a task built with those
    options trains on exactly ``labelled``) and every other image of ``dataset``."""
    labelled = dataset.sample(n_labels, seed=seed)
    from dltricks.data.base import stratified_indices

    index = stratified_indices(dataset.labels, n_labels, seed=seed)
    rest = torch.ones(len(dataset), dtype=torch.bool)
    rest[index] = False
    return labelled, dataset.subset(rest, name=f"{dataset.name}/unlabelled")


@torch.no_grad()
def adabn(model: nn.Module, images: ArrayDataset, *, batch_size: int = 256,
          device: torch.device | str | None = None) -> int:
    """AdaBN (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"): replace every
    BatchNorm layer's running statistics by those of the target images (a plain average over the batches of one
    pass), leaving every weight as trained on the source. Returns the number of batches; refuses a model
    without BatchNorm layers (AdaBN would do nothing)."""
    if not batchnorm_layers(model):
        raise ConfigError(f"AdaBN recomputes BatchNorm statistics and model {type(model).__name__} has no "
                          "BatchNorm layer")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mean = torch.tensor(images.mean).view(1, -1, 1, 1)
    std = torch.tensor(images.std).view(1, -1, 1, 1)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(images), batch_size):
            x = images.images[start:start + batch_size].float() / 255.0
            yield ((x - mean) / std).to(device)

    return recalibrate_batchnorm(model, batches())

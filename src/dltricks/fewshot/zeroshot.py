"""Zero-shot recognition from class attributes: direct attribute prediction and a compatibility model.

A class is described by a vector of binary attributes a_c (the table below). A network trained on images of
the *seen* classes only must then recognise images of *unseen* classes from their attribute vectors alone.

* **Direct attribute prediction (DAP)** (Lampert et al. 2009, "Learning to detect unseen object classes by
  between-class attribute transfer", eq. 2; Lampert et al. 2014, TPAMI) trains one sigmoid per attribute
  (binary cross-entropy against the attributes of the image's class) and scores a class by

      log p(c | x) = sum_m log p(a_m = a_{c,m} | x) - log p(a_m = a_{c,m})  (+ const),

  the attribute priors p(a_m) being the attribute's frequency over the seen classes.
* **Attribute compatibility** (label embedding, Akata et al. 2013/2016 "ALE"; Romera-Paredes & Torr 2015
  "ESZSL"): a bilinear score F(x, c) = theta(x)^T W a_c. The network's last linear layer plays W, so the
  network outputs theta(x)^T W directly (one number per attribute) and F(x, c) is its dot product with a_c,
  scaled to unit length (Akata et al. normalise the class embeddings; without it, classes with more
  attributes would score higher).
  It is trained with the softmax cross-entropy over the seen classes (ALE ranks with a hinge instead).

Evaluation follows Xian et al. 2018 ("Zero-shot learning, the good, the bad and the ugly"): per-class mean
accuracy on unseen images among the unseen classes only (ZSL), and in the generalised setting (GZSL)
among all classes: the seen accuracy s, the unseen accuracy u and their harmonic mean H = 2 s u / (s + u).

**Attribute table for the ten digits** (:data:`DIGIT_ATTRIBUTES`; written for this project from the usual
printed shapes of the digits; no data set ships one). A 1 means the shape has it in its usual form. Columns:
a1 loop in the top half, a2 loop in the bottom half, a3 straight vertical stroke, a4 bar at the top, a5 bar at
the bottom, a6 bar in the middle, a7 bulge to the right in the top half, a8 bulge to the right in the bottom
half, a9 bulge to the left in the top half, a10 diagonal stroke, a11 crossing strokes.

| digit | a1 | a2 | a3 | a4 | a5 | a6 | a7 | a8 | a9 | a10 | a11 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| 0 | 1 | 1 | 0 | 0 | 0 | 0 | 1 | 1 | 1 | 0 | 0 |
| 1 | 0 | 0 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |
| 2 | 0 | 0 | 0 | 0 | 1 | 0 | 1 | 0 | 0 | 1 | 0 |
| 3 | 0 | 0 | 0 | 0 | 0 | 0 | 1 | 1 | 0 | 0 | 0 |
| 4 | 0 | 0 | 1 | 0 | 0 | 1 | 0 | 0 | 0 | 1 | 1 |
| 5 | 0 | 0 | 1 | 1 | 0 | 0 | 0 | 1 | 0 | 0 | 0 |
| 6 | 0 | 1 | 0 | 0 | 0 | 0 | 0 | 1 | 1 | 0 | 0 |
| 7 | 0 | 0 | 0 | 1 | 0 | 0 | 0 | 0 | 0 | 1 | 0 |
| 8 | 1 | 1 | 0 | 0 | 0 | 0 | 1 | 1 | 1 | 0 | 1 |
| 9 | 1 | 0 | 1 | 0 | 0 | 0 | 1 | 0 | 1 | 0 | 0 |

Measured (docs/fewshot.md): ``small_cnn`` (16, 32, 64) trained 2 epochs on the seven seen digits, ZSL accuracy
on 3, 7, 8 of 43.6 % (DAP) and 23.1 % (compatibility) against 33.3 % chance, one seed; with an MLP on pixels (the
tip ``learn.zero-shot``, 5 seeds) DAP falls to 14.9 %, below chance: its attribute detectors learn the seen
digits, not the shapes. In the generalised setting both pick seen digits almost always (H below 10 %).

The default unseen classes, 3, 7 and 8, have every one of their attributes present in some seen class, so
each attribute detector has positive examples to learn from.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.data.base import ArrayDataset
from dltricks.errors import ConfigError
from dltricks.tasks.base import Task
from dltricks.tasks.classification import make_classification_task
from dltricks.train import fit
from dltricks.train.recipe import load_recipe

__all__ = ["ATTRIBUTE_NAMES", "DIGIT_ATTRIBUTES", "UNSEEN_DIGITS", "ZSL_METHODS", "attribute_task", "class_scores",
           "train_attribute_model", "evaluate_zero_shot"]

ATTRIBUTE_NAMES = ("loop top", "loop bottom", "vertical stroke", "bar top", "bar bottom", "bar middle",
                   "bulge right top", "bulge right bottom", "bulge left top", "diagonal", "crossing")
DIGIT_ATTRIBUTES = torch.tensor([
    [1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0],  # 0
    [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # 1
    [0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0],  # 2
    [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0],  # 3
    [0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 1],  # 4
    [0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0],  # 5
    [0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0],  # 6
    [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0],  # 7
    [1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1],  # 8
    [1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0],  # 9
], dtype=torch.float32)  # (10 classes, 11 attributes)
UNSEEN_DIGITS = (3, 7, 8)
ZSL_METHODS = ("dap", "compatibility")


def class_scores(output: torch.Tensor, table: torch.Tensor, *, method: str,
                 prior: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, C)`` scores of the classes whose attribute rows are ``table`` ``(C, A)`` from the network's
    ``(B, A)`` output: DAP's log-posterior (``prior`` ``(A,)`` = p(a_m = 1)) or the compatibility x . a_c."""
    if method == "compatibility":
        return output @ F.normalize(table, dim=1).T  # (B, C): unit-length class vectors, as ALE normalises them
    log_on, log_off = F.logsigmoid(output), F.logsigmoid(-output)  # (B, A): log p(a_m = 1 | x), log p(a_m = 0 | x)
    scores = log_on @ table.T + log_off @ (1 - table).T  # (B, C): sum_m log p(a_m = a_{c,m} | x)
    if prior is not None:
        p = prior.clamp(1e-3, 1 - 1e-3)
        scores = scores - (table @ p.log() + (1 - table) @ (1 - p).log())  # minus sum_m log p(a_m = a_{c,m})
    return scores


def _check(method: str, table: torch.Tensor, seen: list[int]) -> None:
    if method not in ZSL_METHODS:
        raise ConfigError(f"method: expected one of {', '.join(ZSL_METHODS)}, got {method!r}")
    if not seen or max(seen) >= len(table):
        raise ConfigError(f"seen classes: expected indices into the {len(table)} rows of the attribute table")


def attribute_task(data: ArrayDataset, table: torch.Tensor, *, method: Literal["dap", "compatibility"],
                   batch_size: int = 64, seed: int = 0) -> Task:
    """A training task on ``data`` (labels 0..S-1 of the seen classes whose attribute rows are ``table``):
    binary cross-entropy per attribute (DAP) or cross-entropy of the compatibility scores."""
    base = make_classification_task(data.name, data, None, batch_size=batch_size, seed=seed)

    def loss(output: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
        out = output.float()
        if method == "dap":
            return F.binary_cross_entropy_with_logits(out, table[target])
        return F.cross_entropy(class_scores(out, table, method="compatibility"), target)

    def metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        scores = class_scores(output.float(), table, method=method)
        return {"loss": loss(output, target).item() * len(target),
                "correct": float((scores.argmax(1) == target).sum()), "count": float(len(target))}

    return dataclasses.replace(base, name=f"{data.name}-{method}", num_classes=table.shape[1], loss=loss,
                               batch_metrics=metrics)


def train_attribute_model(net: nn.Module, data: ArrayDataset, table: torch.Tensor, *, method: str,
                          epochs: int = 2, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Train ``net`` (``table.shape[1]`` outputs) on the seen-class images ``data`` through :func:`fit`."""
    _check(method, table, list(range(len(table))))
    recipe = load_recipe({"optim": {"name": "adam", "lr": lr}, "schedule": {"name": "constant"},
                          "train": {"epochs": epochs, "batch_size": batch_size, "device": "cpu",
                                    "channels_last": False, "seed": seed}})
    task = attribute_task(data, table, method=method, batch_size=batch_size, seed=seed)  # type: ignore[arg-type]
    return fit(net, task, recipe, progress=False).model


def _per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, classes: list[int]) -> float:
    return sum(float((pred[y == c] == c).float().mean()) for c in classes) / len(classes)


@torch.no_grad()
def evaluate_zero_shot(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seen: list[int],
                       unseen: list[int], table: torch.Tensor = DIGIT_ATTRIBUTES, method: str,
                       batch_size: int = 500) -> dict[str, float]:
    """ZSL accuracy on the unseen classes and the GZSL seen / unseen accuracies with their harmonic mean, all
    per-class means, on test ``images`` (uint8 or float in [0, 1]) with original ``labels``."""
    _check(method, table, seen)
    net.eval()
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    out = torch.cat([net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])  # (M, A)
    prior = table[seen].mean(0)  # (A,): p(a_m = 1) over the seen classes
    scores = class_scores(out, table, method=method, prior=prior)  # (M, C) over every class of the table
    outside = torch.ones(len(table), dtype=torch.bool)
    outside[torch.tensor(seen + unseen)] = False
    scores[:, outside] = float("-inf")  # classes of the table in neither set are not candidates
    is_unseen = torch.isin(labels, torch.tensor(unseen))
    zsl_classes = torch.tensor(unseen)
    zsl_pred = zsl_classes[scores[is_unseen][:, zsl_classes].argmax(1)]
    gzsl_pred = scores.argmax(1)
    s = _per_class_accuracy(gzsl_pred, labels, seen)
    u = _per_class_accuracy(gzsl_pred, labels, unseen)
    return {"zsl_accuracy": _per_class_accuracy(zsl_pred, labels[is_unseen], unseen), "chance": 1 / len(unseen),
            "gzsl_seen": s, "gzsl_unseen": u, "gzsl_h": 2 * s * u / (s + u) if s + u > 0 else 0.0}

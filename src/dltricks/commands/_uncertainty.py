"""``dltricks eval RUN --uncertainty METHOD [--members RUN ...]``: how well a run knows what it does not know.

Methods (see :mod:`dltricks.measure.uncertainty`): ``softmax`` (the run as is), ``temperature``
(temperature scaling), ``mc-dropout`` (``--mc-samples`` passes with dropout on), ``ensemble`` (the run
and the ``--members`` runs, averaged), ``gp`` (a variational GP head, GPyTorch, fitted with ``--gp-inducing``
inducing points for ``--gp-epochs`` epochs on the frozen pre-logit features of the run's training images) and
``sngp`` (the mean-field logits of a run trained as an SNGP model, e.g. ``sngp_mlp``). The softmax baseline
is always reported beside the method.

The validation split is halved once, class-balanced with seed 0: the first half fits the temperature, and
every metric of every method is measured on the second half, so the rows compare on the same images.
Metrics: accuracy, NLL, ECE (15 bins), Brier, AURC and accuracy at 80 / 90 % coverage, and the OOD AUROC:
for a 28x28 grey-scale model (MNIST) against the scikit-learn digits and CIFAR-10 grey crops (the latter when
``cifar10-jpg.zip`` is found), for a 3x32x32 model (CIFAR-10) against MNIST digits padded to 32 px on three
channels. ``--plots DIR`` writes the reliability diagrams and the
accuracy-coverage curves.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dltricks.commands._args import json_text, log
from dltricks.errors import ConfigError, DltricksError

METHODS = ("softmax", "temperature", "mc-dropout", "ensemble", "gp", "sngp")
# OOD set -> the input shape it is made for
OOD_SETS = {"digits": (1, 28, 28), "cifar-grey": (1, 28, 28), "mnist": (3, 32, 32)}
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def add_uncertainty_args(p: argparse.ArgumentParser) -> None:
    """The options of ``dltricks eval --uncertainty`` (for eval's parser)."""
    g = p.add_argument_group("uncertainty (classification)")
    g.add_argument("--uncertainty", choices=METHODS, default=None, metavar="METHOD",
                   help=f"report NLL, ECE, Brier, accuracy-coverage and OOD AUROC with METHOD, one of "
                        f"{', '.join(METHODS)}, beside the plain softmax; default: off")
    g.add_argument("--members", nargs="+", default=[], metavar="RUN",
                   help="with --uncertainty ensemble: the other runs of the ensemble (same model and classes)")
    g.add_argument("--mc-samples", type=int, default=20, metavar="S",
                   help="with --uncertainty mc-dropout: stochastic passes per input")
    g.add_argument("--gp-inducing", type=int, default=64, metavar="M",
                   help="with --uncertainty gp: inducing points per class of the variational GP head")
    g.add_argument("--gp-epochs", type=int, default=10, metavar="E",
                   help="with --uncertainty gp: epochs of fitting the GP head on the training features")
    g.add_argument("--ood", nargs="*", default=None, choices=OOD_SETS,
                   help="out-of-distribution sets: digits and cifar-grey for a 28x28 grey-scale model (the default "
                        "there), mnist for a 3x32x32 model (its default); none for other inputs")
    g.add_argument("--plots", default=None, metavar="DIR",
                   help="write reliability diagrams and accuracy-coverage curves (PNG) to DIR")


def _halves(loader: Any) -> tuple[Batches, Batches]:
    """The validation batches split once, class-balanced (seed 0), into a fitting half and a test half."""
    from dltricks.data.base import stratified_indices

    xs, ys = zip(*((x.cpu(), y.cpu()) for x, y in loader))
    x, y = torch.cat(xs), torch.cat(ys)
    labels = y.argmax(1) if y.dim() == 2 else y
    if len(labels) < 4:
        raise ConfigError(f"--uncertainty needs a validation split of at least 4 samples, got {len(labels)}")
    fit_index = stratified_indices(labels, len(labels) // 2, seed=0)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[fit_index] = False
    test_index = torch.nonzero(mask).flatten()

    def batched(index: torch.Tensor) -> Batches:
        return [(x[index[i:i + 500]], labels[index[i:i + 500]]) for i in range(0, len(index), 500)]

    return batched(fit_index), batched(test_index)


def _ood_batches(task: Any, names: list[str] | None, data_dir: str | None) -> dict[str, Batches]:
    """Normalised batches of each OOD set, with the task's own statistics."""
    from dltricks.data.shift import cifar_grey_crops, load_sklearn_digits, mnist_rgb

    shape = tuple(task.input_shape)
    explicit = names is not None
    if names is None:
        names = [name for name, wanted in OOD_SETS.items() if wanted == shape]
    for name in names:
        if OOD_SETS[name] != shape:
            c, h, w = OOD_SETS[name]
            raise ConfigError(f"--ood {name} holds {c}x{h}x{w} images; data set {task.name} has input {shape}")
    mean = torch.tensor(task.extra.get("mean", (0.0,))).view(1, -1, 1, 1)
    std = torch.tensor(task.extra.get("std", (1.0,))).view(1, -1, 1, 1)
    out = {}
    for name in names:
        try:
            data = (load_sklearn_digits() if name == "digits" else mnist_rgb(2000) if name == "mnist"
                    else cifar_grey_crops(2000, data_dir=data_dir))
        except DltricksError as err:
            if explicit:
                raise
            log(f"skipping OOD set {name}: {err}")
            continue
        x = (data.images.float() / 255.0 - mean) / std  # (N, C, H, W), the task's input shape
        out[name] = [(x[i:i + 500], data.labels[i:i + 500]) for i in range(0, len(x), 500)]
    return out


def _load_members(paths: list[str], name: str, num_classes: int | None, device: Any) -> list[torch.nn.Module]:
    from dltricks.serve.predict import load_run_model

    members = []
    for path in paths:
        loaded = load_run_model(path)
        other_classes = (loaded.meta.get("model_kwargs") or {}).get("num_classes")
        if loaded.name != name:
            raise ConfigError(f"--members {path}: model {loaded.name}, but the ensemble's first member is {name}; "
                              "members must share one architecture")
        if num_classes is not None and other_classes is not None and other_classes != num_classes:
            raise ConfigError(f"--members {path}: {other_classes} classes, but the first member has {num_classes}")
        members.append(loaded.model.to(device))
    return members


def _gp_predictor(args: argparse.Namespace, model: torch.nn.Module, task: Any, *,
                  name: str) -> tuple[Callable[[Batches], Any], dict[str, Any]]:
    """``--uncertainty gp``: a variational GP head fitted on the frozen pre-logit features of the training split."""
    from dltricks.train.gp_head import check_feature_model, fit_gp_head, gp_head_probs, pre_logit_features

    if args.gp_inducing < 1 or args.gp_epochs < 1:
        raise ConfigError(f"--gp-inducing and --gp-epochs must be positive, got {args.gp_inducing} and "
                          f"{args.gp_epochs}")
    check_feature_model(model, name)
    features, labels = pre_logit_features(model, task.train_loader.iter_epoch(0))
    log(f"fitting a GP head ({args.gp_inducing} inducing points, {args.gp_epochs} epochs) on {len(labels):,} "
        f"training features of width {features.shape[1]}")
    head = fit_gp_head(features, labels, num_classes=task.num_classes, num_inducing=args.gp_inducing,
                       epochs=args.gp_epochs)
    return lambda b: gp_head_probs(model, head, b), {"inducing_points": args.gp_inducing, "epochs": args.gp_epochs}


def _predictor(args: argparse.Namespace, model: torch.nn.Module, fit_half: Batches, *, name: str,
               num_classes: int | None, device: Any, task: Any) -> tuple[Callable[[Batches], Any], dict[str, Any]]:
    """The chosen method as a function of batches returning ``(probs, labels)``, and what it fitted."""
    from dltricks.measure.calibration import collect_logits
    from dltricks.measure.uncertainty import (ensemble_probs, fit_temperature, has_dropout, mc_dropout_probs,
                                              predict_probs, sngp_layers, sngp_probs)

    method = args.uncertainty
    if args.members and method != "ensemble":
        raise ConfigError("--members is for --uncertainty ensemble")
    if method == "softmax":
        return lambda b: predict_probs(model, b), {}
    if method == "temperature":
        t = fit_temperature(*collect_logits(model, fit_half))
        return lambda b: predict_probs(model, b, temperature=t), {"temperature": t}
    if method == "mc-dropout":
        if not has_dropout(model):
            raise ConfigError(f"--uncertainty mc-dropout: model {name} has no dropout layers; train it with "
                              "dropout (--model-opt drop_rate=0.2) or choose another method")
        if all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)):
            log(f"warning: every dropout layer of {name} has p = 0: MC dropout equals the plain softmax")
        return lambda b: mc_dropout_probs(model, b, samples=args.mc_samples), {"samples": args.mc_samples}
    if method == "gp":
        return _gp_predictor(args, model, task, name=name)
    if method == "sngp":
        if not sngp_layers(model):
            raise ConfigError(f"--uncertainty sngp: model {name} has no random-feature GP output layer; train an "
                              "SNGP model (dltricks train sngp_mlp) or choose another method (gp fits a GP head "
                              "on any classifier)")
        return lambda b: sngp_probs(model, b), {}
    if not args.members:
        raise ConfigError("--uncertainty ensemble needs --members RUN [RUN ...], the other runs of the ensemble")
    members = [model, *_load_members(args.members, name, num_classes, device)]
    return lambda b: ensemble_probs(members, b), {"members": 1 + len(args.members)}


def run_uncertainty(args: argparse.Namespace, model: torch.nn.Module, task: Any, *, checkpoint: Path, name: str,
                    num_classes: int | None, device: Any) -> int:
    """The ``--uncertainty`` branch of ``dltricks eval``."""
    from dltricks.measure.calibration import plot_reliability_diagram
    from dltricks.measure.uncertainty import plot_accuracy_coverage, predict_probs, uncertainty_metrics

    if args.mc_samples < 1:
        raise ConfigError(f"--mc-samples: got {args.mc_samples}, expected a positive integer")
    if task.val_loader is None:
        raise ConfigError(f"data set {task.name} has no validation split to measure uncertainty on")
    fit_half, test_half = _halves(task.val_loader)
    method_probs, fitted = _predictor(args, model, fit_half, name=name, num_classes=num_classes, device=device,
                                      task=task)
    ood = _ood_batches(task, args.ood, getattr(args, "data_dir", None))
    rows, curves = {}, {}
    for label, predict in (("softmax", lambda b: predict_probs(model, b)), (args.uncertainty, method_probs)):
        if label in rows:
            continue
        probs, labels = predict(test_half)
        rows[label] = uncertainty_metrics(probs, labels, ood={k: predict(v)[0] for k, v in ood.items()})
        curves[label] = (probs, labels)
    report = {"checkpoint": str(checkpoint), "model": name, "data": task.name, "method": args.uncertainty,
              "fitted": fitted, "samples": len(curves["softmax"][1]), "ood_sets": sorted(ood), "metrics": rows}
    if args.plots:
        out = Path(args.plots)
        for label, (probs, labels) in curves.items():
            plot_reliability_diagram(probs, labels, out / f"reliability-{label}.png", from_logits=False,
                                     title=f"{name} on {task.name}: {label}")
        plot_accuracy_coverage(curves, out / "accuracy-coverage.png", title=f"{name} on {task.name}")
        report["plots"] = str(out)
    if args.json:
        print(json_text(report))
        return 0
    _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    from dltricks.utils.tables import Column, print_table

    keys = ["accuracy", "nll", "ece", "brier", "aurc", "accuracy_at_80", "accuracy_at_90",
            *(f"ood_auroc_{k}" for k in report["ood_sets"])]
    fitted = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report["fitted"].items())
    print(f"{report['model']} on {report['data']}: {report['samples']:,} held-out validation samples"
          + (f"; {report['method']}: {fitted}" if fitted else ""))
    print_table([Column("metric", justify="left"), *(Column(m) for m in report["metrics"])],
                [[k, *(f"{row[k]:.4f}" for row in report["metrics"].values())] for k in keys],
                title="uncertainty (lower is better for nll, ece, brier, aurc)")

"""Tips on knowing what a network does not know: temperature scaling, deep ensembles, MC dropout and GPs.

Both experiments train small CNNs (:class:`~dltricks.experiments.training.TinyCNN` with dropout) with
:func:`dltricks.train.fit` on the embedded MNIST split, halve its validation images class-balanced (the first
half fits the temperature, the second half is where every metric is measured) and score out-of-distribution
detection against the scikit-learn 8x8 digits put into MNIST's frame (:mod:`dltricks.data.shift`). The
methods and metrics are :mod:`dltricks.measure.uncertainty`; docs/uncertainty.md has the tables.

``learn.bayesian-uncertainty`` trains the residual MLP of :mod:`dltricks.models.sngp` twice per seed, as a plain
softmax network and as SNGP (spectral normalisation + random-feature GP output), and fits a GPyTorch variational
GP head (:mod:`dltricks.layers.gp_head`, :func:`dltricks.train.gp_head.fit_gp_head`) on the plain network's
frozen pre-logit features.
"""

from __future__ import annotations

from typing import Any

import torch

import dltricks.data.shift
import dltricks.layers.gp_head
import dltricks.layers.random_features
import dltricks.measure.uncertainty
import dltricks.models.sngp
import dltricks.train.gp_head
from dltricks.data.base import stratified_indices
from dltricks.data.shift import load_sklearn_digits
from dltricks.evidence import README, AllOf, Context, Effect, Evidence, Exact, NonInferior
from dltricks.experiments._harness import TrainSpec, recipe
from dltricks.experiments.training import TinyCNN, train_tip
from dltricks.measure.calibration import collect_logits
from dltricks.measure.uncertainty import (ensemble_probs, fit_temperature, mc_dropout_probs, predict_probs,
                                          sngp_probs, uncertainty_metrics)
from dltricks.models import create_model
from dltricks.train import fit, prepare
from dltricks.train.gp_head import fit_gp_head, gp_head_probs, pre_logit_features

LEARN = "Learning setups"
UNCERTAINTY_CODE = (dltricks.measure.uncertainty, dltricks.data.shift)
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _train(ctx: Context, seed: int) -> tuple[torch.nn.Module, Any]:
    """One TinyCNN with dropout, trained on ``ctx['subset']`` embedded-MNIST images for ``ctx['epochs']``."""
    spec = TrainSpec(epochs=ctx.get("epochs", 1), lr=0.05, optimizer="momentum", subset=ctx.get("subset", 2000),
                     seed=seed)
    torch.manual_seed(seed)
    model = TinyCNN(width=ctx.get("width", 8), drop_rate=ctx.get("drop_rate", 0.2))
    model, task = prepare(model, "mnist-embedded", recipe(spec), subset=spec.subset)
    return fit(model, task, recipe(spec), progress=False).model.eval(), task


def _halves(task: Any) -> tuple[Batches, Batches]:
    x, y = zip(*task.val_loader)
    x, y = torch.cat(x), torch.cat(y)
    first = stratified_indices(y, len(y) // 2, seed=0)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[first] = False
    second = torch.nonzero(rest).flatten()
    return [(x[first], y[first])], [(x[second], y[second])]


def _ood(task: Any) -> Batches:
    digits = load_sklearn_digits()
    mean = torch.tensor(task.extra["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(task.extra["std"]).view(1, -1, 1, 1)
    return [((digits.images.float() / 255.0 - mean) / std, digits.labels)]


def _metrics(probs_and_labels: tuple[torch.Tensor, torch.Tensor], ood_probs: torch.Tensor) -> dict[str, float]:
    probs, labels = probs_and_labels
    return uncertainty_metrics(probs, labels, ood={"digits": ood_probs})


@train_tip(id="learn.temperature-scaling", title="Temperature scaling calibrates without changing accuracy",
           claim="Dividing the logits by one temperature fitted on held-out validation data (LBFGS on the NLL) "
                 "lowers the expected calibration error and leaves every prediction, hence the accuracy, "
                 "unchanged (quick: TinyCNN with dropout 0.2, 1 epoch on 2,000 MNIST images, ECE on 1,000 held-out "
                 "validation images).",
           cite=README.at(149, 152, topic="uncertainty estimation"), source="Guo et al. 2017 (ICML)",
           section=LEARN, exercises=UNCERTAINTY_CODE,
           quick={"epochs": 1, "subset": 2000}, full={"epochs": 3, "subset": 8000}, budget_s=20,
           rule=AllOf((Exact(checks=("arg-max unchanged on every image",)),
                       Effect("nll", "temperature", "softmax", higher_is_better=False, min_effect=0.0),
                       Effect("ece", "temperature", "softmax", higher_is_better=False, min_effect=0.0))))
def temperature_scaling(ctx: Context) -> Evidence:
    ev = Evidence(setup=f"TinyCNN (dropout 0.2), {ctx.get('epochs', 1)} epoch(s) on {ctx.get('subset', 2000)} "
                        "embedded-MNIST images; temperature fitted on one half of the validation split, metrics on "
                        "the other")
    same = True
    temperatures = []
    for seed in ctx.seeds:
        model, task = _train(ctx, seed)
        fit_half, test_half = _halves(task)
        t = fit_temperature(*collect_logits(model, fit_half))
        temperatures.append(t)
        ood = _ood(task)
        plain, scaled = predict_probs(model, test_half), predict_probs(model, test_half, temperature=t)
        same &= bool(torch.equal(plain[0].argmax(1), scaled[0].argmax(1)))
        ev.add("softmax", **_metrics(plain, predict_probs(model, ood)[0]))
        ev.add("temperature", **_metrics(scaled, predict_probs(model, ood, temperature=t)[0]))
    ev.check("arg-max unchanged on every image", same)
    ev.values["temperatures"] = temperatures
    ev.headline = f"fitted temperatures {', '.join(f'{t:.2f}' for t in temperatures)}"
    return ev


@train_tip(id="learn.ensembles-uncertainty", title="Deep ensembles know better what they do not know",
           claim="An ensemble of independently trained networks (other seeds) has a lower NLL and separates "
                 "out-of-distribution inputs (scikit-learn 8x8 digits for an MNIST model) better than one of its "
                 "members; MC dropout is reported beside it (quick: 3 TinyCNNs with dropout 0.2, 1 epoch on 2,000 "
                 "MNIST images, 20 dropout samples).",
           cite=README.at(149, 152, topic="uncertainty estimation"),
           source="Lakshminarayanan et al. 2017 (NeurIPS); Gal & Ghahramani 2016 (ICML)",
           section=LEARN, exercises=UNCERTAINTY_CODE,
           quick={"epochs": 1, "subset": 2000, "members": 3}, full={"epochs": 3, "subset": 8000, "members": 5},
           seeds={"quick": 2, "full": 5}, budget_s=40,
           rule=AllOf((Effect("nll", "ensemble", "single network", higher_is_better=False, min_effect=0.0),
                       Effect("ood_auroc_digits", "ensemble", "single network", min_effect=0.0))))
def ensembles_uncertainty(ctx: Context) -> Evidence:
    k = ctx.get("members", 3)
    ev = Evidence(setup=f"{k} TinyCNNs (dropout 0.2) per seed, {ctx.get('epochs', 1)} epoch(s) on "
                        f"{ctx.get('subset', 2000)} embedded-MNIST images; metrics on half the validation split, "
                        "OOD: the 1,797 scikit-learn digits")
    for seed in ctx.seeds:
        trained = [_train(ctx, 1000 * seed + m) for m in range(k)]
        members = [m for m, _ in trained]
        _, test_half = _halves(trained[0][1])
        ood = _ood(trained[0][1])
        ev.add("single network", **_metrics(predict_probs(members[0], test_half), predict_probs(members[0], ood)[0]))
        ev.add("MC dropout", **_metrics(mc_dropout_probs(members[0], test_half, samples=20),
                                        mc_dropout_probs(members[0], ood, samples=20)[0]))
        ev.add("ensemble", **_metrics(ensemble_probs(members, test_half), ensemble_probs(members, ood)[0]))
    return ev


def _train_residual_mlp(ctx: Context, seed: int, *, sngp: bool) -> tuple[torch.nn.Module, Any]:
    """The residual MLP of ``sngp_mlp``, plain (linear head, no spectral norm) or as SNGP, trained with Adam.

    For SNGP an ``on_epoch`` hook restarts the Laplace sum after every epoch, so after the last one the
    precision holds exactly the last epoch (the recipe evaluates only at the end)."""
    spec = TrainSpec(epochs=ctx.get("epochs", 1), lr=0.003, optimizer="adam", subset=ctx.get("subset", 2000),
                     seed=seed)
    torch.manual_seed(seed)
    model = create_model("sngp_mlp", spectral_norm=sngp, gp_head=sngp)
    model, task = prepare(model, "mnist-embedded", recipe(spec), subset=spec.subset)
    restart = (lambda record: model.laplace.mark_evaluated()) if sngp else None
    return fit(model, task, recipe(spec), progress=False, on_epoch=restart).model.eval(), task


@train_tip(id="learn.bayesian-uncertainty", title="A GP head knows what it does not know",
           claim="A Gaussian-process head (GPyTorch, sparse variational, 64 inducing points per class, softmax "
                 "likelihood) fitted on the frozen penultimate features of a trained network separates "
                 "out-of-distribution inputs (the scikit-learn 8x8 digits for an MNIST model) better than the "
                 "network's own softmax, at an accuracy no more than 0.01 lower; SNGP (spectral normalisation and "
                 "a random-feature GP output layer) is reported beside it (residual MLP 784-128x3, 3 epochs on "
                 "8,000 MNIST images; full mode only).",
           cite=README.at(149, 152, topic="Gaussian processes in Bayesian deep learning"),
           source="Hensman et al. 2015 (AISTATS); Liu et al. 2020 (NeurIPS, SNGP)", section=LEARN,
           exercises=(*UNCERTAINTY_CODE, dltricks.layers.gp_head, dltricks.layers.random_features,
                      dltricks.models.sngp, dltricks.train.gp_head),
           quick=None, full={"epochs": 3, "subset": 8000, "gp_epochs": 5},
           seeds={"quick": 3, "full": 5}, budget_s=350,
           rule=AllOf((Effect("ood_auroc_digits", "GP head", "softmax", min_effect=0.0),
                       NonInferior("accuracy", "GP head", "softmax", margin=0.01))))
def bayesian_uncertainty(ctx: Context) -> Evidence:
    ev = Evidence(setup=f"residual MLP (784-128, 3 residual blocks), Adam 0.003, {ctx.get('epochs', 1)} epoch(s) "
                        f"on {ctx.get('subset', 2000)} embedded-MNIST images; GP head: 64 inducing points per class, "
                        f"{ctx.get('gp_epochs', 10)} epochs of Adam 0.05 on the negative ELBO; SNGP: spectral norm "
                        "(bound 0.95), 512 random features, mean-field logits; metrics on half the validation split, "
                        "OOD: the 1,797 scikit-learn digits")
    for seed in ctx.seeds:
        model, task = _train_residual_mlp(ctx, seed, sngp=False)
        _, test_half = _halves(task)
        ood = _ood(task)
        ev.add("softmax", **_metrics(predict_probs(model, test_half), predict_probs(model, ood)[0]))
        features, labels = pre_logit_features(model, task.train_loader.iter_epoch(0))
        head = fit_gp_head(features, labels, num_classes=task.num_classes, num_inducing=64,
                           epochs=ctx.get("gp_epochs", 10), seed=seed)
        ev.add("GP head", **_metrics(gp_head_probs(model, head, test_half), gp_head_probs(model, head, ood)[0]))
        sngp, _ = _train_residual_mlp(ctx, seed, sngp=True)
        ev.add("SNGP", **_metrics(sngp_probs(sngp, test_half), sngp_probs(sngp, ood)[0]))
    return ev

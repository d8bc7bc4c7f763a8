"""State-space-model tips and the vision / sequence comparisons of the MambaOut hypotheses. Their
experiments live in :mod:`dltricks.experiments.ssm`; the functions here call them and turn their numbers
into :class:`~dltricks.evidence.Evidence`, without re-implementing anything.

* H1 (MambaOut vs Vision Mamba, and ConvNeXt vs ViT) with :func:`dltricks.experiments.ssm.h1_vision`: in
  quick mode on the embedded MNIST split with the models scaled down (:func:`h1_mnist_models`).
* Mamba, attention and the Gated CNN on long *causal* sequences with
  :func:`dltricks.experiments.ssm.h2_sequence` (the blog's two traits of the tasks Mamba suits); each
  mixer's runs are memoised so the two tips share the Gated CNN. The blog's Hypothesis 2 itself is about
  long but *non-causal* visual tasks (detection, segmentation): ``ssm.mambaout-h2`` in the catalog.
* The gate ablation of the Mamba paper (S4 vs S6), and the documentation check of the README's
  description of Mamba's block.
"""

from __future__ import annotations

import math
from typing import Any

import dltricks.models
import dltricks.train
from dltricks.evidence import (BLOG, DOC_CHECK, LECTURE, README, Context, Effect, Evidence, Exact, NonInferior, plots,
                               tip)
from dltricks.data import isbi
from dltricks.experiments import segmentation, ssm
from dltricks.experiments._harness import health
from dltricks.layers import attention as attention_layers
from dltricks.layers import ssm as ssm_layers
from dltricks.models.convnext import ConvNeXt
from dltricks.models.segmentation import token_mixer as token_mixer_models
from dltricks.models.mambaout import MambaOut
from dltricks.models.vim import VisionMamba
from dltricks.models.vit import VisionTransformer
from dltricks.tasks.base import build_task

ARCH, SSM = "Architectures", "State-space models"


# --------------------------------------------------------------------------------------------- Mamba's block
@tip(id="ssm.mamba-adaptive-depth", title="\"Mamba adapts depth/width to the input\"", kind=DOC_CHECK,
     claim="The README describes Mamba as a network that scales its depth and width with the complexity of the "
           "input and integrates attention modules.",
     finding="The description does not match the other sources or the published architecture. The lecture places "
             "Mamba in the structured state-space line of S4 (003:1496-1501), and the blog says what Mamba adds "
             "to S4 is a selection mechanism, parameters that depend on the input, in a block that joins the SSM "
             "with an MLP (004:22-24). The published block (Gu & Dao 2023, Sec. 3.4) has a fixed number of layers "
             "of fixed width and no attention; what depends on the input is the SSM's step size and its B and C. "
             "The README's Mamba tips that build on the description (monitoring the scaling dynamics, "
             "002:213-214) have nothing to act on.",
     cite=(README.at(200, 205, "Mamba: dynamic scaling, integrated attention"),
           README.at(227, 229, "Mamba vs Transformers: adaptive depth and width"),
           LECTURE.at(1496, 1501, "S4 + Mamba"), BLOG.at(22, 24, "Mamba: S4 with selection, SSM and MLP blocks")),
     source="Gu & Dao 2023, Sec. 3.4", section=SSM, exercises=(ssm.claim_dynamic_depth_width, ssm_layers),
     seeds={"quick": 1, "full": 1}, budget_s=2,
     rule=Exact(checks=("the same modules run for every input", "every layer has the same width for every input",
                        "the block has no attention module", "the SSM step size varies along the input"),
                meaning="Supporting facts only: our block follows the published design, so these checks show what "
                        "that design does; they are not evidence about the README's text."))
def mamba_adaptive_depth(ctx: Context) -> Evidence:
    """Supporting facts for the documentation check: what the published Mamba block (our implementation of
    it) does with inputs of different lengths and content, via
    :func:`dltricks.experiments.ssm.claim_dynamic_depth_width` (forward hooks record which modules run and
    the widths they output, and the SSM step size per token)."""
    res = ssm.claim_dynamic_depth_width(d_model=ctx.get("d_model", 64), depth=ctx.get("depth", 2),
                                    lengths=tuple(ctx.get("lengths", (8, 64))))
    traces = res["traces"]
    ev = Evidence(setup=f"a {ctx.get('depth', 2)}-layer Mamba model (d_model {ctx.get('d_model', 64)}) run on inputs "
                        f"of lengths {sorted({t['length'] for t in traces})}, random and constant tokens "
                        f"(dltricks.experiments.ssm.claim_dynamic_depth_width).")
    ev.values.update({f"{t['content']} input of {t['length']} tokens: modules run": t["modules_run"] for t in traces})
    ev.values.update({f"fixed size: {k}": v for k, v in res["fixed_sizes"].items()})
    for t in traces:  # the input-dependent part: the SSM step size delta (its format may evolve upstream)
        deltas = t.get("delta", t.get("delta_std", []))
        means = [d["mean"] if isinstance(d, dict) else d for d in deltas]
        if means:
            ev.values[f"{t['content']} input of {t['length']} tokens: mean delta per layer"] = \
                ", ".join(f"{m:.3g}" for m in means)
    ev.check("the same modules run for every input", bool(res["same_modules_for_every_input"]))
    ev.check("every layer has the same width for every input", bool(res["same_widths_for_every_input"]))
    ev.check("the block has no attention module", not res["has_attention_module"])
    ev.check("the SSM step size varies along the input",
             all(d.get("std_over_time", 0.0) > 0 for t in traces if t["content"] == "random"
                 for d in t.get("delta", []) if isinstance(d, dict)))
    ev.headline = (f"same {traces[0]['modules_run']} modules and widths for all {len(traces)} inputs; "
                   f"attention module: {'yes' if res['has_attention_module'] else 'no'}; only delta/B/C vary")
    ev.notes = res["explanation"]
    return ev


@tip(id="ssm.selective-copying", title="Selective (S6) vs time-invariant (S4) SSM",
     gpu="length 256, 1,500 steps x 2 models x 5 seeds of the plain-PyTorch scan: over an hour on 2 CPU cores",
     larger_runs=("docs/ssm.md#gate-and-selection-ablation-on-selective-copying-mamba-paper-table-1: the gate and "
                  "selection ablation at full length",),
     claim="On Selective Copying, a selective SSM (S6) without the gate learns the task far better than a "
           "time-invariant S4 without the gate (Mamba paper: 97.0 % vs 18.3 %). (Quick mode: length 32, 4 "
           "tokens to copy from 6 symbols, d_model 32, 200 steps.)",
     cite=(BLOG.at(22, topic="Mamba adds selection, input-dependent parameters, to S4"),
           LECTURE.at(1496, 1501, "S4 + Mamba")),
     source="Gu & Dao, Mamba 2023, Table 1", section=SSM, exercises=(ssm.gate_ablation, ssm_layers),
     quick={"seq_len": 32, "num_tokens": 4, "vocab_size": 8, "d_model": 32, "steps": 200, "lr": 3e-3, "warmup": 20,
            "batch_size": 16},
     full={"seq_len": 256, "steps": 1500}, budget_s=33, seeds={"quick": 3, "full": 5}, may_fail=("S4",),
     rule=Effect("accuracy", "S6", "S4", min_effect=0.1))
def selective_copying(ctx: Context) -> Evidence:
    """The Mamba paper's gate ablation on Selective Copying: no-gate S4 vs no-gate S6, via
    :func:`dltricks.experiments.ssm.gate_ablation`."""
    seq_len, steps = ctx.get("seq_len", 128), ctx.get("steps", 150)
    num_tokens, vocab, d_model = ctx.get("num_tokens", 16), ctx.get("vocab_size", 16), ctx.get("d_model", 64)
    lr, warmup, batch = ctx.get("lr", 2e-3), ctx.get("warmup", 100), ctx.get("batch_size", 32)
    ev = Evidence(setup=f"Selective Copying ({num_tokens} tokens to recall, vocabulary {vocab}, length {seq_len}); "
                        f"2-layer models, d_model {d_model}, {steps} AdamW steps of batch {batch} (peak lr {lr:g}, "
                        f"{warmup} warm-up steps); token accuracy on fresh sequences "
                        f"(dltricks.experiments.ssm.gate_ablation).")
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        cfg = ssm.SeqTrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup=warmup, eval_every=0,
                             target_accuracy=None, seed=seed)
        res = ssm.gate_ablation(configs=("S4 (no gate)", "S6 (no gate)"), d_model=d_model, seq_len=seq_len,
                            num_tokens=num_tokens, vocab_size=vocab, train=cfg, log=None)
        chance = 1 / (vocab - 2)  # data tokens: the vocabulary minus noise and marker
        for arm, config in (("S4", "S4 (no gate)"), ("S6", "S6 (no gate)")):
            accuracy = res["models"][config]["accuracy"]
            ev.add(arm, accuracy=accuracy)
            # S4 failing is what the paper reports (may_fail); S6 at chance means the setup cannot test the claim.
            ev.record_health(arm, f"at chance (token accuracy {accuracy:.3f} < chance {chance:.3f} + 0.05)"
                             if accuracy < chance + 0.05 else "")
    ev.values["chance accuracy"] = round(1 / (vocab - 2), 4)
    ev.budget = {"optimizer steps": steps, "sequences seen": steps * batch}
    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="token accuracy", title="Selective Copying, no gate"))
    return ev


# --------------------------------------------------------------------------------------------- H2: long sequences
_H2: dict[tuple, dict[str, Any]] = {}


def _h2(mixer: str, tasks: tuple[str, ...], quick: bool, steps: int | None, seed: int,
        device: str = "cpu") -> dict[str, Any]:
    """h2_sequence for one mixer and seed (each mixer is trained on its own, so results do not depend on which
    other mixers run); memoised so H2 and the attention tip share the Gated CNN runs (same worker: ``shares``)."""
    key = (mixer, tasks, quick, steps, seed, device)
    if key not in _H2:
        _H2[key] = ssm.h2_sequence(mixers=(mixer,), tasks=tasks, quick=quick, steps=steps, seed=seed, log=None,
                                   device=device)
    return _H2[key]


def _h2_evidence(ctx: Context, mixers: dict[str, str], what: str) -> Evidence:
    tasks = tuple(ctx.get("tasks", ("selective_copying",)))
    quick = bool(ctx.get("quick", False))
    steps = ctx.get("steps")
    table = ssm.H2_SETTINGS["quick" if quick else "full"]
    sizes = "; ".join(f"{t} " + ", ".join(f"{k} {v}" for k, v in table[t].items() if k not in ("steps", "lr"))
                      for t in tasks)
    budget = f"{steps} steps" if steps else "the steps of the table"
    ev = Evidence(setup=f"{what}: h2_sequence({'quick' if quick else 'full'} task sizes: {sizes}; d_model "
                        f"{table['d_model']['value']}, 2 blocks) with the same width, depth, optimiser and {budget} "
                        f"for every mixer (dltricks.experiments.ssm.h2_sequence); one value per seed, the mean "
                        f"accuracy over the tasks, paired by seed (each task's accuracy is reported too).")
    for seed in ctx.seeds:
        for mixer, name in mixers.items():
            ctx.report(f"{name}, seed {seed}")
            runs = _h2(mixer, tasks, quick, steps, seed, ctx.device)["tasks"]
            per_task = {t: runs[t][mixer].get("accuracy", runs[t][mixer].get("val_accuracy", float("nan")))
                        for t in tasks}
            ev.add(name, accuracy=sum(per_task.values()) / len(tasks), params=runs[tasks[0]][mixer]["params"],
                   **{f"accuracy on {t}": a for t, a in per_task.items()})
    ev.budget = {"optimizer steps per task": steps or "as in ssm.H2_SETTINGS", "tasks": len(tasks)}
    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="mean accuracy over the tasks (one dot per seed)", title=what))
    return ev


H2_QUICK = {"quick": True, "tasks": ["selective_copying", "induction_heads"], "steps": 200}
H2_FULL = {"quick": False, "tasks": ["selective_copying", "induction_heads", "smnist", "listops"]}
H2_METRICS = {"accuracy": "token accuracy (classification accuracy for sMNIST / ListOps), mean over the tasks; one "
                           "value per seed"}


@tip(id="arch.attention-long-range", title="Attention vs small receptive field",
     gpu="four long tasks at full size, 3,000-4,000 steps per mixer, 5 seeds: CPU-hours",
     larger_runs=("docs/ssm.md#long-causal-sequence-tasks-the-traits-behind-h2-not-h2-itself: the four long tasks at "
                  "full size",),
     claim="On tasks that need long-range recall (Selective Copying, Induction Heads), causal self-attention is "
           "more accurate than a causal gated CNN whose convolution sees only 4 tokens. (Quick mode: the two "
           "recall tasks at lengths 32 and 16, 200 steps, d_model 32.)",
     cite=(LECTURE.at(374, 381, "convolution: limited context; self-attention: wide context"),
           README.at(70, topic="self-attention captures long-range dependencies")),
     section=ARCH, exercises=(ssm.h2_sequence, attention_layers, ssm_layers),
     quick=H2_QUICK, full=H2_FULL, seeds={"quick": 3, "full": 5}, budget_s=30, metrics=H2_METRICS, shares="h2",
     rule=Effect("accuracy", "attention", "Gated CNN", min_effect=0.05))
def attention_long_range(ctx: Context) -> Evidence:
    """Causal attention vs the causal Gated CNN (kernel 4) on long-range recall tasks."""
    return _h2_evidence(ctx, {"attention": "attention", "gated_cnn": "Gated CNN"}, "attention vs gated CNN")


@tip(id="ssm.mamba-long-causal", title="Mamba's SSM helps long causal sequences",
     gpu="four long tasks at full size, 3,000-4,000 steps per mixer, 5 seeds: CPU-hours",
     larger_runs=("docs/ssm.md#long-causal-sequence-tasks-the-traits-behind-h2-not-h2-itself: the four long tasks at "
                  "full size", "docs/ssm.md#induction-heads-the-must-hold-run: Mamba extrapolating to 16,384 tokens"),
     claim="On sequence tasks that are long and need causal token mixing (Selective Copying, Induction Heads), "
           "Mamba is more accurate than the same block without its SSM (the causal Gated CNN): the two traits "
           "the blog names for the tasks Mamba suits. (Quick mode: lengths 32 and 16, 200 steps, d_model 32.)",
     cite=(BLOG.at(70, 73, "Mamba suits long tasks with causal token mixing"),
           BLOG.at(64, 66, "causal attention vs RNN-like memory")),
     source="Yu & Wang, MambaOut 2024", section=SSM, exercises=(ssm.h2_sequence, ssm_layers),
     quick=H2_QUICK, full=H2_FULL, seeds={"quick": 3, "full": 5}, budget_s=35, metrics=H2_METRICS, shares="h2",
     rule=Effect("accuracy", "Mamba", "Gated CNN", min_effect=0.05))
def mamba_long_causal(ctx: Context) -> Evidence:
    """Mamba vs the Gated CNN (the same block without its SSM) on long causal tasks."""
    return _h2_evidence(ctx, {"mamba": "Mamba", "gated_cnn": "Gated CNN"}, "Mamba vs gated CNN")


# --------------------------------------------------------------------------------------------- H1: vision
def h1_mnist_models() -> dict[str, tuple[Any, dict[str, Any]]]:
    """The four H1 families scaled down for 28x28 grey images (quick mode), 126-158 k parameters each
    at 10 classes: ViM and ViT cut 7x7 patches (4x4 tokens), MambaOut's stem and ConvNeXt's patchify stem
    bring the image to 7x7 before their stages. Same ``(build, settings)`` format as
    :func:`dltricks.experiments.ssm.h1_models`."""
    specs: dict[str, tuple[type, dict[str, Any]]] = {
        "MambaOut": (MambaOut, dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 56), stem_strides=(2, 2))),
        "ViM": (VisionMamba, dict(img_size=28, patch_size=7, embed_dim=56, depth=4)),
        "ViT": (VisionTransformer, dict(img_size=28, patch_size=7, embed_dim=56, depth=4, num_heads=4)),
        "ConvNeXt": (ConvNeXt, dict(depths=(1, 2, 1), dims=(24, 48, 80))),
    }
    return {label: ((lambda cls=cls, kw=kw: cls(num_classes=10, in_chans=1, **kw)), {"class": cls.__name__, **kw})
            for label, (cls, kw) in specs.items()}


_H1_RECIPE = "one shared recipe (AdamW 2e-3, wd 0.05, cosine, label smoothing 0.1, gradient clipping 1)"


def _h1_evidence(ctx: Context, labels: tuple[str, str], what: str) -> Evidence:
    """``labels`` (treatment, control) from :func:`dltricks.experiments.ssm.h1_vision`.

    ``data: cifar10`` (full mode) trains the four contenders of ``h1_models()`` (1.6-1.8 M parameters) on
    CIFAR-10, shared by the two tips that read it; ``data: mnist-embedded`` (quick mode) trains only the
    two compared models, scaled down (:func:`h1_mnist_models`), on the MNIST split shipped in the package.
    """
    data = ctx.get("data", "cifar10")
    options = {k: ctx[k] for k in ("epochs", "batch_size", "subset", "val_subset") if k in ctx.settings}
    if data == "mnist-embedded":
        zoo = h1_mnist_models()
        models = {label: zoo[label] for label in labels}
        ev = Evidence(setup=f"{what} on the embedded MNIST split (28x28 grey digits, no augmentation), {options}, "
                            f"{_H1_RECIPE}; the same model families scaled down to 0.13-0.16 M parameters "
                            f"(dltricks.experiments.ssm.h1_vision with "
                            f"dltricks.experiments.ssm_tips.h1_mnist_models). A short-budget check of the "
                            f"direction on an easy task, not the CIFAR-10 comparison of full mode.")
    elif data == "cifar10":
        models = None
        ev = Evidence(setup=f"{what} on CIFAR-10 (the shared image-folder copy, crop + flip), {options}, "
                            f"{_H1_RECIPE}; MambaOut, ViM, ViT and ConvNeXt at 1.6-1.8 M parameters "
                            f"(dltricks.experiments.ssm.h1_vision).")
    else:
        raise ValueError(f"data must be 'cifar10' or 'mnist-embedded', got {data!r}")
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        key = ("h1", data, seed, tuple(sorted(options.items())), tuple(models or ()))
        if key not in _H2:  # in full mode shared by the H1 and the CNN-vs-ViT tips
            task = None
            if data == "mnist-embedded":
                task = build_task("mnist-embedded", batch_size=options.get("batch_size", 64), eval_batch_size=500,
                                  seed=seed, subset=options.get("subset"), val_subset=options.get("val_subset"))
                run_options = {k: v for k, v in options.items() if k in ("epochs", "batch_size")}
            else:
                run_options = {**options, "device": ctx.device}
            _H2[key] = ssm.h1_vision(models=models, seed=seed, task=task, log=None, **run_options)
        for label, run in _H2[key]["models"].items():
            ev.add(label, val_acc=run["val_accuracy"], params=run["params"])
            last = (run.get("history") or [{}])[-1]
            ev.record_health(label, health(val_acc=run["val_accuracy"], num_classes=10,
                                           val_size=options.get("val_subset") or 10000,
                                           train_acc=last.get("train_accuracy"), train_size=options.get("subset") or 0))
    ev.budget = {"epochs": options.get("epochs"), "training images": options.get("subset"),
                 "validation images": options.get("val_subset")}
    ev.plots.append(plots.bar_plot(ctx.path("val_acc.png"), {a: m["val_acc"] for a, m in ev.arms.items()},
                                   ylabel="validation accuracy", title=what))
    return ev


H1_CODE = (ssm.h1_vision, dltricks.models, dltricks.train)
# H1 and CNN-vs-ViT in quick mode: the same recipe and model families, scaled down, on the MNIST split shipped in
# the package (CIFAR-10 is neither embedded nor fast enough for a quick run).
H1_QUICK = {"data": "mnist-embedded", "epochs": 2, "batch_size": 64, "subset": 2000, "val_subset": 500}
H1_FULL = {"epochs": 10, "batch_size": 128, "subset": 10000, "val_subset": 2000}


@tip(id="ssm.mambaout-h1", title="MambaOut H1: no SSM needed for images",
     gpu="four 1.6-1.8 M-parameter models, 10 epochs of 10,000 CIFAR-10 images, 5 seeds: many CPU-hours",
     larger_runs=("docs/ssm.md#h1-image-classification-on-cifar-10: MambaOut, ViM, ViT and ConvNeXt at 1.6-1.8 M "
                  "parameters on CIFAR-10",),
     claim="For image classification, MambaOut (gated CNN, no SSM) is at least as accurate as Vision Mamba at "
           "matched parameters (CIFAR-10): the blog's Hypothesis 1, an SSM is not needed for a task that is "
           "neither long nor causal. (Quick mode: both scaled down to about 0.14 M parameters, 2,000 embedded "
           "MNIST digits, 2 epochs.)",
     cite=(BLOG.at(100, topic="Hypothesis 1"), BLOG.at(77, topic="ImageNet: 196 tokens, not a long sequence"),
           BLOG.at(115, 117, "MambaOut beats visual Mambas on ImageNet")),
     source="Yu & Wang, MambaOut 2024", section=SSM, exercises=H1_CODE, quick=H1_QUICK, full=H1_FULL,
     budget_s=40, seeds={"quick": 3, "full": 5}, shares="h1",
     rule=NonInferior("val_acc", "MambaOut", "ViM", margin=0.01))
def mambaout_h1(ctx: Context) -> Evidence:
    """H1: MambaOut (Gated CNN, no SSM) vs Vision Mamba at matched parameters."""
    return _h1_evidence(ctx, ("MambaOut", "ViM"), "MambaOut vs Vision Mamba")


@tip(id="arch.cnn-vs-vit-small-data", title="CNN beats ViT on small data",
     gpu="shares the H1 CIFAR-10 runs: many CPU-hours",
     larger_runs=("docs/ssm.md#h1-image-classification-on-cifar-10: MambaOut, ViM, ViT and ConvNeXt at 1.6-1.8 M "
                  "parameters on CIFAR-10",),
     claim="Trained from scratch on a small data set (10,000 CIFAR-10 images), a ConvNeXt-style CNN beats a ViT of "
           "similar size. (Quick mode: both scaled down to about 0.13-0.16 M parameters, 2,000 embedded MNIST "
           "digits, 2 epochs.)",
     cite=(LECTURE.at(1415, 1418, "CNN vs ViT: without pre-training the CNN wins"),
           LECTURE.at(1310, 1312, "ViT is poor without good pre-training")),
     source="Dosovitskiy et al. 2021", section=ARCH, exercises=H1_CODE, quick=H1_QUICK, full=H1_FULL,
     budget_s=15, seeds={"quick": 3, "full": 5}, shares="h1",
     rule=Effect("val_acc", "ConvNeXt", "ViT", min_effect=0.02))
def cnn_vs_vit(ctx: Context) -> Evidence:
    """A ConvNeXt-style CNN vs a ViT of similar size, trained from scratch on little data."""
    return _h1_evidence(ctx, ("ConvNeXt", "ViT"), "ConvNeXt vs ViT")


# --------------------------------------------------------------------------------------------- H2: long, non-causal
H2_SEG_ARMS = {"vim": "ViM (SSM)", "mambaout": "MambaOut (no SSM)"}


@tip(id="ssm.mambaout-h2", title="MambaOut H2: SSMs for long, non-causal vision",
     gpu="4,096-token selective scans, 200 steps x 2 encoders x 5 seeds: 30-45 CPU-minutes a seed",
     larger_runs=("docs/ssm.md#h2-a-long-non-causal-visual-task-isbi-2012: ViM vs MambaOut encoders on ISBI 2012",),
     claim="The blog's Hypothesis 2: an SSM stays worth having for detection and segmentation, whose token "
           "sequences are long (thousands of tokens) but not causal. Tested on ISBI 2012 membrane segmentation "
           "with 128 px crops in 2x2 patches (4,096 tokens): a plain encoder of Vision Mamba blocks "
           "(bidirectional SSM) segments the membranes better (Dice on the held-out slices, sliding windows of "
           "the training crop) than the same encoder with MambaOut's Gated CNN blocks (no SSM), at about the "
           "same parameters (31 k vs 30 k), both trained from scratch (the blog's backbones were pre-trained). "
           "(Quick mode: 64 px crops in 4x4 patches, 256 tokens, which is not long; 40 steps.)",
     cite=(BLOG.at(102, topic="Hypothesis 2"), BLOG.at(79, topic="detection and segmentation inputs are long"),
           BLOG.at(134, 136, "COCO: VMamba beats MambaOut"),
           BLOG.at(148, 149, "ADE20K: LocalVMamba beats MambaOut")),
     source="Yu & Wang, MambaOut 2024; Zhu et al., Vision Mamba 2024", section=SSM,
     exercises=(segmentation.token_mixer_ablation, token_mixer_models, ssm_layers, isbi),
     quick={"embed_dim": 32, "depth": 2, "patch_size": 4, "crop_size": 64, "steps": 40, "batch_size": 4,
            "overlap": 0.0},
     full={"embed_dim": 32, "depth": 2, "patch_size": 2, "crop_size": 128, "steps": 200, "batch_size": 4,
           "overlap": 0.5},
     seeds={"quick": 3, "full": 5}, budget_s=150,
     metrics={"dice": "membrane Dice on the 5 held-out slices", "boundary_f1": "membrane boundary F1 (2 px)",
              "params": "parameters", "tokens": "tokens per training crop"},
     rule=Effect("dice", H2_SEG_ARMS["vim"], H2_SEG_ARMS["mambaout"], min_effect=0.01))
def mambaout_h2(ctx: Context) -> Evidence:
    """H2 on a long, non-causal visual task, via :func:`dltricks.experiments.segmentation.token_mixer_ablation`."""
    options = {k: ctx[k] for k in ("embed_dim", "depth", "patch_size", "crop_size", "steps", "batch_size", "lr",
                                   "overlap") if k in ctx.settings}
    patch, crop = options.get("patch_size", 2), options.get("crop_size", 128)
    ev = Evidence(setup=f"the same plain encoder (stem + {options.get('depth', 2)} blocks of width "
                        f"{options.get('embed_dim', 32)} on {patch}x{patch} patches, {(crop // patch) ** 2:,} tokens "
                        f"per {crop} px crop) with Vision Mamba blocks vs MambaOut's Gated CNN blocks, one decoder, "
                        f"the isbi-unet recipe in fp32, {options}; membrane Dice on the 5 held-out ISBI 2012 slices "
                        f"with sliding windows of the crop (dltricks.experiments.segmentation.token_mixer_ablation).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = segmentation.token_mixer_ablation(tuple(H2_SEG_ARMS), seed=seed, device=ctx.device, **options)
        for mixer, arm in H2_SEG_ARMS.items():
            run = last["runs"][mixer]
            ev.add(arm, dice=run["dice"], boundary_f1=run["boundary_f1"], params=run["params"])
            floor = last["trivial_dice"]  # marking every pixel as membrane
            trained = math.isfinite(run["final_train_loss"]) and run["dice"] > floor
            ev.record_health(arm, "" if trained else f"not trained (Dice {run['dice']:.3f} <= {floor:.3f}, the Dice "
                                                     f"of marking every pixel as membrane)")
    ev.values["tokens per crop"] = last["tokens"]
    ev.values["Dice of marking every pixel as membrane"] = round(last["trivial_dice"], 4)
    ev.plots.append(segmentation.plot_token_mixer_ablation(last, ctx.path("token_mixers.png")).name)
    return ev

"""State-space-model tips and the vision / sequence comparisons of the MambaOut hypotheses. Their
experiments live in :mod:`dltricks.experiments.ssm`; the functions here call them and turn their numbers
into :class:`~dltricks.evidence.Evidence`, without re-implementing anything.

* H1 (MambaOut vs Vision Mamba, and ConvNeXt vs ViT) with :func:`dltricks.experiments.ssm.h1_vision`: in
  quick mode on the embedded MNIST split with the models scaled down (:func:`h1_mnist_models`).
* H2 (Mamba, attention and the Gated CNN on long causal sequences) with
  :func:`dltricks.experiments.ssm.h2_sequence`; each mixer's runs are memoised so the two H2 tips share
  the Gated CNN.
* The gate ablation of the Mamba paper (S4 vs S6) and the README's description of Mamba's block.
"""

from __future__ import annotations

from typing import Any

import dltricks.models
import dltricks.train
from dltricks.evidence import Context, Effect, Evidence, Exact, NonInferior, plots, tip
from dltricks.experiments import ssm
from dltricks.layers import attention as attention_layers
from dltricks.layers import ssm as ssm_layers
from dltricks.models.convnext import ConvNeXt
from dltricks.models.mambaout import MambaOut
from dltricks.models.vim import VisionMamba
from dltricks.models.vit import VisionTransformer
from dltricks.tasks.base import build_task

ARCH, SSM, LECTURE, README = "Architectures", "State-space models", "the lecture", "the README"


# --------------------------------------------------------------------------------------------- Mamba's block
@tip(id="ssm.mamba-adaptive-depth", title="\"Mamba adapts depth/width to the input\"",
     claim="The README says Mamba scales its depth and width dynamically with the input and integrates attention "
           "modules. This tip tests that description against the published block (Gu & Dao 2023): a refuted "
           "verdict means the README's description is wrong.",
     source=f"{README}; Gu & Dao 2023", section=SSM, exercises=(ssm.claim_dynamic_depth_width, ssm_layers),
     seeds={"quick": 1, "full": 1}, budget_s=2,
     rule=Exact(checks=("executed layers differ between inputs", "layer output widths differ between inputs",
                        "the block contains an attention module"),
                meaning="The checks encode the README's claim itself, so a refuted verdict means the README is wrong."))
def mamba_adaptive_depth(ctx: Context) -> Evidence:
    """The README's "Mamba adapts depth/width to the input (integrated attention)" against the published
    block, via :func:`dltricks.experiments.ssm.claim_dynamic_depth_width` (forward hooks record which
    modules run and the widths they output, for inputs of different lengths and content)."""
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
    ev.check("executed layers differ between inputs", not res["same_modules_for_every_input"])
    ev.check("layer output widths differ between inputs", not res["same_widths_for_every_input"])
    ev.check("the block contains an attention module", bool(res["has_attention_module"]))
    ev.headline = (f"same {traces[0]['modules_run']} modules and widths for all {len(traces)} inputs; "
                   f"attention module: {'yes' if res['has_attention_module'] else 'no'}; only delta/B/C vary")
    ev.notes = res["explanation"]
    return ev


@tip(id="ssm.selective-copying", title="Selective (S6) vs time-invariant (S4) SSM",
     claim="On Selective Copying, a selective SSM (S6) without the gate learns the task far better than a "
           "time-invariant S4 without the gate (Mamba paper: 97.0 % vs 18.3 %). (Quick mode: length 32, 4 "
           "tokens to copy from 6 symbols, d_model 32, 300 steps.)",
     source="Gu & Dao, Mamba 2023, Table 1", section=SSM, exercises=(ssm.gate_ablation, ssm_layers),
     quick={"seq_len": 32, "num_tokens": 4, "vocab_size": 8, "d_model": 32, "steps": 300, "lr": 3e-3, "warmup": 20},
     full={"seq_len": 256, "steps": 1500}, budget_s=11,
     rule=Effect("accuracy", "S6", "S4", min_effect=0.1))
def selective_copying(ctx: Context) -> Evidence:
    """The Mamba paper's gate ablation on Selective Copying: no-gate S4 vs no-gate S6, via
    :func:`dltricks.experiments.ssm.gate_ablation`."""
    seq_len, steps = ctx.get("seq_len", 128), ctx.get("steps", 150)
    num_tokens, vocab, d_model = ctx.get("num_tokens", 16), ctx.get("vocab_size", 16), ctx.get("d_model", 64)
    lr, warmup = ctx.get("lr", 2e-3), ctx.get("warmup", 100)
    ev = Evidence(setup=f"Selective Copying ({num_tokens} tokens to recall, vocabulary {vocab}, length {seq_len}); "
                        f"2-layer models, d_model {d_model}, {steps} AdamW steps of batch 32 (peak lr {lr:g}, {warmup} "
                        f"warm-up steps); token accuracy on fresh sequences (dltricks.experiments.ssm.gate_ablation).")
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        cfg = ssm.SeqTrainConfig(steps=steps, batch_size=32, seq_len=seq_len, lr=lr, warmup=warmup, eval_every=0,
                             target_accuracy=None, seed=seed)
        res = ssm.gate_ablation(configs=("S4 (no gate)", "S6 (no gate)"), d_model=d_model, seq_len=seq_len,
                            num_tokens=num_tokens, vocab_size=vocab, train=cfg, log=None)
        ev.add("S4", accuracy=res["models"]["S4 (no gate)"]["accuracy"])
        ev.add("S6", accuracy=res["models"]["S6 (no gate)"]["accuracy"])
    ev.values["chance accuracy"] = round(1 / (vocab - 2), 4)  # data tokens: the vocabulary minus noise and marker
    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="token accuracy", title="Selective Copying, no gate"))
    return ev


# --------------------------------------------------------------------------------------------- H2: long sequences
_H2: dict[tuple, dict[str, Any]] = {}


def _h2(mixer: str, tasks: tuple[str, ...], quick: bool, steps: int | None) -> dict[str, Any]:
    """h2_sequence for one mixer (each mixer is trained from seed 0 on its own, so results do not depend on
    which other mixers run); memoised so H2 and the attention tip share the Gated CNN runs."""
    key = (mixer, tasks, quick, steps)
    if key not in _H2:
        _H2[key] = ssm.h2_sequence(mixers=(mixer,), tasks=tasks, quick=quick, steps=steps, log=None)
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
                        f"for every mixer (dltricks.experiments.ssm.h2_sequence); one value per task, paired by task.")
    for task in tasks:
        for mixer, name in mixers.items():
            ctx.report(f"{name} on {task}")
            run = _h2(mixer, tasks, quick, steps)["tasks"][task][mixer]
            ev.add(name, accuracy=run.get("accuracy", run.get("val_accuracy", float("nan"))), params=run["params"])
            ev.values[f"{name} on {task}: accuracy"] = round(run["accuracy"], 4)
    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="accuracy (one dot per task)", title=what))
    return ev


H2_QUICK = {"quick": True, "tasks": ["selective_copying", "induction_heads"], "steps": 300}
H2_FULL = {"quick": False, "tasks": ["selective_copying", "induction_heads", "smnist", "listops"]}
H2_METRICS = {"accuracy": "token accuracy (classification accuracy for sMNIST / ListOps); one value per task"}


@tip(id="arch.attention-long-range", title="Attention vs small receptive field",
     claim="On tasks that need long-range recall (Selective Copying, Induction Heads), causal self-attention is "
           "more accurate than a causal gated CNN whose convolution sees only 4 tokens. (Quick mode: the two "
           "recall tasks at lengths 32 and 16, 300 steps, d_model 32.)",
     source=f"{LECTURE} (attention)", section=ARCH, exercises=(ssm.h2_sequence, attention_layers, ssm_layers),
     quick=H2_QUICK, full=H2_FULL, seeds={"quick": 1, "full": 1}, budget_s=11, metrics=H2_METRICS,
     rule=Effect("accuracy", "attention", "Gated CNN", min_effect=0.05, min_seeds=3))
def attention_long_range(ctx: Context) -> Evidence:
    """Causal attention vs the causal Gated CNN (kernel 4) on long-range recall tasks."""
    return _h2_evidence(ctx, {"attention": "attention", "gated_cnn": "Gated CNN"}, "attention vs gated CNN")


@tip(id="ssm.mambaout-h2", title="MambaOut H2: SSM helps long causal sequences",
     claim="On long causal sequence tasks (Selective Copying, Induction Heads), Mamba is more accurate than the "
           "same block without its SSM (the causal Gated CNN). (Quick mode: lengths 32 and 16, 300 steps, "
           "d_model 32.)",
     source="the MambaOut blog; Yu & Wang 2024", section=SSM, exercises=(ssm.h2_sequence, ssm_layers),
     quick=H2_QUICK, full=H2_FULL, seeds={"quick": 1, "full": 1}, budget_s=13, metrics=H2_METRICS,
     rule=Effect("accuracy", "Mamba", "Gated CNN", min_effect=0.05, min_seeds=3))
def mambaout_h2(ctx: Context) -> Evidence:
    """H2: Mamba vs the Gated CNN (the same block without its SSM) on long causal tasks."""
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
                run_options = options
            _H2[key] = ssm.h1_vision(models=models, seed=seed, task=task, log=None, **run_options)
        for label, run in _H2[key]["models"].items():
            ev.add(label, val_acc=run["val_accuracy"], params=run["params"])
    ev.plots.append(plots.bar_plot(ctx.path("val_acc.png"), {a: m["val_acc"] for a, m in ev.arms.items()},
                                   ylabel="validation accuracy", title=what))
    return ev


H1_CODE = (ssm.h1_vision, dltricks.models, dltricks.train)
# H1 and CNN-vs-ViT in quick mode: the same recipe and model families, scaled down, on the MNIST split shipped in
# the package (CIFAR-10 is neither embedded nor fast enough for a quick run).
H1_QUICK = {"data": "mnist-embedded", "epochs": 2, "batch_size": 64, "subset": 2000, "val_subset": 1000}
H1_FULL = {"epochs": 10, "batch_size": 128, "subset": 10000, "val_subset": 2000}


@tip(id="ssm.mambaout-h1", title="MambaOut H1: no SSM needed for images",
     claim="For image classification, MambaOut (gated CNN, no SSM) is at least as accurate as Vision Mamba at "
           "matched parameters (CIFAR-10). (Quick mode: both scaled down to about 0.14 M parameters, 2,000 "
           "embedded MNIST digits, 2 epochs.)",
     source="the MambaOut blog; Yu & Wang 2024", section=SSM, exercises=H1_CODE, quick=H1_QUICK, full=H1_FULL,
     budget_s=12, rule=NonInferior("val_acc", "MambaOut", "ViM", margin=0.01))
def mambaout_h1(ctx: Context) -> Evidence:
    """H1: MambaOut (Gated CNN, no SSM) vs Vision Mamba at matched parameters."""
    return _h1_evidence(ctx, ("MambaOut", "ViM"), "MambaOut vs Vision Mamba")


@tip(id="arch.cnn-vs-vit-small-data", title="CNN beats ViT on small data",
     claim="Trained from scratch on a small data set (10,000 CIFAR-10 images), a ConvNeXt-style CNN beats a ViT of "
           "similar size. (The README's second half, that a hybrid closes the gap, is not measured here. Quick "
           "mode: both scaled down to about 0.13-0.16 M parameters, 2,000 embedded MNIST digits, 2 epochs.)",
     source=f"{README}; Dosovitskiy et al. 2021", section=ARCH, exercises=H1_CODE, quick=H1_QUICK, full=H1_FULL,
     budget_s=6, rule=Effect("val_acc", "ConvNeXt", "ViT", min_effect=0.02))
def cnn_vs_vit(ctx: Context) -> Evidence:
    """A ConvNeXt-style CNN vs a ViT of similar size, trained from scratch on little data."""
    return _h1_evidence(ctx, ("ConvNeXt", "ViT"), "ConvNeXt vs ViT")

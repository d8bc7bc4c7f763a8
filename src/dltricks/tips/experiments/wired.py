"""Tips whose experiments live in other areas of dltricks: these functions call them (segmentation in
:mod:`dltricks.experiments.segmentation`, SSM layers, SPP) and turn their numbers into :class:`Evidence`.
Nothing is re-implemented here; the checks compare the numbers those experiments return.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dltricks.tips.core import Context, Evidence
from dltricks.tips.experiments.conv import centre_support


# --------------------------------------------------------------------------------------------- segmentation
def aspp_degeneration(ctx: Context) -> Evidence:
    """DeepLabV3's Fig. 4 via :func:`dltricks.experiments.segmentation.aspp_degeneration`, plus the
    receptive field of the image-pooling branch (:class:`dltricks.layers.aspp.ASPPPooling`)."""
    from dltricks.experiments.segmentation import aspp_degeneration as run
    from dltricks.experiments.segmentation import plot_aspp_degeneration
    from dltricks.layers.aspp import ASPPPooling

    size, max_rate = ctx.get("feature_size", 65), ctx.get("max_rate", 72)
    res = run(feature_size=size, rates=tuple(range(1, max_rate + 1)))
    frac = res["mean_valid_fraction"]
    rates = res["rates"]
    ev = Evidence(setup=f"3x3 atrous filter on a {size}x{size} feature map, rates 1..{max_rate} "
                        f"(dltricks.experiments.segmentation.aspp_degeneration); receptive field of the image-pooling "
                        f"branch and of the degenerate 3x3 branch from the input-gradient support.")
    for r in (1, 6, 12, 18, 24, 36, size - 1, max_rate):
        if r in rates:
            ev.values[f"mean valid fraction at rate {r}"] = round(frac[rates.index(r)], 4)
    degenerate = res["degenerate_from_rate"]
    ev.values["rate from which only the centre tap is valid"] = degenerate
    ev.check("valid-weight fraction falls as the rate grows",
             all(b <= a + 1e-12 for a, b in zip(frac, frac[1:])) and frac[-1] < frac[0])
    ev.check("at a rate near the map size the 3x3 filter degenerates to its centre tap",
             degenerate is not None and degenerate <= size)
    channels = 4
    _, pool_mask = centre_support(ASPPPooling(channels, channels, norm_layer=None), in_chans=channels, size=size)
    rate = degenerate or max_rate
    conv = nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, bias=False)
    _, conv_mask = centre_support(conv, in_chans=channels, size=size)
    ev.values.update({"image pooling: input pixels seen by one output": int(pool_mask.sum()),
                      f"3x3 at rate {rate}: input pixels seen by one output": int(conv_mask.sum())})
    ev.check("image pooling sees the whole map", bool(pool_mask.all()))
    ev.check("the degenerate 3x3 branch sees a single pixel", int(conv_mask.sum()) == 1)
    ev.headline = (f"mean valid fraction {frac[0]:.2f} at rate 1 -> {frac[rates.index(24)] if 24 in rates else frac[-1]:.2f} "
                   f"at 24; only the centre tap from rate {degenerate}; image pooling sees {int(pool_mask.sum()):,} px")
    ev.plots.append(plot_aspp_degeneration(res, ctx.path("aspp_degeneration.png")).name)
    return ev


def skip_connections(ctx: Context) -> Evidence:
    """U-Net with vs without skips on ISBI 2012 via :func:`dltricks.experiments.segmentation.skip_ablation`."""
    from dltricks.experiments.segmentation import plot_skip_ablation, skip_ablation

    options = {k: ctx[k] for k in ("base_channels", "steps", "batch_size", "crop_size", "lr") if k in ctx.settings}
    ev = Evidence(setup=f"U-Net with vs without skip connections on the ISBI 2012 membrane slices (25 train / 5 "
                        f"held-out), {options}; accuracy within 2 px of a true boundary vs elsewhere "
                        f"(dltricks.experiments.segmentation.skip_ablation).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = skip_ablation(seed=seed, amp=False, **options)
        for key, name in (("with_skips", "with skips"), ("without_skips", "without skips")):
            run = last["runs"][key]
            ev.add(name, **{m: run[m] for m in ("boundary_accuracy", "interior_accuracy", "boundary_f1", "dice") if m in run})
    ev.plots.append(plot_skip_ablation(last, ctx.path("skips.png")).name)
    return ev


def output_stride(ctx: Context) -> Evidence:
    """DeepLabV3 at output stride 8 vs 32 via :func:`dltricks.experiments.segmentation.output_stride_tradeoff`."""
    from dltricks.experiments.segmentation import output_stride_tradeoff, plot_output_stride

    options = {k: ctx[k] for k in ("encoder", "encoder_kwargs", "steps", "batch_size", "crop_size", "lr")
               if k in ctx.settings}
    strides = tuple(ctx.get("output_strides", (8, 32)))
    ev = Evidence(setup=f"DeepLabV3 at output strides {strides} on ISBI 2012 (trained on random crops of the 25 "
                        f"training slices, boundary F1 on the 5 held-out whole slices), {options} "
                        f"(dltricks.experiments.segmentation.output_stride_tradeoff).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = output_stride_tradeoff(strides, seed=seed, amp=False, **options)
        for s in strides:
            run = last["runs"][str(s)]
            ev.add(f"output stride {s}", **{m: run[m] for m in ("boundary_f1", "dice", "macs_512") if m in run})
    ev.plots.append(plot_output_stride(last, ctx.path("output_stride.png")).name)
    return ev


# --------------------------------------------------------------------------------------------- SPP
def spp_fixed_length(ctx: Context) -> Evidence:
    """Spatial pyramid pooling (:mod:`dltricks.layers.spp`) on inputs of several sizes."""
    from dltricks.layers import spp as spp_module

    cls = next(getattr(spp_module, n) for n in ("SpatialPyramidPool", "SpatialPyramidPooling", "SPP")
               if hasattr(spp_module, n))
    levels = tuple(ctx.get("levels", (1, 2, 4)))
    channels = ctx.get("channels", 8)
    layer = cls(levels)
    sizes = list(ctx.get("sizes", (7, 13, 24, 33, 64)))
    lengths = {}
    for s in sizes:
        with torch.no_grad():
            y = layer(torch.randn(2, channels, s, s + 3))
        lengths[s] = tuple(y.shape)
    expected = channels * sum(n * n for n in levels)
    ev = Evidence(setup=f"{cls.__name__}{levels} on a {channels}-channel map of sizes {sizes} (width = size + 3)")
    ev.values.update({f"output shape at {s}x{s + 3}": str(v) for s, v in lengths.items()})
    ev.check("same output length for every input size", len(set(lengths.values())) == 1)
    ev.check("output length = C x sum of bins^2", all(v[-1] == expected for v in lengths.values()))
    ev.headline = f"output {next(iter(lengths.values()))} for inputs {sizes[0]}..{sizes[-1]} px"
    return ev


# --------------------------------------------------------------------------------------------- SSM
def mamba_adaptive_depth(ctx: Context) -> Evidence:
    """The README's "Mamba adapts depth/width to the input (integrated attention)" against the published
    block, via :func:`dltricks.experiments.ssm.claim_dynamic_depth_width` (forward hooks record which
    modules run and the widths they output, for inputs of different lengths and content)."""
    from dltricks.experiments.ssm import claim_dynamic_depth_width

    res = claim_dynamic_depth_width(d_model=ctx.get("d_model", 64), depth=ctx.get("depth", 2),
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


def selective_copying(ctx: Context) -> Evidence:
    """The Mamba paper's gate ablation on Selective Copying: no-gate S4 vs no-gate S6, via
    :func:`dltricks.experiments.ssm.gate_ablation`."""
    from dltricks.experiments.ssm import SeqTrainConfig, gate_ablation

    seq_len, steps = ctx.get("seq_len", 128), ctx.get("steps", 150)
    num_tokens, vocab, d_model = ctx.get("num_tokens", 16), ctx.get("vocab_size", 16), ctx.get("d_model", 64)
    lr, warmup = ctx.get("lr", 2e-3), ctx.get("warmup", 100)
    ev = Evidence(setup=f"Selective Copying ({num_tokens} tokens to recall, vocabulary {vocab}, length {seq_len}); "
                        f"2-layer models, d_model {d_model}, {steps} AdamW steps of batch 32 (peak lr {lr:g}, {warmup} "
                        f"warm-up steps); token accuracy on fresh sequences (dltricks.experiments.ssm.gate_ablation).")
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        cfg = SeqTrainConfig(steps=steps, batch_size=32, seq_len=seq_len, lr=lr, warmup=warmup, eval_every=0,
                             target_accuracy=None, seed=seed)
        res = gate_ablation(configs=("S4 (no gate)", "S6 (no gate)"), d_model=d_model, seq_len=seq_len,
                            num_tokens=num_tokens, vocab_size=vocab, train=cfg, log=None)
        ev.add("S4", accuracy=res["models"]["S4 (no gate)"]["accuracy"])
        ev.add("S6", accuracy=res["models"]["S6 (no gate)"]["accuracy"])
    ev.values["chance accuracy"] = round(1 / (vocab - 2), 4)  # data tokens: the vocabulary minus noise and marker
    from dltricks.tips import plots

    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="token accuracy", title="Selective Copying, no gate"))
    return ev


_H2: dict[tuple, dict[str, Any]] = {}


def _h2(mixer: str, tasks: tuple[str, ...], quick: bool, steps: int | None) -> dict[str, Any]:
    """h2_sequence for one mixer (each mixer is trained from seed 0 on its own, so results do not depend on
    which other mixers run); memoised so H2 and the attention tip share the Gated CNN runs."""
    from dltricks.experiments.ssm import h2_sequence

    key = (mixer, tasks, quick, steps)
    if key not in _H2:
        _H2[key] = h2_sequence(mixers=(mixer,), tasks=tasks, quick=quick, steps=steps, log=None)
    return _H2[key]


def _h2_evidence(ctx: Context, mixers: dict[str, str], what: str) -> Evidence:
    from dltricks.experiments.ssm import H2_SETTINGS

    tasks = tuple(ctx.get("tasks", ("selective_copying",)))
    quick = bool(ctx.get("quick", False))
    steps = ctx.get("steps")
    table = H2_SETTINGS["quick" if quick else "full"]
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
    from dltricks.tips import plots

    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="accuracy (one dot per task)", title=what))
    return ev


def attention_long_range(ctx: Context) -> Evidence:
    """Causal attention vs the causal Gated CNN (kernel 4) on long-range recall tasks."""
    return _h2_evidence(ctx, {"attention": "attention", "gated_cnn": "Gated CNN"}, "attention vs gated CNN")


def mambaout_h2(ctx: Context) -> Evidence:
    """H2: Mamba vs the Gated CNN (the same block without its SSM) on long causal tasks."""
    return _h2_evidence(ctx, {"mamba": "Mamba", "gated_cnn": "Gated CNN"}, "Mamba vs gated CNN")


def h1_mnist_models() -> dict[str, tuple[Any, dict[str, Any]]]:
    """The four H1 families scaled down for 28x28 grey images (quick mode), 126-158 k parameters each
    at 10 classes: ViM and ViT cut 7x7 patches (4x4 tokens), MambaOut's stem and ConvNeXt's patchify stem
    bring the image to 7x7 before their stages. Same ``(build, settings)`` format as
    :func:`dltricks.experiments.ssm.h1_models`."""
    from dltricks.models.convnext import ConvNeXt
    from dltricks.models.mambaout import MambaOut
    from dltricks.models.vim import VisionMamba
    from dltricks.models.vit import VisionTransformer

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
    from dltricks.experiments.ssm import h1_vision

    data = ctx.get("data", "cifar10")
    options = {k: ctx[k] for k in ("epochs", "batch_size", "subset", "val_subset") if k in ctx.settings}
    if data == "mnist-embedded":
        zoo = h1_mnist_models()
        models = {label: zoo[label] for label in labels}
        ev = Evidence(setup=f"{what} on the embedded MNIST split (28x28 grey digits, no augmentation), {options}, "
                            f"{_H1_RECIPE}; the same model families scaled down to 0.13-0.16 M parameters "
                            f"(dltricks.experiments.ssm.h1_vision with "
                            f"dltricks.tips.experiments.wired.h1_mnist_models). A short-budget check of the "
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
                from dltricks.tasks.base import build_task

                task = build_task("mnist-embedded", batch_size=options.get("batch_size", 64), eval_batch_size=500,
                                  seed=seed, subset=options.get("subset"), val_subset=options.get("val_subset"))
                run_options = {k: v for k, v in options.items() if k in ("epochs", "batch_size")}
            else:
                run_options = options
            _H2[key] = h1_vision(models=models, seed=seed, task=task, log=None, **run_options)
        for label, run in _H2[key]["models"].items():
            ev.add(label, val_acc=run["val_accuracy"], params=run["params"])
    from dltricks.tips import plots

    ev.plots.append(plots.bar_plot(ctx.path("val_acc.png"), {a: m["val_acc"] for a, m in ev.arms.items()},
                                   ylabel="validation accuracy", title=what))
    return ev


def mambaout_h1(ctx: Context) -> Evidence:
    """H1: MambaOut (Gated CNN, no SSM) vs Vision Mamba at matched parameters."""
    return _h1_evidence(ctx, ("MambaOut", "ViM"), "MambaOut vs Vision Mamba")


def cnn_vs_vit(ctx: Context) -> Evidence:
    """A ConvNeXt-style CNN vs a ViT of similar size, trained from scratch on little data."""
    return _h1_evidence(ctx, ("ConvNeXt", "ViT"), "ConvNeXt vs ViT")


# --------------------------------------------------------------------------------------------- Transformers
_DATES: dict[tuple, dict[str, Any]] = {}


def _dates_run(ctx: Context, *, norm_first: bool, warmup: int, seed: int) -> dict[str, Any]:
    """One transformer_tiny run on the dates task (:func:`dltricks.experiments.attention.train_dates`),
    memoised so the warm-up and pre-LN tips share their common post-LN run."""
    from dltricks.experiments.attention import DatesConfig, train_dates

    steps, lr, batch = ctx.get("steps", 600), ctx.get("lr", 3e-3), ctx.get("batch_size", 128)
    train_size, val_size = ctx.get("train_size", 20000), ctx.get("val_size", 1000)
    model_kwargs: dict[str, Any] = {"norm_first": norm_first}
    if "drop_rate" in ctx.settings:
        model_kwargs["drop_rate"] = ctx["drop_rate"]
    key = (norm_first, warmup, seed, steps, lr, batch, train_size, val_size, tuple(sorted(model_kwargs.items())))
    if key not in _DATES:
        ctx.report(f"{'pre' if norm_first else 'post'}-LN, warm-up {warmup}, seed {seed}")
        cfg = DatesConfig(model="transformer_tiny", steps=steps, lr=lr, warmup=warmup, seed=seed, batch_size=batch,
                          train_size=train_size, val_size=val_size, eval_every=0, model_kwargs=model_kwargs)
        _DATES[key] = train_dates(cfg, log=None)[1]
    return _DATES[key]


def _dates_setup(ctx: Context, what: str) -> str:
    dropout = f", dropout {ctx['drop_rate']:g}" if "drop_rate" in ctx.settings else ""
    return (f"{what}: transformer_tiny (2+2 layers, width 128{dropout}) on the dates task (human-readable dates -> "
            f"ISO), {ctx.get('steps', 600)} AdamW steps of {ctx.get('batch_size', 128)} samples (from "
            f"{ctx.get('train_size', 20000):,} generated) at peak lr {ctx.get('lr', 3e-3):g}, gradient clipping 1.0; "
            f"greedy exact match on {ctx.get('val_size', 1000):,} dates of held-out days "
            f"(dltricks.experiments.attention.train_dates).")


def transformer_warmup(ctx: Context) -> Evidence:
    """Post-LN Transformer with vs without linear warm-up."""
    warmup = ctx.get("warmup", 100)
    ev = Evidence(setup=_dates_setup(ctx, f"post-LN with {warmup} warm-up steps vs none"))
    for seed in ctx.seeds:
        ev.add("warmup", exact_match=_dates_run(ctx, norm_first=False, warmup=warmup, seed=seed)["exact_match"])
        ev.add("no warmup", exact_match=_dates_run(ctx, norm_first=False, warmup=0, seed=seed)["exact_match"])
    _dates_plot(ctx, ev, "post-LN Transformer: warm-up vs none")
    return ev


def transformer_pre_ln(ctx: Context) -> Evidence:
    """Pre-LN vs post-LN Transformer, both without warm-up."""
    ev = Evidence(setup=_dates_setup(ctx, "pre-LN vs post-LN, no warm-up"))
    for seed in ctx.seeds:
        ev.add("pre-LN", exact_match=_dates_run(ctx, norm_first=True, warmup=0, seed=seed)["exact_match"])
        ev.add("post-LN", exact_match=_dates_run(ctx, norm_first=False, warmup=0, seed=seed)["exact_match"])
    _dates_plot(ctx, ev, "Transformer without warm-up: pre-LN vs post-LN")
    return ev


def _dates_plot(ctx: Context, ev: Evidence, title: str) -> None:
    from dltricks.tips import plots

    ev.plots.append(plots.bar_plot(ctx.path("exact_match.png"), {a: m["exact_match"] for a, m in ev.arms.items()},
                                   ylabel="greedy exact match (held-out days)", title=title))

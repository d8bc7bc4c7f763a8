"""Attention tips: the cost of self-attention and how Transformers train.

Scaling (:func:`attention_scaling`), measured on the attention layers of :mod:`dltricks.layers.attention`:
full self-attention costs O(T^2 D) per layer, a local window O(T w D) and Linformer O(T k D)
(Wang et al. 2020). We time one self-attention layer at growing T and fit the slope of log(time)
against log(T): about 2 for quadratic cost, about 1 for linear cost. Each seed is one timing round.

Warm-up and pre-LN (:func:`transformer_warmup`, :func:`transformer_pre_ln`) train ``transformer_tiny`` on
the dates task with :func:`dltricks.experiments.attention.train_dates`; the two tips share their common
post-LN run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dltricks.evidence import LECTURE, README, AllOf, Context, Effect, Evidence, plots, tip
from dltricks.experiments.attention import DatesConfig, train_dates
from dltricks.layers import attention as attention_layers
from dltricks.layers import transformer as transformer_layers
from dltricks.layers.attention import LinformerSelfAttention, LocalSelfAttention, MultiHeadAttention
from dltricks.measure import time_function
from dltricks.models import transformer as transformer_models

ARCH, NORM = "Architectures", "Normalisation and optimisation"


def _slope(lengths: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(length)."""
    xs, ys = [math.log(n) for n in lengths], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@tip(id="arch.efficient-attention", title="Efficient attention cuts the quadratic cost",
     claim="The time of full self-attention grows about quadratically with sequence length; local-window and "
           "Linformer attention grow about linearly (log-log slope smaller by at least 0.5).",
     cite=(README.at(183, 184, "sparse attention, Linformer: below quadratic"),
           LECTURE.at(379, 381, "self-attention costs O(n^2)"), LECTURE.at(404, 408, "restricted self-attention")),
     source="Beltagy et al. 2020; Wang et al. 2020", section=ARCH,
     exercises=(attention_layers, time_function),
     quick={"lengths": [512, 1024, 2048, 4096], "repeats": 3, "min_time": 0.02},
     full={"lengths": [512, 1024, 2048, 4096, 8192], "repeats": 5, "min_time": 0.05},
     seeds={"quick": 3, "full": 5}, budget_s=12, metrics={"slope": "d log(time) / d log(T)"},
     rule=AllOf((Effect("slope", "full attention", "local window 32", min_effect=0.5),
                 Effect("slope", "full attention", "Linformer k=64", min_effect=0.5))))
def attention_scaling(ctx: Context) -> Evidence:
    lengths = list(ctx.get("lengths", (512, 1024, 2048, 4096)))
    dim, heads = ctx.get("embed_dim", 64), ctx.get("num_heads", 4)
    window, proj = ctx.get("window", 32), ctx.get("proj_len", 64)
    layers = {
        "full attention": MultiHeadAttention(dim, heads),
        f"local window {window}": LocalSelfAttention(dim, heads, window=window),
        f"Linformer k={proj}": LinformerSelfAttention(dim, heads, seq_len=max(lengths), proj_len=proj),
    }
    ev = Evidence(setup=f"one self-attention layer (D={dim}, {heads} heads), batch 1, inference, lengths {lengths}; "
                        f"time = CPU time on one thread, median of timed blocks (dltricks.measure.time_function, "
                        f"robust to other processes); slope = d log(time) / d log(T).")
    curves: dict[str, list[list[float]]] = {name: [] for name in layers}
    with torch.inference_mode():
        for seed in ctx.seeds:
            torch.manual_seed(seed)
            for name, layer in layers.items():
                layer.eval()
                times = []
                for n in lengths:
                    x = torch.randn(1, n, dim)
                    repeats = ctx.get("repeats", 3)
                    times.append(time_function(lambda: layer(x), min_run_time=ctx.get("min_time", 0.02) * repeats,
                                               min_runs=repeats, warmup=2, cpu_time=True).median)
                ev.add(name, slope=_slope(lengths, times), ms_at_max_length=times[-1] * 1e3)
                curves[name].append([t * 1e3 for t in times])
    ev.plots.append(plots.curve_plot(ctx.path("scaling.png"), curves, x=lengths, xlabel="sequence length T",
                                     ylabel="ms per layer", title="self-attention time vs length (log-log)", log=True))
    ev.headline = ", ".join(f"{name}: slope {sum(a['slope']) / len(a['slope']):.2f}" for name, a in ev.arms.items())
    return ev


# --------------------------------------------------------------------------------------------- Transformers
_DATES: dict[tuple, dict[str, Any]] = {}


def _dates_run(ctx: Context, *, norm_first: bool, warmup: int, seed: int) -> dict[str, Any]:
    """One transformer_tiny run on the dates task (:func:`dltricks.experiments.attention.train_dates`),
    memoised so the warm-up and pre-LN tips share their common post-LN run."""
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


DATES_CODE = (train_dates, transformer_models, transformer_layers)


@tip(id="optim.warmup-transformers", title="Warmup stabilises Transformers",
     claim="With the same peak learning rate, a post-LN Transformer trained with linear learning-rate warm-up "
           "ends more accurate than without. (Quick mode: 150 steps of 32 dates, no dropout.)",
     cite=README.at(192, 193, "learning-rate warm-up stabilises early training"),
     source="Xiong et al. 2020; Vaswani et al. 2017", section=NORM, exercises=DATES_CODE,
     quick={"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup": 40, "train_size": 4800, "val_size": 100,
            "drop_rate": 0.0},
     full={"steps": 600, "lr": 3e-3, "warmup": 100, "train_size": 20000}, budget_s=60,
     seeds={"quick": 3, "full": 5}, shares="dates", may_fail=("no warmup",),
     rule=Effect("exact_match", "warmup", "no warmup", min_effect=0.02))
def transformer_warmup(ctx: Context) -> Evidence:
    """Post-LN Transformer with vs without linear warm-up."""
    warmup = ctx.get("warmup", 100)
    ev = Evidence(setup=_dates_setup(ctx, f"post-LN with {warmup} warm-up steps vs none"))
    for seed in ctx.seeds:
        ev.add("warmup", exact_match=_dates_run(ctx, norm_first=False, warmup=warmup, seed=seed)["exact_match"])
        ev.add("no warmup", exact_match=_dates_run(ctx, norm_first=False, warmup=0, seed=seed)["exact_match"])
    _dates_plot(ctx, ev, "post-LN Transformer: warm-up vs none")
    return ev


@tip(id="optim.pre-ln", title="Pre-LN vs post-LN",
     claim="Without warm-up, a pre-LN Transformer trains better than the same post-LN Transformer. (Quick mode: "
           "150 steps of 32 dates, no dropout; the post-LN run is shared with optim.warmup-transformers.)",
     cite=README.at(194, 195, "layer norm before the residual connection: more stable"),
     source="Xiong et al. 2020", section=NORM, exercises=DATES_CODE,
     quick={"steps": 150, "batch_size": 32, "lr": 3e-3, "train_size": 4800, "val_size": 100, "drop_rate": 0.0},
     full={"steps": 600, "lr": 3e-3, "train_size": 20000}, budget_s=30,
     seeds={"quick": 3, "full": 5}, shares="dates", may_fail=("post-LN",),
     rule=Effect("exact_match", "pre-LN", "post-LN", min_effect=0.02))
def transformer_pre_ln(ctx: Context) -> Evidence:
    """Pre-LN vs post-LN Transformer, both without warm-up."""
    ev = Evidence(setup=_dates_setup(ctx, "pre-LN vs post-LN, no warm-up"))
    for seed in ctx.seeds:
        ev.add("pre-LN", exact_match=_dates_run(ctx, norm_first=True, warmup=0, seed=seed)["exact_match"])
        ev.add("post-LN", exact_match=_dates_run(ctx, norm_first=False, warmup=0, seed=seed)["exact_match"])
    _dates_plot(ctx, ev, "Transformer without warm-up: pre-LN vs post-LN")
    return ev


def _dates_plot(ctx: Context, ev: Evidence, title: str) -> None:
    steps, batch = ctx.get("steps", 600), ctx.get("batch_size", 128)
    ev.budget = {"optimizer steps": steps, "sequences seen": steps * batch,
                 "held-out dates evaluated": ctx.get("val_size", 1000)}
    ev.plots.append(plots.bar_plot(ctx.path("exact_match.png"), {a: m["exact_match"] for a, m in ev.arms.items()},
                                   ylabel="greedy exact match (held-out days)", title=title))

"""Does attention matter? Dates -> ISO with and without attention, plus the alignment heat-map.

The experiment trains RNN encoder-decoders (:mod:`dltricks.models.seq2seq`) on the generated dates task
(:mod:`dltricks.data.dates`: 57 formats, 5 languages, validation on held-out *days*) with the same
budget and reports exact-match accuracy of greedy decoding on the validation set, overall and per format
group. ``plot_alignment`` draws the attention weights α_tj of a trained model: rows are output characters,
columns input characters; a sharp alignment (year digits -> year digits, month name -> month digits)
is the classic picture of Bahdanau et al. (2015, Fig. 3).

Recorded (``python -m dltricks.experiments.attention --seeds 0,1,2 --models
seq2seq_gru_additive,seq2seq_gru_general,seq2seq_gru_noattn``; 800 steps of 128 samples, 3 seeds; greedy
exact match on 2,000 samples of held-out days): additive attention 100.00 ± 0.00 %, Luong general
99.83 ± 0.10 %, no attention 98.20 ± 0.09 % (its errors are almost all in the numeric formats: 90.7 %
there). Details, curves and the heat-map: docs/attention.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.config import to_dict
from dltricks.tasks.dates import evaluate_dates, translate
from dltricks.train import fit, prepare
from dltricks.train.recipe import Recipe, load_recipe
from dltricks.utils.figures import save_figure

__all__ = ["DatesConfig", "train_dates", "evaluate_dates", "attention_experiment", "plot_alignment",
           "plot_training_curves", "EXAMPLES"]

# Inputs used for the heat-maps: several languages and formats of the same kind of date.
EXAMPLES = ("Saturday 9 May 1998", "9 mai 1998", "09/05/98", "Samstag, 9. Mai 1998", "the 21st of March 2031",
            "mercredi 1er août 1973")


@dataclass
class DatesConfig:
    """One training run on the dates task: the shipped recipe ``dates-seq2seq`` plus these settings (units in
    comments). ``train_dates`` turns it into a recipe and trains with :func:`dltricks.train.fit`."""

    model: str = "seq2seq_gru_additive"  # registry name
    steps: int = 800  # optimiser steps (about 2 epochs of the 50,000 training samples)
    batch_size: int = 128  # samples per step
    lr: float = 3e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4
    warmup: int = 100  # steps of linear warm-up, then cosine decay to 0
    clip: float = 1.0  # gradient-norm clipping
    embed_dim: int = 64
    hidden_size: int = 128
    train_size: int = 50_000  # generated training samples (training days only)
    val_size: int = 2_000  # generated validation samples (held-out days)
    seed: int = 0  # model init and batch order
    data_seed: int = 0  # generated data
    eval_every: int = 1  # epochs of the training dates between greedy validations (0: only after the last step)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> Recipe:
        """The ``dates-seq2seq`` recipe with this run's settings."""
        return load_recipe("dates-seq2seq", [
            f"train.steps={self.steps}", f"train.batch_size={self.batch_size}", f"optim.lr={self.lr!r}",
            f"optim.weight_decay={self.weight_decay!r}", f"schedule.warmup_steps={self.warmup}",
            f"train.grad_clip={self.clip!r}", f"train.seed={self.seed}", "train.device=cpu",
            f"data.train_size={self.train_size}", f"data.val_size={self.val_size}", f"data.data_seed={self.data_seed}",
            f"train.eval_every={self.eval_every or self.steps}"])


def train_dates(cfg: DatesConfig, *, log: Callable[[str], None] | None = print,
                progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``cfg.model`` on the dates task with ``fit``; returns the model and a dict of results.

    The results hold the final greedy exact match on the held-out days, per-group accuracies, the
    training time (s), parameter count and the history [(step, train loss, val exact match)], one point per
    evaluation (the end of each epoch of the training dates and the last step).
    """
    recipe = cfg.recipe()
    model, task = prepare(cfg.model, "dates", recipe,
                          model_kwargs={**_size_kwargs(cfg), **cfg.model_kwargs})
    result = fit(model, task, recipe, progress=progress)
    model = result.model or model
    final = evaluate_dates(model, task.val_loader.dataset)
    history = [(r["step"], r["train_loss"], r.get("val_exact_match")) for r in result.history]
    if log:
        for step, loss, em in history:
            log(f"{cfg.model} step {step:5d}  loss {loss:.4f}  val exact match {em:.4f}")
    results = {
        "model": cfg.model, "exact_match": final["exact_match"], "per_group": final["per_group"],
        "errors": final["errors"][:10], "train_time_s": sum(r["train_time_s"] for r in result.history),
        "steps": result.history[-1]["step"], "epochs": len(result.history),
        "params": sum(p.numel() for p in model.parameters()), "history": history, "config": asdict(cfg),
        "recipe": to_dict(recipe), "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    return model, results


def _size_kwargs(cfg: DatesConfig) -> dict[str, int]:
    if cfg.model.startswith("seq2seq"):
        return {"embed_dim": cfg.embed_dim, "hidden_size": cfg.hidden_size}
    return {}


def attention_experiment(models: Sequence[str] = ("seq2seq_gru_additive", "seq2seq_gru_noattn"), *,
                         seeds: Sequence[int] = (0,), out_dir: str | Path | None = None,
                         log: Callable[[str], None] | None = print, **overrides: Any) -> dict[str, Any]:
    """Train each model with each seed under the same :class:`DatesConfig` (``overrides`` change fields);
    returns per-run results and, per model, the mean and std of exact match. With ``out_dir`` the
    alignment heat-map of the first attention model and the training curves are saved there as PNG."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    plotted = False
    for name in models:
        for seed in seeds:
            cfg = DatesConfig(model=name, seed=seed, **overrides)
            model, result = train_dates(cfg, log=log)
            runs[name].append(result)
            if out_dir is not None and not plotted and getattr(model, "attention_kind", "none") != "none":
                plot_alignment(model, EXAMPLES, Path(out_dir) / "attention_dates_alignment.png")
                plotted = True
    summary = {}
    for name, results in runs.items():
        ems = torch.tensor([r["exact_match"] for r in results], dtype=torch.float64)
        summary[name] = {"exact_match_mean": ems.mean().item(),
                         "exact_match_std": ems.std().item() if len(ems) > 1 else 0.0,
                         "train_time_s_mean": sum(r["train_time_s"] for r in results) / len(results),
                         "params": results[0]["params"]}
    if out_dir is not None:
        plot_training_curves(runs, Path(out_dir) / "attention_dates_curves.png")
    return {"summary": summary, "runs": dict(runs)}


def plot_alignment(model: nn.Module, texts: Sequence[str], path: str | Path, *, columns: int = 3) -> Path:
    """Heat-maps of the attention weights of ``model`` translating ``texts`` (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs, attn = translate(model, texts)
    if attn is None:
        raise ValueError(f"{type(model).__name__} has no attention to plot")
    rows = math.ceil(len(texts) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    for ax, text, out, weights in zip(axes.flat, texts, outputs, attn):
        out_chars = list(out) + ["<eos>"]
        w = weights[:len(out_chars), :len(text)].cpu().numpy()  # (T_out, S)
        ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(text)), [c if c != " " else "␣" for c in text], fontsize=7)
        ax.set_yticks(range(len(out_chars)), out_chars, fontsize=7)
        ax.set_title(f"{text!r} -> {out}", fontsize=8)
    for ax in list(axes.flat)[len(texts):]:
        ax.axis("off")
    fig.suptitle(f"{getattr(model, 'model_name', type(model).__name__)}: attention weights "
                 "(rows: output characters, columns: input characters)", fontsize=9)
    return save_figure(fig, path)


def plot_training_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Validation exact match (left) and error rate 1 − exact match on a log scale (right) against steps,
    one colour per model, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for color, (name, results) in enumerate(runs.items()):
        for i, r in enumerate(results):
            steps = [h[0] for h in r["history"]]
            ems = [h[2] for h in r["history"]]
            label = f"{name} ({len(results)} seeds)" if i == 0 else None
            ax.plot(steps, ems, marker="o", label=label, color=f"C{color}", alpha=0.8)
            # A run with no error is drawn at half an error (1 / (2N)) so it stays on the log axis.
            floor = 0.5 / r.get("config", {}).get("val_size", 2000)
            ax_err.plot(steps, [max(1 - e, floor) for e in ems], marker="o", label=label, color=f"C{color}", alpha=0.8)
    ax.set_ylabel("exact match, held-out days (greedy)")
    ax.set_ylim(0, 1.0)
    ax_err.set_yscale("log")
    ax_err.set_ylabel("error rate (1 − exact match); 0 drawn at 1/(2N)")
    for a in (ax, ax_err):
        a.set_xlabel("optimiser step")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    return save_figure(fig, path)


if __name__ == "__main__":  # pragma: no cover - the recorded run
    import argparse
    import json

    parser = argparse.ArgumentParser(description="dates -> ISO with and without attention")
    parser.add_argument("--models", default="seq2seq_gru_additive,seq2seq_gru_noattn")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=DatesConfig.steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = attention_experiment(args.models.split(","), seeds=[int(s) for s in args.seeds.split(",")],
                                  out_dir=args.out, steps=args.steps)
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        from dltricks.utils.io import atomic_write_json

        atomic_write_json(args.json, result)

"""Compare models on accuracy, size, compute, speed and memory: the engine of ``dltricks compare``.

:func:`compare_models` trains each model with :func:`dltricks.train.fit` (or evaluates given
weights), then measures it with :func:`~dltricks.measure.profile.profile_model` on the same machine
in the same process, so the speed columns are comparable. :func:`write_leaderboard` writes the table
as Markdown, CSV and JSON; :func:`plot_leaderboard` draws accuracy vs latency, MACs vs measured
latency (pairs whose MACs order and latency order disagree are joined by a red line: the lecture's
"FLOPs are not speed") and parameters vs peak training memory ("parameter count is not memory").
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dltricks.measure.calibration import calibration_report, collect_logits
from dltricks.measure.profile import ProfileReport, environment, profile_model
from dltricks.utils.io import atomic_write_json, atomic_write_text
from dltricks.utils.figures import save_figure

__all__ = ["COLUMNS", "row_from_report", "disagreeing_pairs", "write_leaderboard", "plot_leaderboard",
           "compare_models", "leaderboard_markdown"]

# (key, header, format) of the leaderboard columns, in order.
COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", "{}"),
    ("accuracy", "val accuracy", "{:.2%}"),
    ("dice", "val Dice", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("ece", "ECE (15 bins)", "{:.2%}"),
    ("params", "params", "{:,}"),
    ("macs", "MACs", "{:,}"),
    ("latency_ms", "latency b1 (ms)", "{:.3f}"),
    ("latency_iqr_ms", "IQR (ms)", "{:.3f}"),
    ("throughput", "throughput (/s)", "{:,.1f}"),
    ("batch", "batch", "{}"),
    ("peak_inference_mib", "peak mem infer (MiB)", "{:.1f}"),
    ("peak_train_mib", "peak mem train (MiB)", "{:.1f}"),
    ("train_time_s", "train time (s)", "{:.1f}"),
]


def row_from_report(report: ProfileReport, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One leaderboard row from a profile report and evaluation metrics."""
    metrics = dict(metrics or {})
    row: dict[str, Any] = {"model": report.model, "params": report.params.total, "macs": report.flops.macs,
                           "batch": report.batch}
    if report.speed is not None:
        row["latency_ms"] = report.speed.latency.median * 1e3
        row["latency_iqr_ms"] = report.speed.latency.iqr * 1e3
        row["throughput"] = report.speed.throughput
    if "inference" in report.memory:
        row["peak_inference_mib"] = report.memory["inference"].peak_bytes / 2**20
    if "train" in report.memory:
        row["peak_train_mib"] = report.memory["train"].peak_bytes / 2**20
    for key in ("accuracy", "dice", "val_loss", "ece", "train_time_s", "epochs"):
        if metrics.get(key) is not None:
            row[key] = metrics[key]
    return row


def disagreeing_pairs(rows: Sequence[Mapping[str, Any]], x: str = "macs",
                      y: str = "latency_ms") -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` where ``a`` has more ``x`` than ``b`` but less ``y``: the orders disagree."""
    pairs = []
    for a, b in itertools.combinations(rows, 2):
        if a.get(x) is None or b.get(x) is None or a.get(y) is None or b.get(y) is None:
            continue
        dx, dy = a[x] - b[x], a[y] - b[y]
        if dx * dy < 0:
            first, second = (a, b) if dx > 0 else (b, a)
            pairs.append((first["model"], second["model"]))
    return pairs


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]], *, title: str = "Leaderboard",
                         notes: Sequence[str] = ()) -> str:
    columns = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if k == "model" else "---:" for k, _, _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in columns) + " |")
    pairs = disagreeing_pairs(rows)
    lines.append("")
    if pairs:
        by_name = {r["model"]: r for r in rows}

        def noise(a: str, b: str) -> str:
            ra, rb = by_name[a], by_name[b]
            spread = 0.5 * ((ra.get("latency_iqr_ms") or 0.0) + (rb.get("latency_iqr_ms") or 0.0))
            gap = abs(ra["latency_ms"] - rb["latency_ms"])
            return "beyond the timing spread" if gap > spread else "within the timing spread"

        lines.append("MACs order vs measured latency order disagree for: " + "; ".join(
            f"{a} has more MACs than {b} but is faster ({noise(a, b)})" for a, b in pairs) + ".")
    else:
        lines.append("MACs order and measured latency order agree for every pair.")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def write_leaderboard(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, *, title: str = "Leaderboard",
                      notes: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv", "json": out / "leaderboard.json"}
    atomic_write_text(paths["markdown"], leaderboard_markdown(rows, title=title, notes=notes))
    keys = [k for k, _, _ in COLUMNS if any(r.get(k) is not None for r in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_json(paths["json"], {"rows": list(rows), "disagreeing_macs_latency": disagreeing_pairs(rows),
                                      **dict(extra or {})})
    return paths


def plot_leaderboard(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Three PNGs: accuracy vs latency, MACs vs measured latency (disagreeing pairs in red), params vs
    peak training memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def scatter(x: str, y: str, xlabel: str, ylabel: str, name: str, title: str,
                pairs: Sequence[tuple[str, str]] = (), logx: bool = False) -> None:
        points = [(r["model"], r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
        if not points:
            return
        fig, ax = plt.subplots(figsize=(5.4, 4.2))
        where = {m: (a, b) for m, a, b in points}
        for i, (a, b) in enumerate(pairs):
            if a in where and b in where:
                (x0, y0), (x1, y1) = where[a], where[b]
                ax.plot([x0, x1], [y0, y1], "--", color="tab:red", linewidth=1,
                        label="MACs and latency orders disagree" if i == 0 else None)
        ax.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue", zorder=3)
        for m, a, b in points:
            ax.annotate(m, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        if pairs:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        paths[name.removesuffix(".png")] = save_figure(fig, out / name)

    scatter("latency_ms", "accuracy", "latency at batch 1 (ms, median)", "validation accuracy",
            "accuracy_vs_latency.png", "Accuracy vs latency")
    scatter("macs", "latency_ms", "MACs per image", "latency at batch 1 (ms, median)", "macs_vs_latency.png",
            "MACs vs measured latency", pairs=disagreeing_pairs(rows), logx=True)
    scatter("params", "peak_train_mib", "parameters", "peak memory of a training step (MiB)",
            "params_vs_memory.png", "Parameters vs peak training memory", logx=True)
    return paths


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compare_models(names: Sequence[str], task: Any, recipe: Any, *, out_dir: str | Path, train: bool = True,
                   weights: Mapping[str, str] | None = None, batch: int | None = None, quick: bool = False,
                   device: str | torch.device | None = None, seed: int | None = None,
                   log: Callable[[str], None] | None = None, progress: bool | None = None,
                   model_opts: Mapping[str, Any] | None = None,
                   run_meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train (or load) and evaluate each model on ``task``, measure it, and write the leaderboard.

    Args:
        names: registered model names.
        task: a :class:`dltricks.tasks.base.Task` (shared by all models: the loaders are pure functions of
            seed and epoch, so every model sees the same batches).
        recipe: the training :class:`~dltricks.train.recipe.Recipe`.
        out_dir: where ``<model>/`` run directories, the leaderboard files and the plots go.
        train: ``False`` evaluates instead (with ``weights[name]`` when given, else the untrained model).
        batch: batch size of the throughput/memory measurements (default: the recipe's batch size).
        quick: short timings (tests).
        run_meta: more of what each model's run directory records (``dltricks compare`` gives the data record,
            so that ``dltricks eval`` finds the data of each run).
    Returns:
        the leaderboard rows.
    """
    from dltricks.train import check_compatible, evaluate, fit, load_weights, model_for_task

    out = Path(out_dir)
    weights = dict(weights or {})
    dev = _resolve_device(device)
    seed = recipe.train.seed if seed is None else seed
    batch = batch or recipe.train.batch_size
    rows: list[dict[str, Any]] = []
    for name in names:
        # Built as prepare builds it (sized for the task, seeded), then checked against the data.
        model, kwargs = model_for_task(name, task, model_kwargs=model_opts, seed=seed)
        check_compatible(model, task)
        metrics: dict[str, Any] = {}
        if train:
            if log:
                log(f"[{name}] training for {recipe.train.epochs} epoch(s)")
            result = fit(model, task, recipe, run_dir=out / name, progress=progress, log=log,
                         meta={"model": name, "model_kwargs": kwargs, "data": {"name": task.name},
                               **dict(run_meta or {})})
            model = result.model
            metrics.update({"train_time_s": result.final.get("time_s"), "epochs": result.final.get("epochs")})
        elif name in weights:
            load_weights(model, weights[name])
        model = model.to(dev).eval()
        if task.val_loader is not None:
            scores = evaluate(model, task.val_loader, task, device=dev)
            metrics["accuracy"] = scores.get("accuracy")
            metrics["dice"] = scores.get("dice")  # segmentation tasks (foreground Dice)
            metrics["val_loss"] = scores.get("loss")
            if task.num_classes and task.num_classes > 1:
                logits, labels = collect_logits(model, task.val_loader.iter_epoch(0), device=dev)
                if logits.dim() == 2:
                    metrics["ece"] = calibration_report(logits, labels).ece
        if log:
            log(f"[{name}] measuring")
        input_size = tuple(task.input_shape) if task.input_shape else None
        model.model_name = name  # type: ignore[attr-defined]
        report = profile_model(model, input_size=input_size, batch=batch, device=dev, quick=quick,
                               receptive_field=False)
        report.model = name
        rows.append(row_from_report(report, metrics))
    notes = [f"measured on {environment(dev)['processor']} ({dev}), torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), {environment(dev)['date']}",
             "latency: median over torch.utils.benchmark blocks at batch 1 after warm-up; throughput: batch N / "
             "median batch-N time; peak memory: CUDA allocator peak or, on CPU, torch.profiler allocation events",
             "MACs = FLOPs / 2 from torch.utils.flop_counter (convolutions, matrix products, attention)"]
    if train:
        notes.append(f"trained with dltricks.train.fit, {recipe.train.epochs} epoch(s), seed {seed}, data {task.name}")
    write_leaderboard(rows, out, title=f"Leaderboard on {task.name}", notes=notes,
                      extra={"env": environment(dev)})
    plot_leaderboard(rows, out)
    atomic_write_json(out / "compare_config.json", {"models": list(names), "data": task.name, "train": train,
                                                    "batch": batch, "quick": quick, "seed": seed,
                                                    "weights": weights})
    return rows


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``leaderboard.json``."""
    return json.loads(Path(path).read_text())["rows"]

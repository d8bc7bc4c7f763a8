"""Compress a trained model with several methods and measure every variant side by side.

:func:`compress_model` makes each variant (:data:`METHODS`), evaluates it on the task's validation/test
split, and measures, in one process on one thread:

* accuracy (and loss) on the evaluation split;
* size on disk of the variant's file: safetensors for every PyTorch variant (int8 ones as integers, scales and
  zero points, :mod:`dltricks.compress.storage`; no pickle), the ``.onnx`` file for ONNX;
* parameters and non-zero parameters (of the float model a quantized variant was made from), MACs per
  image (:func:`dltricks.measure.count_macs`, dense: zeros count);
* latency at batch 1 and 32: median and IQR of CPU time per call on one thread
  (:func:`dltricks.measure.time_function` over :mod:`torch.utils.benchmark`), for PyTorch eager, int8 and
  onnxruntime (one intra-op thread) alike.

:func:`compress_run` does it for a run directory written by ``dltricks train`` (model and data rebuilt
from its metadata) and writes ``compress.md``/``.json``/``.csv`` and ``pareto.png`` (latency vs accuracy,
the Pareto front joined) into one folder, all or nothing: on an error no partial output is left.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.compress.export import export_onnx, onnx_session, quantize_onnx, run_onnx
from dltricks.compress.prune import count_nonzero, prune_channels, prune_finetune, prune_unstructured
from dltricks.compress.quantize import quantize_aware, quantize_dynamic, quantize_static
from dltricks.compress.storage import save_quantized
from dltricks.errors import ConfigError, did_you_mean
from dltricks.measure import count_macs, time_function
from dltricks.tasks import Task
from dltricks.train.checkpoint import save_weights
from dltricks.train.recipe import Recipe
from dltricks.utils.io import atomic_write_json, atomic_write_text

# Methods that train (through fit, from the trained weights): they need a training task and a recipe.
TRAINING_METHODS = ("qat", "prune-finetune")

__all__ = ["METHODS", "TRAINING_METHODS", "Method", "parse_methods", "compress_model", "compress_run",
           "markdown_table", "pareto_front"]

# name -> (needs an amount, what it makes)
METHODS: dict[str, tuple[bool, str]] = {
    "fp32": (False, "the trained model as is (PyTorch eager, float32)"),
    "static-int8": (False, "post-training static int8 (FX graph mode, x86), calibrated on training batches"),
    "dynamic-int8": (False, "post-training dynamic int8 of Linear/LSTM/GRU layers"),
    "prune": (True, "global unstructured L1 magnitude pruning of Conv/Linear weights, e.g. prune:0.8"),
    "prune-layer": (True, "layer-wise unstructured L1 magnitude pruning, e.g. prune-layer:0.8"),
    "channels": (True, "structured L1 channel pruning into a smaller dense model, e.g. channels:0.5"),
    "qat": (False, "quantization-aware fine-tuning from the trained weights through fit (compress.qat), then int8"),
    "prune-finetune": (True, "global L1 pruning to a fraction, fine-tuned through fit with the masks on "
                             "(compress.prune_amounts), e.g. prune-finetune:0.8"),
    "onnx": (False, "ONNX export (dynamo exporter, dynamic batch) run in onnxruntime"),
    "onnx-int8": (False, "onnxruntime's dynamic int8 quantization of the ONNX export"),
}


@dataclass(frozen=True)
class Method:
    name: str
    amount: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.amount is None else f"{self.name}:{self.amount:g}"


def parse_methods(methods: str | Sequence[str]) -> list[Method]:
    """``"fp32,static-int8,channels:0.5"`` (or a list) -> methods; unknown names and bad amounts are errors."""
    items = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not items:
        raise ConfigError(f"--methods: none given; choose from {', '.join(METHODS)}")
    parsed = []
    for item in items:
        name, _, amount = item.partition(":")
        if name not in METHODS:
            raise ConfigError(f"unknown compression method {name!r}.{did_you_mean(name, list(METHODS))} "
                              f"Methods: {', '.join(METHODS)}")
        needs = METHODS[name][0]
        if needs != bool(amount):
            raise ConfigError(f"method {item!r}: " + ("give the fraction to prune, e.g. " + f"{name}:0.5" if needs
                                                     else "takes no amount"))
        value = None
        if amount:
            try:
                value = float(amount)
            except ValueError:
                value = -1.0
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"method {item!r}: the amount must be a fraction in [0, 1)")
        parsed.append(Method(name, value))
    return parsed


class OnnxModule(nn.Module):
    """An onnxruntime session behind ``nn.Module``'s call, so evaluation code treats it like a model."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.session = path, onnx_session(path, threads=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_onnx(self.session, x)


def _evaluate(model: nn.Module, task: Task) -> dict[str, float]:
    from dltricks.train import evaluate

    metrics = evaluate(model, task.val_loader, task, device="cpu")
    return {k: float(v) for k, v in metrics.items() if k in ("loss", "accuracy")}


def _state_size(model: nn.Module, path: Path, method: str) -> int:
    """Write ``model``'s weights to ``path`` (safetensors, int8 ones too) and return its size in bytes."""
    state = model.state_dict()
    name = getattr(model, "model_name", type(model).__name__)
    if all(isinstance(v, torch.Tensor) and not v.is_quantized for v in state.values()):
        save_weights(path, model, {"model": name, "method": method})
    else:  # quantized tensors and packed parameters: integers, scales and zero points as plain tensors
        save_quantized(path, model, {"model": name, "method": method})
    return path.stat().st_size


def _latency(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, min_run_time: float) -> dict[str, float]:
    with torch.inference_mode():
        t = time_function(lambda: fn(x), batch=x.shape[0], min_run_time=min_run_time, warmup=3, min_runs=7,
                          cpu_time=True)
    return {"median_ms": t.median * 1e3, "iqr_ms": t.iqr * 1e3}


def _make(method: Method, model: nn.Module, calibration: list[torch.Tensor], example: torch.Tensor,
          folder: Path, finetune: tuple[Task, Recipe] | None) -> tuple[nn.Module, nn.Module]:
    """``(variant, float model it stands for)`` of one method."""
    if method.name == "fp32":
        return model, model
    if method.name in TRAINING_METHODS:
        if finetune is None:
            raise ConfigError(f"method {method.label!r} fine-tunes the model: give a training task and recipe "
                              "(compress_model(..., finetune=(task, recipe)))")
        task, recipe = finetune
        if method.name == "qat":
            int8, _ = quantize_aware(model, task, recipe)
            return int8.eval(), model
        pruned, _ = prune_finetune(model, task, recipe, [method.amount])
        return pruned.float().eval().cpu(), pruned
    if method.name == "static-int8":
        return quantize_static(model, calibration), model
    if method.name == "dynamic-int8":
        return quantize_dynamic(model), model
    if method.name in ("prune", "prune-layer"):
        pruned = prune_unstructured(model, method.amount, scope="global" if method.name == "prune" else "layer")
        return pruned, pruned
    if method.name == "channels":
        pruned = prune_channels(model, method.amount)
        return pruned, pruned
    onnx_path = export_onnx(model, example, folder / "model.onnx")
    if method.name == "onnx-int8":
        onnx_path = quantize_onnx(onnx_path, folder / "model-int8.onnx")
    return OnnxModule(onnx_path), model


def compress_model(model: nn.Module, task: Task, methods: str | Sequence[str] | Sequence[Method], *,
                   out_dir: str | Path, calibration_batches: int = 8, batches: Sequence[int] = (1, 32),
                   min_run_time: float = 0.3, log: Callable[[str], None] | None = None,
                   finetune: tuple[Task, Recipe] | None = None) -> list[dict[str, Any]]:
    """One row per method (see the module docstring); variant files go to ``out_dir``. ``finetune``: the
    training task and recipe of the methods that train (:data:`TRAINING_METHODS`)."""
    methods = [m if isinstance(m, Method) else parse_methods([m])[0] for m in
               (parse_methods(methods) if isinstance(methods, str) else methods)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    calibration = [x for _, (x, _) in zip(range(calibration_batches), task.train_loader.iter_epoch(0))]
    example = next(iter(task.val_loader.iter_epoch(0)))[0]
    inputs = {b: example[:1].repeat(b, *([1] * (example.dim() - 1))) for b in batches}
    rows = []
    for method in methods:
        folder = out_dir / method.label.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        variant, source = _make(method, model, calibration, example[:2], folder, finetune)
        row: dict[str, Any] = {"method": method.label, **_evaluate(variant, task)}
        if isinstance(variant, OnnxModule):
            row["size_bytes"] = variant.path.stat().st_size
            row["file"] = str(variant.path.relative_to(out_dir))
        else:
            row["size_bytes"] = _state_size(variant, folder / "model.safetensors", method.name)
            row["file"] = str(next(folder.glob("model.*")).relative_to(out_dir))
        row["params"] = sum(p.numel() for p in source.parameters())
        row["nonzeros"] = count_nonzero(source)
        row["macs"] = count_macs(source, example[:1])
        for b, x in inputs.items():
            timing = _latency(variant, x, min_run_time)
            row[f"latency_b{b}_ms"], row[f"latency_b{b}_iqr_ms"] = timing["median_ms"], timing["iqr_ms"]
        rows.append(row)
        if log is not None:
            log(f"{method.label}: accuracy {row.get('accuracy', float('nan')):.4f}, {row['size_bytes'] / 1e3:.1f} kB, "
                f"batch-1 {row['latency_b1_ms']:.3f} ms")
    return rows


def pareto_front(rows: Sequence[dict[str, Any]], *, x: str = "latency_b1_ms", y: str = "accuracy") -> list[str]:
    """Methods no other method beats on both ``x`` (lower is better) and ``y`` (higher is better)."""
    front = []
    for r in rows:
        dominated = any(o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in rows)
        if not dominated:
            front.append(r["method"])
    return front


COLUMNS = (("method", "method", "{}"), ("accuracy", "accuracy", "{:.2%}"), ("size_bytes", "size (kB)", "{:.1f}"),
           ("params", "params", "{:,}"), ("nonzeros", "non-zeros", "{:,}"), ("macs", "MACs", "{:,}"),
           ("latency_b1_ms", "batch 1 (ms)", "{:.3f}"), ("latency_b32_ms", "batch 32 (ms)", "{:.2f}"))


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "size_bytes":
        value = value / 1e3
    text = fmt.format(value)
    iqr = row.get(key.replace("_ms", "_iqr_ms")) if key.startswith("latency") else None
    return f"{text} ± {fmt.format(iqr / 2)}" if iqr is not None else text


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table: latency as median ± IQR/2 of CPU time per call on one thread."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dltricks.utils.figures import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    front = set(pareto_front(rows))
    for r in rows:
        ax.scatter(r["latency_b1_ms"], 100 * r["accuracy"], color="tab:red" if r["method"] in front else "tab:blue")
        ax.annotate(r["method"], (r["latency_b1_ms"], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    pts = sorted((r["latency_b1_ms"], 100 * r["accuracy"]) for r in rows if r["method"] in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, ms (CPU time, 1 thread; log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_report(rows: Sequence[dict[str, Any]], out_dir: Path, *, title: str) -> None:
    """``compress.md``, ``compress.json``, ``compress.csv`` and ``pareto.png`` in ``out_dir``."""
    atomic_write_text(out_dir / "compress.md", f"# {title}\n\n{markdown_table(rows)}\n")
    atomic_write_json(out_dir / "compress.json", {"title": title, "rows": list(rows)})
    buffer = io.StringIO()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "compress.csv", buffer.getvalue())
    _plot(rows, out_dir / "pareto.png", title)


def run_task(meta: dict[str, Any], *, data_dir: str | Path | None = None, val_subset: int | None = None,
             batch_size: int = 64) -> Task:
    """The data a run was trained on (from its metadata), without augmentation."""
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.recipe import load_recipe

    data = meta.get("data") or {}
    name = data.get("name") if isinstance(data, dict) else data
    if not name:
        raise ConfigError("the run's metadata names no data set; it was not written by `dltricks train`")
    recipe = load_recipe({"train": {"batch_size": batch_size, "device": "cpu"},
                          "data": dict(data.get("options") or {}) if isinstance(data, dict) else {}})
    folder = data_dir if data_dir is not None else (data.get("data_dir") if isinstance(data, dict) else None)
    return task_for_recipe(name, recipe, data_dir=folder, for_training=False, val_subset=val_subset,
                           subset=data.get("subset") if isinstance(data, dict) else None)


def finetune_task(run: str | Path, meta: dict[str, Any], *, epochs: int, overrides: Sequence[str] = (),
                  data_dir: str | Path | None = None, val_subset: int | None = None) -> tuple[Task, Recipe]:
    """``(training task, recipe)`` to fine-tune the model of ``run`` on its own data: the run's recipe (its
    ``config.json``; defaults without one) for ``epochs`` epochs on the CPU, ``overrides`` applied last."""
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.recipe import load_recipe

    config = Path(run) / "config.json"
    saved = json.loads(config.read_text()).get("recipe", {}) if config.is_file() else {}
    if not isinstance(saved, dict):
        raise ConfigError(f"{config}: its recipe is not a mapping")
    recipe = load_recipe(saved, [("train.epochs", epochs), ("train.steps", 0), ("train.max_steps", 0),
                                 ("train.device", "cpu"), ("ema.decay", 0.0), ("checkpoint.keep_best", False),
                                 *overrides])
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {"name": meta.get("data")}
    folder = data_dir if data_dir is not None else data.get("data_dir")
    task = task_for_recipe(data.get("name"), recipe, data_dir=folder, data_options=data.get("options") or None,
                           subset=data.get("subset"), val_subset=val_subset)
    return task, recipe


def compress_run(run: str | Path, methods: str | Sequence[str], *, out_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, val_subset: int | None = None, calibration_batches: int = 8,
                 min_run_time: float = 0.3, log: Callable[[str], None] | None = None, finetune_epochs: int = 1,
                 finetune_overrides: Sequence[str] = ()) -> tuple[list[dict[str, Any]], Path]:
    """Compress the model of run directory ``run`` with ``methods``; writes the report and the variants to
    ``out_dir`` (default ``RUN/compress``), which must not hold files yet. Returns ``(rows, out_dir)``.

    The methods that train (:data:`TRAINING_METHODS`) fine-tune from the run's weights through ``fit`` with the
    run's recipe (``RUN/config.json``; the defaults for a bare weights file), ``finetune_epochs`` epochs per
    step, and ``finetune_overrides`` (``"section.key=value"``) on top."""
    from dltricks.train.runs import load_model, resolve_run

    parsed = parse_methods(methods)
    if Path(run).suffix == ".onnx" and Path(run).is_file():
        onnx_session(run)  # a corrupted file: CheckpointError "not a valid ONNX model (...)"
        raise ConfigError(f"{run}: an ONNX file is what compress writes, not what it reads; give the run directory "
                          "(or weights file) the model was trained into")
    resolve_run(run)
    out = Path(out_dir) if out_dir is not None else Path(run) / "compress"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already holds files; choose a new directory")
    model, meta = load_model(run)
    task = run_task(meta, data_dir=data_dir, val_subset=val_subset)
    finetune = None
    if any(m.name in TRAINING_METHODS for m in parsed):
        finetune = finetune_task(run, meta, epochs=finetune_epochs, overrides=finetune_overrides,
                                 data_dir=data_dir, val_subset=val_subset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        rows = compress_model(model, task, parsed, out_dir=tmp, calibration_batches=calibration_batches,
                              min_run_time=min_run_time, log=log, finetune=finetune)
        write_report(rows, tmp, title=f"{meta.get('model')} on {task.name}: compression")
        atomic_write_json(tmp / "run.json", {"run": str(run), "methods": [m.label for m in parsed],
                                             "torch": torch.__version__, "threads": 1})
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads((out / "compress.json").read_text())["rows"], out

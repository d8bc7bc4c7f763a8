"""Run tracking: TensorBoard event files and the run's status, written beside the metrics files.

``metrics.jsonl`` / ``metrics.csv`` / ``result.json`` stay the source of truth of a run; this module only
mirrors them where people like to watch runs live. With ``train.log: tensorboard`` (``dltricks train --log
tensorboard``) :func:`~dltricks.train.fit` writes, on rank 0 only, to ``run_dir/tensorboard/``:

====================  ============================================================================
tag                   what, and its x axis
====================  ============================================================================
``train/loss_step``   the optimised loss of each optimizer step (mean over its micro-batches); step
``train/lr``          the learning rate of that step; step
``train/grad_norm``   the global L2 norm of the gradients, before clipping (unscaled under float16); step
``epoch/<key>``       every number of the epoch's record in ``metrics.jsonl`` (``epoch/val_accuracy``,
                      ``epoch/train_loss``, ``epoch/images_per_s``...); epoch
``hparams/<metric>``  the final and best metrics, linked to the flattened recipe in the HParams tab
``images/confusion``  classification: the row-normalised confusion matrix of the final model on the
                      validation split (at most :data:`MAX_IMAGE_BATCHES` batches)
``images/samples``    classification: validation images with true and predicted class
``images/overlay``    segmentation: a validation slice with the predicted mask in red
====================  ============================================================================

``python -m tensorboard.main --logdir runs`` shows every run below ``runs``.

Status. A run that ends by an exception leaves ``status.json`` (``{"status": "failed" | "interrupted",
"error": ...}``; Ctrl-C counts as interrupted); a run that finishes writes ``result.json`` (see
:func:`read_status` for how ``dltricks runs`` tells finished, interrupted and failed runs apart).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.tasks.base import Task, _logits, classification_metrics
from dltricks.utils.io import atomic_write_json

__all__ = ["RunTracker", "write_status", "read_status", "inference_meta", "flatten", "MAX_IMAGE_BATCHES"]

# The final confusion matrix looks at this many validation batches at most (a bounded cost per run).
MAX_IMAGE_BATCHES = 20
STATUS_FILE = "status.json"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def inference_meta(task: Task) -> dict[str, Any]:
    """What a model needs besides its weights to be run on a new input (stored in ``model.safetensors``):
    the kind of task and the input normalisation of the training split."""
    extra = task.extra or {}
    if extra.get("task_type") == "segmentation":
        kind = "segmentation"
    elif "source_vocab" in extra:
        kind = "seq2seq"
    elif task.in_chans is not None and len(task.input_shape) == 3:
        kind = "classification"
    else:
        kind = "other"
    meta: dict[str, Any] = {"task_kind": kind}
    # The statistics the loaders normalise with: in task.extra for the registered tasks, else on the
    # training loader's data set (a hand-made task over a TensorLoader).
    source = extra if "mean" in extra and "std" in extra else getattr(task.train_loader, "dataset", None)
    mean, std = (source.get("mean"), source.get("std")) if isinstance(source, Mapping) else (
        getattr(source, "mean", None), getattr(source, "std", None))
    normalize = getattr(task.train_loader, "normalize", True)
    if mean is not None and std is not None and normalize is not False:
        meta["normalize"] = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    return meta


# --------------------------------------------------------------------------------------------------
# Status


def write_status(run_dir: Path | None, error: BaseException | None) -> None:
    """Record how a run ended early (``error``) or clear an old record (``None``, at the start of a run)."""
    if run_dir is None:
        return
    path = Path(run_dir) / STATUS_FILE
    if error is None:
        path.unlink(missing_ok=True)
        return
    status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    atomic_write_json(path, {"status": status, "error": f"{type(error).__name__}: {message}"[:2000]})


def read_status(run_dir: Path) -> tuple[str, str | None]:
    """``(status, detail)`` of a run directory.

    * ``finished``: ``result.json`` exists and training was not cut by ``train.max_steps``;
    * ``interrupted``: cut by ``max_steps`` (resumable), stopped by Ctrl-C, or no result at all (killed, or
      still running);
    * ``failed``: the loop raised (NaN loss, a bad checkpoint...); ``detail`` is the error.
    """
    run_dir = Path(run_dir)
    status_file, result_file = run_dir / STATUS_FILE, run_dir / "result.json"
    if status_file.is_file():
        try:
            data = json.loads(status_file.read_text())
            return str(data.get("status", "failed")), data.get("error")
        except (OSError, json.JSONDecodeError):
            return "failed", "unreadable status.json"
    if result_file.is_file():
        try:
            reason = json.loads(result_file.read_text()).get("stop_reason")
        except (OSError, json.JSONDecodeError):
            return "failed", "unreadable result.json"
        if reason == "max_steps":
            return "interrupted", "train.max_steps reached; resumable with --resume"
        return "finished", reason
    return "interrupted", "no result.json (killed, or still running)"


# --------------------------------------------------------------------------------------------------
# TensorBoard


class RunTracker:
    """Writes a run's TensorBoard events (a no-op object when ``kind`` is ``"none"`` or nothing is written).

    The trainer calls :meth:`add_loss` per micro-batch, :meth:`record_grad_norm` and :meth:`step` per
    optimizer step, :meth:`epoch` per epoch record and :meth:`finish` once with the final model.
    """

    def __init__(self, run_dir: Path | None, kind: str = "none") -> None:
        self.writer: Any = None
        self._losses: list[float] = []
        self._grad_norm: float | None = None
        if run_dir is not None and kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # pragma: no cover - tensorboard is a dependency
                from dltricks.errors import ConfigError

                raise ConfigError("train.log=tensorboard needs the tensorboard package (pip install tensorboard)"
                                  ) from err
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), flush_secs=10)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def add_loss(self, value: float) -> None:
        if self.enabled:
            self._losses.append(value)

    @torch.no_grad()
    def record_grad_norm(self, params: Iterable[torch.Tensor]) -> None:
        """The global L2 norm of the gradients of ``params`` (call before clipping)."""
        if not self.enabled:
            return
        norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        self._grad_norm = float(torch.stack(norms).norm()) if norms else None

    def step(self, step: int, *, lr: float) -> None:
        if not self.enabled:
            return
        if self._losses:
            self.writer.add_scalar("train/loss_step", sum(self._losses) / len(self._losses), step)
        self.writer.add_scalar("train/lr", lr, step)
        if self._grad_norm is not None and math.isfinite(self._grad_norm):
            self.writer.add_scalar("train/grad_norm", self._grad_norm, step)
        self._losses, self._grad_norm = [], None

    def epoch(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        epoch = int(record.get("epoch", 0))
        for key, value in record.items():
            number = _number(value)
            if key not in ("epoch", "step") and number is not None:
                self.writer.add_scalar(f"epoch/{key}", number, epoch)
        self.writer.flush()

    def finish(self, model: nn.Module, task: Task, recipe: Mapping[str, Any], final: Mapping[str, Any], *,
               device: torch.device) -> None:
        """Hyper-parameters with the final metrics, and the images of the final model."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        params = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(recipe).items()}
        metrics = {f"hparams/{k}": _number(v) for k, v in final.items()
                   if k.startswith(("val_", "train_", "best_")) and _number(v) is not None}
        # The summaries SummaryWriter.add_hparams writes, but into this run's event file (add_hparams opens
        # a sub-folder per call, which TensorBoard would list as a second run).
        experiment, start, end = hparams(params, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, int(final.get("epochs", 0) or 0))
        was_training = model.training
        model.eval()
        try:
            self._images(model, task, device)
        finally:
            model.train(was_training)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.writer = None

    @torch.no_grad()
    def _images(self, model: nn.Module, task: Task, device: torch.device) -> None:
        loader = task.val_loader
        if loader is None:
            return
        kind = inference_meta(task)["task_kind"]
        if kind == "classification" and task.batch_metrics is classification_metrics:
            self._classification_images(model, task, device)
        elif kind == "segmentation":
            x, _ = next(iter(loader.iter_epoch(0)))
            x = x[:1].to(device)  # (1, C, H, W), normalised
            from dltricks.tasks.segmentation.losses import segmentation_logits

            mask = segmentation_logits(model(x))[0, 0] > 0  # (H, W) membrane where the logit is positive
            image = _denormalize(x[0].cpu(), task.extra)  # (C, H, W) in [0, 1]
            self.writer.add_image("images/overlay", overlay_mask(image, mask.cpu()), 0)

    def _classification_images(self, model: nn.Module, task: Task, device: torch.device) -> None:
        K = task.num_classes
        counts = torch.zeros(K * K, dtype=torch.long)
        shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        for b, (x, y) in enumerate(task.val_loader.iter_epoch(0)):
            if b >= MAX_IMAGE_BATCHES:
                break
            x, y = x.to(device), y.to(device)
            pred = _logits(model(x)).argmax(dim=1)
            hard = y.argmax(dim=1) if y.dim() == 2 else y
            counts += torch.bincount((hard * K + pred).cpu(), minlength=K * K)  # (K*K,) true*K + pred
            if shown is None:
                shown = (x[:16].cpu(), hard[:16].cpu(), pred[:16].cpu())
        self.writer.add_figure("images/confusion", _confusion_figure(counts.view(K, K), task.classes), 0)
        if shown is not None:
            self.writer.add_figure("images/samples", _samples_figure(*shown, task), 0)


def _denormalize(x: torch.Tensor, extra: Mapping[str, Any]) -> torch.Tensor:
    """(C, H, W) normalised -> (C, H, W) in [0, 1] with the task's mean and std."""
    C = x.shape[0]
    mean = torch.tensor(extra.get("mean", (0.0,) * C), dtype=torch.float32).view(C, 1, 1)
    std = torch.tensor(extra.get("std", (1.0,) * C), dtype=torch.float32).view(C, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


def overlay_mask(image: torch.Tensor, mask: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    """(3, H, W) in [0, 1]: ``image`` ((C, H, W) in [0, 1]) in grey with ``mask`` ((H, W) bool) blended in red."""
    grey = image.mean(dim=0, keepdim=True).expand(3, -1, -1).clone()  # (3, H, W)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    m = mask.bool().unsqueeze(0)  # (1, H, W)
    return torch.where(m, (1 - alpha) * grey + alpha * red, grey)


def _confusion_figure(matrix: torch.Tensor, classes: tuple[str, ...]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = matrix.shape[0]
    rates = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)  # rows: true class
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * K, 1.0 + 0.45 * K))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    names = list(classes) if len(classes) == K else [str(i) for i in range(K)]
    ax.set_xticks(range(K), names, rotation=90)
    ax.set_yticks(range(K), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if K <= 20:
        for i in range(K):
            for j in range(K):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def _samples_figure(x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, task: Task) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(task.classes) if len(task.classes) == task.num_classes else [str(i) for i in range(task.num_classes)]
    n = x.shape[0]
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = _denormalize(x[i], task.extra).permute(1, 2, 0).squeeze(-1).numpy()  # (H, W[, C])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        right = int(y[i]) == int(pred[i])
        ax.set_title(f"{names[int(pred[i])]} ({names[int(y[i])]})", fontsize=7, color="green" if right else "red")
    fig.tight_layout()
    return fig

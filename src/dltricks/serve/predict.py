"""A finished run's model on one new input: image classification (top-5), membrane masks, date translation.

Two things are checked before any work is done on a user's input:

* **Images** (:func:`decode_image`): at most ``max_bytes`` of upload, one of a few formats, and at most
  ``max_pixels`` decoded pixels, read from the file's header *before* decoding, so a decompression bomb
  (a 40 KB PNG that claims 50,000 x 50,000 pixels, 2.5 GB once decoded) is refused without allocating it.
  Pillow's own bomb guard (``Image.DecompressionBombError``) stays on behind ours.
* **Weights** (:func:`load_run_model`): only the run's ``model.safetensors``, through
  :func:`dltricks.train.load_weights`, which refuses pickles and ``torch.save`` files before looking inside;
  the model is rebuilt by its registered name from the JSON metadata. Nothing is ever unpickled.

``dltricks eval RUN --image FILE`` and the playground both call :func:`classify_image`, so they agree.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from dltricks.errors import CheckpointError, DataError

__all__ = ["UploadError", "Limits", "decode_image", "LoadedModel", "load_run_model", "classify_image",
           "segment_image", "translate_date", "canvas_to_mnist", "ModelCache"]

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")


class UploadError(DataError):
    """An input the server refuses (too large, not an image, a decompression bomb...); HTTP 413 or 400."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may hand the server."""

    max_bytes: int = 4 * 1024 * 1024  # upload size
    max_pixels: int = 4096 * 4096  # decoded width x height (an ISBI slice is 512 x 512)
    max_text: int = 64  # characters of a date


def decode_image(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Decode an uploaded image (first frame) after checking its size in bytes and in pixels."""
    if len(data) > limits.max_bytes:
        raise UploadError(f"upload of {len(data):,} bytes is over the limit of {limits.max_bytes:,} bytes", status=413)
    if not data:
        raise UploadError("empty upload; expected an image file")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > limits.max_pixels:
            raise UploadError(f"image of {width} x {height} pixels is over the limit of {limits.max_pixels:,} "
                              "decoded pixels (a decompression bomb, or simply too large)", status=413)
        image.seek(0)
        image.load()
    except UploadError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own guard (above Image.MAX_IMAGE_PIXELS x 2)
        raise UploadError(f"image refused as a decompression bomb ({err})", status=413) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UploadError(f"not a readable image ({', '.join(FORMATS)}): {err}") from err
    return image


# --------------------------------------------------------------------------------------------------
# Models


@dataclass
class LoadedModel:
    """A run's model in eval mode and what is needed to feed it."""

    model: nn.Module
    name: str
    kind: str  # classification, segmentation, seq2seq, other
    classes: list[str]
    input_shape: list[int]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _statistics_of_data(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Mean and std of the run's training data, for weights written before they were stored in the file."""
    from dltricks.train import load_recipe, task_for_recipe

    data = meta.get("data") or {}
    name = data.get("name") if isinstance(data, dict) else data
    if not name:
        raise CheckpointError("the weights store no input normalisation and no data set to recompute it from")
    task = task_for_recipe(name, load_recipe(None, [("train.batch_size", 1)]), device="cpu", for_training=False,
                           data_dir=data.get("data_dir") if isinstance(data, dict) else None)
    return list(task.extra["mean"]), list(task.extra["std"])


def load_run_model(run_dir: str | Path) -> LoadedModel:
    """The final model of a run directory (``model.safetensors``), or the weights file ``run_dir`` names
    (``best.safetensors``...), on the CPU, in eval mode."""
    from dltricks.models import create_model
    from dltricks.train import load_weights, read_metadata
    from dltricks.train.checkpoint import CHECKPOINT_FORMAT

    path = Path(run_dir) / "model.safetensors" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise CheckpointError(f"{Path(run_dir).name}: no model.safetensors (the run has not finished)")
    meta = read_metadata(path)  # refuses pickles before anything else
    if meta.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: a full training checkpoint; give the run directory or its "
                              "model.safetensors / checkpoints/best.safetensors")
    name = meta.get("model")
    if not name:
        raise CheckpointError(f"{path}: no model name in its metadata; expected weights written by dltricks")
    model = create_model(name, **dict(meta.get("model_kwargs") or {}))
    from dltricks.train.runs import structure_for_weights

    model = structure_for_weights(model, meta, path)
    load_weights(model, path)
    model.eval()
    kind = meta.get("task_kind") or ("seq2seq" if (meta.get("data") or {}).get("name") == "dates" else
                                     "classification")
    mean, std = [], []
    if kind in ("classification", "segmentation"):
        norm = meta.get("normalize")
        mean, std = (norm["mean"], norm["std"]) if norm else _statistics_of_data(meta)
    return LoadedModel(model, name, kind, [str(c) for c in meta.get("classes") or []],
                       [int(s) for s in meta.get("input_shape") or []], mean, std, meta)


class ModelCache:
    """Loaded models by run folder, reloaded when the weights file changes (thread-safe)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._models: dict[Path, tuple[float, LoadedModel]] = {}
        self._lock = threading.Lock()

    def get(self, run_dir: Path) -> LoadedModel:
        weights = run_dir / "model.safetensors"
        stamp = weights.stat().st_mtime if weights.is_file() else -1.0
        with self._lock:
            hit = self._models.get(run_dir)
            if hit is not None and hit[0] == stamp:
                return hit[1]
            loaded = load_run_model(run_dir)
            if len(self._models) >= self.capacity:
                self._models.pop(next(iter(self._models)))
            self._models[run_dir] = (stamp, loaded)
            return loaded


def _to_input(image: Image.Image, loaded: LoadedModel, *, resize: bool) -> torch.Tensor:
    """(1, C, H, W) normalised like the training data; resized (bilinear) to the training size when asked."""
    C = loaded.input_shape[0] if loaded.input_shape else 1
    image = image.convert("L" if C == 1 else "RGB")
    if resize and len(loaded.input_shape) == 3:
        H, W = loaded.input_shape[1:]
        if image.size != (W, H):
            image = image.resize((W, H), Image.BILINEAR)
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = x.view(image.size[1], image.size[0], C).permute(2, 0, 1).float().div(255.0)  # (C, H, W) in [0, 1]
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)  # (1, C, H, W)


@torch.no_grad()
def classify_image(loaded: LoadedModel, image: Image.Image, *, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` classes of ``image`` with their softmax probabilities, most likely first."""
    if loaded.kind != "classification":
        raise DataError(f"model {loaded.name} is a {loaded.kind} model, not an image classifier")
    out = loaded.model(_to_input(image, loaded, resize=True))
    logits = (out[0] if isinstance(out, (tuple, list)) else out).float()  # (1, K)
    probs = logits.softmax(dim=1)[0]
    values, indices = probs.topk(min(top, probs.numel()))
    names = loaded.classes if len(loaded.classes) == probs.numel() else [str(i) for i in range(probs.numel())]
    return [{"index": int(i), "label": names[int(i)], "probability": float(p)} for p, i in zip(values, indices)]


def canvas_to_mnist(image: Image.Image, size: int = 28) -> Image.Image:
    """A digit drawn white on black, framed as in MNIST: its bounding box scaled to fit 20 x 20 pixels and
    its centre of mass put at the centre of a ``size`` x ``size`` image (LeCun et al. 1998)."""
    grey = image.convert("L")
    box = grey.getbbox()
    if box is None:
        return Image.new("L", (size, size))
    digit = grey.crop(box)
    scale = 20.0 / max(digit.size)
    digit = digit.resize((max(1, round(digit.size[0] * scale)), max(1, round(digit.size[1] * scale))), Image.LANCZOS)
    w = torch.frombuffer(bytearray(digit.tobytes()), dtype=torch.uint8).view(digit.size[1], digit.size[0]).float()
    total = w.sum().clamp_min(1.0)
    cy = float((w.sum(1) * torch.arange(w.shape[0])).sum() / total)  # centre of mass, rows
    cx = float((w.sum(0) * torch.arange(w.shape[1])).sum() / total)  # centre of mass, columns
    canvas = Image.new("L", (size, size))
    left = min(max(round(size / 2 - cx), 0), size - digit.size[0])
    upper = min(max(round(size / 2 - cy), 0), size - digit.size[1])
    canvas.paste(digit, (left, upper))
    return canvas


@torch.no_grad()
def segment_image(loaded: LoadedModel, image: Image.Image) -> tuple[Image.Image, float]:
    """The image in grey with the predicted foreground (membrane) in red, and the foreground fraction."""
    if loaded.kind != "segmentation":
        raise DataError(f"model {loaded.name} is a {loaded.kind} model, not a segmentation model")
    from dltricks.tasks.segmentation.losses import segmentation_logits
    from dltricks.train.tracking import overlay_mask

    x = _to_input(image, loaded, resize=False)  # (1, C, H, W): whole image, as in evaluation
    H, W = x.shape[-2:]
    multiple = 32  # every encoder of the zoo halves the size at most 5 times
    pad_h, pad_w = (-H) % multiple, (-W) % multiple
    padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(H, W) > max(pad_h, pad_w) else "replicate")
    logits = segmentation_logits(loaded.model(padded))[:, :, :H, :W]  # (1, 1, H, W)
    mask = logits[0, 0] > 0
    grey = x[0] * torch.tensor(loaded.std).view(-1, 1, 1) + torch.tensor(loaded.mean).view(-1, 1, 1)
    rgb = overlay_mask(grey.clamp(0, 1), mask)  # (3, H, W) in [0, 1]
    array = (rgb * 255).round().byte().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array, "RGB"), float(mask.float().mean())


@torch.no_grad()
def translate_date(loaded: LoadedModel, text: str, limits: Limits = Limits()) -> dict[str, Any]:
    """The ISO date a seq2seq run reads in ``text``, with its attention ``(output chars, input chars)``."""
    if loaded.kind != "seq2seq":
        raise DataError(f"model {loaded.name} is a {loaded.kind} model, not a dates seq2seq model")
    text = text.strip()
    if not text or len(text) > limits.max_text:
        raise UploadError(f"a date of 1 to {limits.max_text} characters is expected, got {len(text)}")
    from dltricks.tasks.dates import translate

    outputs, attention = translate(loaded.model, [text])
    output = outputs[0]
    weights = None
    if attention is not None:
        # (1, T, S): one row per generated character (the end token included), one column per input character.
        weights = [[round(float(v), 4) for v in row[:len(text)]] for row in attention[0][:len(output) + 1]]
    return {"input": text, "output": output, "attention": weights,
            "output_tokens": list(output) + ["<eos>"], "input_tokens": list(text)}

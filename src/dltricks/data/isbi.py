"""ISBI 2012 EM membrane segmentation: 30 slices, paired augmentation, the ``isbi2012-membrane`` task.

Data: the training stack of the ISBI 2012 challenge "Segmentation of neuronal structures in EM stacks"
(Arganda-Carreras et al., Frontiers in Neuroanatomy 2015), the set U-Net was introduced on
(Ronneberger et al. 2015): 30 consecutive 512x512 serial-section TEM slices of the Drosophila ventral
nerve cord, as ``image/N.png`` (8-bit grayscale) and ``label/N.png`` (255 = cell interior, 0 = membrane),
``N = 0..29`` in stack order. The folder is found as ``isbi2012-membrane/`` (or given directly) in
``--data-dir`` / ``DLTRICKS_DATA`` / the default data folders (:mod:`dltricks.data.files`).

**Target.** The foreground is the *membrane* (label 0): the task's target is ``(B, 1, H, W)`` with 1 on
membrane pixels, the model predicts one logit per pixel, and Dice / IoU / boundary F1 are those of the
membrane class (22 % of the pixels: 16.8 % to 27.0 % per slice). That is the hard class: a model
that predicts "interior" everywhere already has 78 % pixel accuracy and 0.88 interior Dice.

**Split** (documented, fixed, contiguous in z so that neighbouring slices - 50 nm apart and nearly
identical - do not straddle it more than once): slices 0-24 train, 25-29 validation. ``fold=k`` with
``num_folds=K`` instead holds out the k-th of K contiguous blocks (6 slices each for K=5).

**Paired augmentation** (the same geometric transform for image and mask, random per sample):

* random ``crop_size`` crops (``None`` or >= the slice: whole slices);
* elastic deformation (``elastic=True``), as in the U-Net paper (Sec. 3.1): displacement vectors on a
  coarse ``elastic_grid x elastic_grid`` grid drawn from ``N(0, elastic_sigma^2)`` pixels (3x3 and 10 px in
  the paper), upsampled bicubically to a per-pixel field; image resampled bilinearly, mask bilinearly then
  thresholded at 0.5. It runs on the crop plus a 32-pixel reflected margin, so no crop border is pulled
  in from outside the image;
* one of the 8 flips / 90-degree rotations (``flip``, ``rot90``): the dihedral group, exact symmetries of
  an EM section.

**Loss weights** (``border_weight``, ``border_sigma``, ``balance_classes``): U-Net's weight map
(:mod:`dltricks.tasks.segmentation.weights`) of every training slice, computed the first time the training loader
draws a sample (so evaluation-only uses of the task never pay for it); it rides along as a second target
channel, ``(B, 2, H, W)`` = (mask, weight), warped bilinearly with the mask, and weights the cross-entropy.
Validation batches stay ``(B, 1, H, W)``.

Every random draw of sample ``j`` of epoch ``e`` comes from a generator seeded with ``(seed, e, j)``, and
the slice it crops from from ``(seed, e, j // N)``, so the batches are a pure function of
``(seed, epoch, batch index)`` whatever the batch size, as ``--resume`` requires.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dltricks.config import check_positive, field
from dltricks.data.files import data_roots, find_in_roots, missing_data_message
from dltricks.data.loader import derive_seed
from dltricks.errors import ConfigError, DataError

__all__ = ["ISBI_FOLDER", "ISBIConfig", "SegmentationData", "find_isbi", "load_isbi", "isbi_split",
           "elastic_deform", "PairAugmenter", "SegmentationLoader"]

ISBI_FOLDER = "isbi2012-membrane"
ISBI_NUM_SLICES = 30
MAX_EVAL_SLICES = 8  # whole 512x512 slices per evaluation batch, at most
_ELASTIC_MARGIN = 32  # pixels of context around a crop for the elastic deformation (3 sigma of 10 px)


def _check_odd_grid(value: Any) -> str | None:
    return None if value >= 2 else "an integer >= 2"


@dataclass
class ISBIConfig:
    """Options of the ``isbi2012-membrane`` task (pass them as task options)."""

    crop_size: int | None = field(256, help="side of the random training crops in pixels (null: whole slices)",
                                  check=check_positive)
    samples_per_epoch: int | None = field(None, help="training crops per epoch (default: as many pixels as the "
                                                     "training slices, e.g. 100 crops of 256 for 25 slices)",
                                          check=check_positive)
    flip: bool = field(True, help="random mirror of image and mask")
    rot90: bool = field(True, help="random multiple of 90-degree rotation of image and mask")
    elastic: bool = field(False, help="random elastic deformation (U-Net paper: 3x3 grid, sigma 10 px)")
    elastic_sigma: float = field(10.0, help="std of the coarse displacement vectors in pixels", check=check_positive)
    elastic_grid: int = field(3, help="side of the coarse displacement grid", check=_check_odd_grid)
    loss: Literal["bce", "dice", "bce+dice"] = field("bce+dice", help="training loss")
    border_weight: float = field(0.0, help="w0 of U-Net's weight map (paper: 10): extra cross-entropy weight on "
                                           "membrane pixels between two close cells; 0 = off",
                                 check=lambda v: None if v >= 0 else "a number >= 0")
    border_sigma: float = field(5.0, help="sigma of U-Net's weight map in pixels (paper: about 5)",
                                check=check_positive)
    balance_classes: bool = field(False, help="weight the cross-entropy by inverse class frequency (U-Net's w_c)")
    val_size: int = field(5, help="fixed split: the last val_size slices are the validation set",
                          check=check_positive)
    fold: int | None = field(None, help="k-fold split: hold out contiguous block `fold` (0-based) of num_folds "
                                        "instead of the fixed split")
    num_folds: int = field(5, help="number of folds of the k-fold split", check=_check_odd_grid)
    final_window: int | None = field(None, help="end-of-run evaluation (fit's last one): sliding windows of this "
                                               "many pixels (null: whole slices)", check=check_positive)
    final_overlap: float = field(0.5, help="overlap of neighbouring windows in the end-of-run evaluation",
                                 check=lambda v: None if 0 <= v < 1 else "a number in [0, 1)")
    final_tta: bool = field(False, help="end-of-run evaluation averages the 8 flips / 90-degree rotations")


@dataclass
class SegmentationData:
    """Images ``uint8 (N, C, H, W)`` and foreground masks ``uint8 (N, 1, H, W)`` in ``{0, 1}``."""

    images: torch.Tensor
    masks: torch.Tensor
    name: str
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.masks.shape != (self.images.shape[0], 1, *self.images.shape[2:]):
            raise DataError(f"{self.name}: masks {tuple(self.masks.shape)} do not match images "
                            f"{tuple(self.images.shape)}; expected (N, 1, H, W)")
        if len(self) == 0:
            raise DataError(f"{self.name} is empty; expected at least one image/mask pair")
        if not self.ids:
            self.ids = tuple(str(i) for i in range(len(self)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: list[int], name: str) -> SegmentationData:
        idx = torch.as_tensor(index, dtype=torch.int64)
        return SegmentationData(self.images.index_select(0, idx), self.masks.index_select(0, idx), name,
                                tuple(self.ids[i] for i in index))

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the images in ``[0, 1]`` units."""
        x = self.images.to(torch.float64).transpose(0, 1).flatten(1) / 255.0  # (C, N*H*W)
        return tuple(x.mean(1).tolist()), tuple(x.std(1, unbiased=False).tolist())


def _is_isbi_folder(path: Path) -> bool:
    return path.is_dir() and (path / "image").is_dir() and (path / "label").is_dir()


def find_isbi(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``image/`` and ``label/`` (``data_dir`` itself or its ``isbi2012-membrane/``)."""
    found = find_in_roots(data_roots(data_dir), (ISBI_FOLDER,), _is_isbi_folder)
    if found is None:
        raise DataError(missing_data_message(
            "ISBI 2012 membrane data", f"{ISBI_FOLDER}/image/N.png and {ISBI_FOLDER}/label/N.png", data_dir,
            (ISBI_FOLDER,), "get the 30 training slices of the ISBI 2012 EM segmentation challenge "
            "(train-volume.tif / train-labels.tif, one PNG per slice)"))
    return found


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read as an image ({err}); expected an 8-bit grayscale PNG") from err


def load_isbi(data_dir: str | os.PathLike[str] | None = None) -> SegmentationData:
    """All slices, in stack order: images ``(N, 1, H, W)``, membrane masks ``(N, 1, H, W)`` (1 = membrane)."""
    folder = find_isbi(data_dir)
    # Stack order: numeric names by value (0, 1, ..., 10, not 0, 1, 10).
    names = sorted((p.stem for p in (folder / "image").glob("*.png")),
                   key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    if not names:
        raise DataError(f"{folder / 'image'} holds no PNG files; expected image/0.png ... image/29.png")
    missing = [n for n in names if not (folder / "label" / f"{n}.png").is_file()]
    if missing:
        raise DataError(f"{folder}: no label for image(s) {', '.join(missing[:5])}; "
                        "expected label/N.png for every image/N.png")
    images, masks = [], []
    for n in names:
        img = _read_png(folder / "image" / f"{n}.png")
        lab = _read_png(folder / "label" / f"{n}.png")
        if img.shape != lab.shape:
            raise DataError(f"{folder}: image {n} is {img.shape} but its label is {lab.shape}")
        if images and img.shape != images[0].shape:
            raise DataError(f"{folder}: image {n} is {img.shape}, others are {images[0].shape}; expected one size")
        values = np.unique(lab)
        if not set(values.tolist()) <= {0, 255}:
            raise DataError(f"{folder}/label/{n}.png has values {values[:6].tolist()}...; expected a binary mask "
                            "(0 = membrane, 255 = cell interior)")
        images.append(img)
        masks.append((lab == 0).astype(np.uint8))  # membrane = foreground
    return SegmentationData(torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(masks))[:, None],
                            "isbi2012-membrane", tuple(names))


def isbi_split(num: int = ISBI_NUM_SLICES, *, val_size: int = 5, fold: int | None = None,
               num_folds: int = 5) -> tuple[list[int], list[int]]:
    """``(train, val)`` slice indices: the last ``val_size`` slices, or contiguous fold ``fold`` of ``num_folds``.

    Folds are ``np.array_split(range(num), num_folds)`` (sizes differ by at most one).
    """
    if fold is None:
        if not 0 < val_size < num:
            raise ConfigError(f"val_size: got {val_size}, expected 1 .. {num - 1} for {num} slices")
        return list(range(num - val_size)), list(range(num - val_size, num))
    if not 2 <= num_folds <= num:
        raise ConfigError(f"num_folds: got {num_folds}, expected 2 .. {num}")
    if not 0 <= fold < num_folds:
        raise ConfigError(f"fold: got {fold}, expected 0 .. {num_folds - 1}")
    blocks = np.array_split(np.arange(num), num_folds)
    val = blocks[fold].tolist()
    return [i for i in range(num) if i not in val], val


# --- augmentation ----------------------------------------------------------------------------------------


def elastic_deform(image: torch.Tensor, mask: torch.Tensor | None, displacement: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Warp ``image`` ``(B, C, H, W)`` (and ``mask`` ``(B, K, H, W)``) by coarse ``displacement`` ``(B, 2, g, g)``.

    The coarse (dy, dx) vectors in pixels are upsampled bicubically to ``(B, 2, H, W)``; output pixel ``p``
    takes the input at ``p + d(p)`` (bilinear, reflected at the border). The mask (channel 0) is warped
    bilinearly and thresholded at 0.5; further channels (loss weights) are warped bilinearly.
    """
    B, _, H, W = image.shape
    field_ = F.interpolate(displacement.float(), size=(H, W), mode="bicubic", align_corners=True)  # (B, 2, H, W)
    ys = torch.arange(H, dtype=torch.float32).view(1, H, 1) + field_[:, 0]  # (B, H, W) source rows
    xs = torch.arange(W, dtype=torch.float32).view(1, 1, W) + field_[:, 1]  # (B, H, W) source columns
    # grid_sample wants (x, y) in [-1, 1] with align_corners=True: -1 = first pixel centre, 1 = last.
    grid = torch.stack([2 * xs / max(W - 1, 1) - 1, 2 * ys / max(H - 1, 1) - 1], dim=-1)  # (B, H, W, 2)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    warped_mask = None
    if mask is not None:
        m = F.grid_sample(mask.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        warped_mask = torch.cat([(m[:, :1] >= 0.5).float(), m[:, 1:]], dim=1).to(mask.dtype)
    return out, warped_mask


class PairAugmenter:
    """Random crop, optional elastic deformation and a random dihedral transform, identical on image and mask."""

    def __init__(self, config: ISBIConfig) -> None:
        self.config = config

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(C, H, W)`` float, ``mask`` ``(K, H, W)`` (channel 0 the mask, any others loss weights)
        -> augmented crop pair."""
        cfg = self.config
        H, W = image.shape[-2:]
        size = cfg.crop_size
        crop_h, crop_w = (H, W) if size is None else (min(size, H), min(size, W))
        top = int(torch.randint(0, H - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(0, W - crop_w + 1, (1,), generator=generator))
        if cfg.elastic:
            m = _ELASTIC_MARGIN
            # Crop plus margin, reflecting the slice where the margin leaves it.
            padded_img = F.pad(image[None], (m, m, m, m), mode="reflect")  # (1, C, H + 2m, W + 2m)
            padded_mask = F.pad(mask[None].float(), (m, m, m, m), mode="reflect")
            region_img = padded_img[..., top:top + crop_h + 2 * m, left:left + crop_w + 2 * m]
            region_mask = padded_mask[..., top:top + crop_h + 2 * m, left:left + crop_w + 2 * m]
            g = cfg.elastic_grid
            displacement = torch.randn(1, 2, g, g, generator=generator) * cfg.elastic_sigma  # (1, 2, g, g) pixels
            region_img, region_mask = elastic_deform(region_img, region_mask, displacement)
            image = region_img[0, :, m:m + crop_h, m:m + crop_w]
            mask = region_mask[0, :, m:m + crop_h, m:m + crop_w].to(mask.dtype)
        else:
            image = image[:, top:top + crop_h, left:left + crop_w]
            mask = mask[:, top:top + crop_h, left:left + crop_w]
        k = int(torch.randint(0, 4, (1,), generator=generator)) if cfg.rot90 else 0
        flip = bool(torch.rand((), generator=generator) < 0.5) if cfg.flip else False
        if k and crop_h == crop_w:
            image, mask = torch.rot90(image, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))
        if flip:
            image, mask = torch.flip(image, dims=(-1,)), torch.flip(mask, dims=(-1,))
        return image.contiguous(), mask.contiguous()


# --- loader ----------------------------------------------------------------------------------------------


class SegmentationLoader:
    """Batches of (image, mask) pairs following the loader protocol of :mod:`dltricks.tasks.base`.

    Training (``augment`` given): ``samples_per_epoch`` augmented crops per epoch; sample ``j`` crops slice
    ``perm_c[j mod N]`` where ``perm_c`` is a permutation drawn for cycle ``c = j // N`` (every slice is used
    equally often), rank ``r`` takes samples ``r, r + world_size, ...`` and the last incomplete batch is
    dropped (unless there are fewer samples than one batch). Evaluation (``augment=None``): whole slices in
    order, rank ``r`` takes slices ``r::world_size``.

    Yields ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` normalised with ``mean`` / ``std``; ``y`` float32
    ``(B, 1, H, W)`` in ``{0, 1}`` (1 = foreground). With ``loss_weights`` (training only: a function returning
    per-pixel weights ``(N, 1, H, W)`` for the slices of ``data``, called once, on the first sample) ``y`` is
    ``(B, 2, H, W)`` = (mask, weight), the weights augmented together with the mask.
    """

    def __init__(self, data: SegmentationData, *, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 augment: PairAugmenter | None = None, samples_per_epoch: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 loss_weights: Callable[[], torch.Tensor] | None = None) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size: got {batch_size!r}, expected an integer >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        self.data, self.batch_size, self.augment = data, batch_size, augment
        if loss_weights is not None and augment is None:
            raise ConfigError("loss_weights are for training loaders (with augment); evaluation yields masks only")
        self._weights_fn, self._weights = loss_weights, None
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.device = torch.device(device)
        C = data.images.shape[1]
        self._mean = torch.tensor(mean, dtype=torch.float32).view(C, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(C, 1, 1)
        N = len(data)
        if augment is not None:
            total = samples_per_epoch or N
            self._positions = list(range(rank, total, world_size))
            # Drop the last incomplete batch (BatchNorm and a batch of one do not mix), unless that would
            # leave no batch at all (an evaluation-sized batch_size, a tiny samples_per_epoch).
            if len(self._positions) >= batch_size:
                self._num_batches = len(self._positions) // batch_size
                self.num_samples = self._num_batches * batch_size
            else:
                self._num_batches, self.num_samples = 1, len(self._positions)
        else:
            self._positions = list(range(rank, N, world_size))
            self._num_batches = math.ceil(len(self._positions) / batch_size)
            self.num_samples = len(self._positions)
        self.epoch = 0

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_epoch(self.epoch)

    def _slice_of(self, epoch: int, j: int) -> int:
        N = len(self.data)
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, j // N)))
        return int(perm[j % N])

    def _sample(self, epoch: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is None:
            image = self.data.images[j].float().div_(255.0)  # (C, H, W)
            return image, self.data.masks[j]
        i = self._slice_of(epoch, j)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, j, 1))
        image = self.data.images[i].float().div_(255.0)  # (C, H, W) in [0, 1]
        target = self.data.masks[i]
        if self._weights_fn is not None:
            if self._weights is None:
                self._weights = self._weights_fn()  # (N, 1, H, W), computed once
            target = torch.cat([target.float(), self._weights[i]])  # (2, H, W): mask, loss weight
        return self.augment(image, target, generator)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside [0, {len(self)}] for {self.data.name}")
        for b in range(start_batch, len(self)):
            positions = self._positions[b * self.batch_size:(b + 1) * self.batch_size]
            pairs = [self._sample(epoch, j) for j in positions]
            x = torch.stack([(img - self._mean) / self._std for img, _ in pairs])  # (B, C, h, w)
            y = torch.stack([m.float() for _, m in pairs])  # (B, 1, h, w), or (B, 2, h, w) with loss weights
            yield x.to(self.device), y.to(self.device)

    def __repr__(self) -> str:
        kind = "train" if self.augment is not None else "eval"
        return (f"SegmentationLoader({self.data.name}, {kind}, batch_size={self.batch_size}, batches={len(self)}, "
                f"rank={self.rank}/{self.world_size})")

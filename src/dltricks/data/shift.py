"""Shifted and out-of-distribution image sets for MNIST-trained models.

* :func:`load_sklearn_digits`: the 1,797 handwritten digits bundled with scikit-learn (the UCI "optical
  recognition of handwritten digits" test set, 8x8 pixels with values 0..16), read from the installed
  package (never downloaded) and put into MNIST's frame: scaled to ``[0, 255]``, resized bilinearly to
  20x20 and padded by 4 pixels to 28x28, since MNIST digits sit in a 20x20 box centred in 28x28. Same ten
  classes, another writer population and sensor: a domain shift, the target of domain adaptation.
* :func:`cifar_grey_crops`: CIFAR-10 test images turned grey (ITU-R BT.601 luma
  ``Y = 0.299 R + 0.587 G + 0.114 B``) and cropped to 28x28 at a seeded random offset: images of
  no digit class at all, the far out-of-distribution set.
* :func:`mnist_m_grey`: MNIST-M in grey (Ganin et al. 2016, JMLR, Sec. 5.1.2, built reproducibly): every digit
  blended onto a patch of a natural image by the absolute difference ``|patch - digit|``, pixel by pixel; the
  patches are seeded grey crops of CIFAR-10 test images (:func:`cifar_grey_crops`) instead of the paper's
  BSDS500 colour photos, so the set stays 28x28 grey like MNIST. Same classes, other backgrounds and contrast.
* :func:`split_target`: the fixed, class-balanced split of a target set into images an adaptation method
  may see (without labels) and test images it never sees.

Every set carries MNIST's normalisation statistics, so an MNIST model sees them as it saw its training data.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from dltricks.data.base import ArrayDataset, stratified_indices
from dltricks.data.mnist import MNIST_MEAN, MNIST_STD
from dltricks.errors import DataError

__all__ = ["load_sklearn_digits", "cifar_grey_crops", "mnist_m_grey", "split_target", "find_cifar10_zip",
           "as_float", "DIGIT_CLASSES"]

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def load_sklearn_digits(*, image_size: int = 28, box: int = 20) -> ArrayDataset:
    """scikit-learn's 8x8 digits as ``uint8 (1797, 1, image_size, image_size)``, the digit resized to
    ``box x box`` and centred (MNIST's frame by default)."""
    if not 8 <= box <= image_size:
        raise DataError(f"digit box {box} must lie in [8, image_size={image_size}]")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - a dependency of dltricks
        raise DataError("the scikit-learn digits need scikit-learn (pip install scikit-learn)") from err
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(box, box), mode="bilinear", align_corners=False)  # (N, 1, box, box)
    pad_lo = (image_size - box) // 2
    pad_hi = image_size - box - pad_lo
    x = F.pad(x, (pad_lo, pad_hi, pad_lo, pad_hi))  # (N, 1, image_size, image_size)
    images = x.round().clamp(0, 255).to(torch.uint8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ArrayDataset(images, labels, DIGIT_CLASSES, "sklearn-digits", MNIST_MEAN, MNIST_STD)


def find_cifar10_zip(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cifar10-jpg.zip`` in ``data_dir``, ``$DLTRICKS_DATA`` or ``../shared/data``."""
    candidates = [Path(d) for d in (data_dir, os.environ.get("DLTRICKS_DATA"), "../shared/data", "data") if d]
    for folder in candidates:
        for path in (folder, folder / "cifar10-jpg.zip"):
            if path.is_file() and path.suffix == ".zip":
                return path
    raise DataError(f"cifar10-jpg.zip not found in {', '.join(map(str, candidates))}; pass its folder")


def cifar_grey_crops(n: int = 2000, *, data_dir: str | os.PathLike[str] | None = None, image_size: int = 28,
                     seed: int = 0) -> ArrayDataset:
    """``n`` CIFAR-10 test images as grey ``uint8 (n, 1, image_size, image_size)`` crops (labels: the CIFAR
    classes, meaningless to a digit model)."""
    from dltricks.data.imagefolder import load_image_folder

    test = load_image_folder(find_cifar10_zip(data_dir), progress=False)["test"]
    if not 0 < n <= len(test):
        raise DataError(f"cannot take {n} CIFAR-10 crops from {len(test)} test images")
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(test), generator=g)[:n]
    rgb = test.images[index].float()  # (n, 3, 32, 32)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (rgb * luma).sum(1, keepdim=True)  # (n, 1, 32, 32)
    H, W = grey.shape[-2:]
    if image_size > min(H, W):
        raise DataError(f"crop size {image_size} exceeds the CIFAR-10 image size {H}x{W}")
    top = torch.randint(0, H - image_size + 1, (n,), generator=g)
    left = torch.randint(0, W - image_size + 1, (n,), generator=g)
    crops = torch.stack([grey[i, :, t:t + image_size, s:s + image_size]
                         for i, (t, s) in enumerate(zip(top.tolist(), left.tolist()))])  # (n, 1, S, S)
    return ArrayDataset(crops.round().clamp(0, 255).to(torch.uint8), test.labels[index], test.classes,
                        "cifar10-grey-crops", MNIST_MEAN, MNIST_STD)


def mnist_rgb(n: int = 2000, *, image_size: int = 32) -> ArrayDataset:
    """``n`` embedded-MNIST validation digits as ``uint8 (n, 3, image_size, image_size)`` images: zero-padded
    equally on every side to ``image_size`` (2 px for 32, as LeNet-5 fed MNIST) and repeated on three channels;
    the out-of-distribution set of a CIFAR-10 model (labels: the digits, meaningless to it)."""
    from dltricks.data.mnist import load_mnist_embedded

    digits = load_mnist_embedded("val")
    if not 0 < n <= len(digits):
        raise DataError(f"cannot take {n} MNIST digits from {len(digits)} validation images")
    pad = image_size - digits.images.shape[-1]
    if pad < 0 or pad % 2:
        raise DataError(f"MNIST's 28 px digits pad to an even larger size; got image_size {image_size}")
    x = torch.nn.functional.pad(digits.images[:n], (pad // 2,) * 4)  # (n, 1, S, S), black border
    return ArrayDataset(x.expand(-1, 3, -1, -1).contiguous(), digits.labels[:n], digits.classes, "mnist-rgb",
                        (0.0,) * 3, (1.0,) * 3)


def mnist_m_grey(digits: ArrayDataset, *, data_dir: str | os.PathLike[str] | None = None,
                 seed: int = 0) -> ArrayDataset:
    """``|patch - digit|`` for every image of ``digits`` (``uint8 (N, 1, 28, 28)``, e.g. the embedded MNIST
    validation split), each on its own grey CIFAR-10 crop drawn with ``seed``; labels and classes are the digits'."""
    if digits.in_chans != 1:
        raise DataError(f"mnist_m_grey blends grey digits; {digits.name} has {digits.in_chans} channels")
    H, W = digits.image_size
    if H != W:
        raise DataError(f"mnist_m_grey needs square digit images, got {H}x{W}")
    patches = cifar_grey_crops(len(digits), data_dir=data_dir, image_size=H, seed=seed).images  # (N, 1, H, W)
    blended = (patches.to(torch.int16) - digits.images.to(torch.int16)).abs().to(torch.uint8)  # (N, 1, H, W)
    # The digits' own statistics: a target image is normalised as its source digits are.
    return ArrayDataset(blended, digits.labels, digits.classes, f"mnist-m-grey({digits.name})", digits.mean,
                        digits.std)


def split_target(dataset: ArrayDataset, *, test_fraction: float = 0.5, seed: int = 0) -> tuple[ArrayDataset,
                                                                                                ArrayDataset]:
    """``(adapt, test)``: a class-balanced ``test_fraction`` of ``dataset`` kept for testing, the rest for
    adaptation. Adaptation methods get only the images of ``adapt``; accuracy is reported on ``test``."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n_test = max(1, round(len(dataset) * test_fraction))
    test_index = stratified_indices(dataset.labels, n_test, seed=seed)
    mask = torch.ones(len(dataset), dtype=torch.bool)
    mask[test_index] = False
    adapt_index = torch.nonzero(mask).flatten()
    return (dataset.subset(adapt_index, name=f"{dataset.name}/adapt"),
            dataset.subset(test_index, name=f"{dataset.name}/test"))


def as_float(dataset: ArrayDataset) -> torch.Tensor:
    """Normalised ``float32 (N, C, H, W)`` inputs: ``(x / 255 - mean) / std`` with the set's statistics."""
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    return (dataset.images.float() / 255.0 - mean) / std


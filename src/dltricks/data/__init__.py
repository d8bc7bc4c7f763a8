"""Real data sets and fast in-memory loaders.

* :class:`ArrayDataset`: a split held as ``uint8 (N, C, H, W)`` images and ``int64`` labels, validated.
* :class:`TensorLoader`: batches with batched augmentation (:class:`AugmentConfig`), deterministic per
  ``(seed, epoch, batch)``, sharded for distributed training.
* Loaders: :func:`load_mnist` (official IDX files, MD5-checked), :func:`load_mnist_embedded` (the copy
  shipped in the package), :func:`load_cifar10` (official python tarball), :func:`load_image_folder`
  (any ``train/<class>/`` + ``test/<class>/`` folder or zip).
* Tasks for the trainer (``--data NAME``) are registered in :mod:`dltricks.tasks.classification`.

See docs/data.md for where files are looked up and where decoded arrays are cached.
"""

from dltricks.data.augment import AugmentConfig
from dltricks.data.base import ArrayDataset, channel_stats
from dltricks.data.cifar import load_cifar10
from dltricks.data.imagefolder import load_image_folder
from dltricks.data.loader import TensorLoader
from dltricks.data.mnist import load_mnist, load_mnist_embedded

__all__ = ["ArrayDataset", "AugmentConfig", "TensorLoader", "channel_stats", "load_cifar10", "load_image_folder",
           "load_mnist", "load_mnist_embedded"]

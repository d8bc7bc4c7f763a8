"""``dltricks train ... --unlabelled METHOD``: semi-supervised training and domain adaptation from the command line.

The unlabelled images (``--unlabelled-data``) are one of

* ``rest`` (the default): the training images of ``--data`` that ``--subset N`` did not draw: the labelled
  subset is the class-stratified draw of ``--subset``/``--subset-seed``, everything else loses its labels
  (:func:`dltricks.train.unlabelled.split_labelled`);
* ``sklearn-digits``: the adaptation half of the scikit-learn 8x8 digits in MNIST's frame
  (:func:`dltricks.data.shift.split_target`, seed 0; the other half is kept for testing);
* any data set name of ``--data``: its training split (``--unlabelled-dir``: where its files are); its class
  names must be those of ``--data``.

``--unlabelled-opt KEY=VALUE`` sets the keys of :class:`~dltricks.train.unlabelled.UnlabelledConfig`.
"""

from __future__ import annotations

import argparse
from typing import Any

from dltricks.errors import ConfigError, DataError

__all__ = ["add_unlabelled_args", "unlabelled_from_args"]

METHODS = ("pseudo-label", "fixmatch", "mean-teacher", "coral", "dann")


def add_unlabelled_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unlabelled", default=None, choices=METHODS, metavar="METHOD",
                   help=f"add an unlabelled-data loss term ({', '.join(METHODS)}; docs/semi-supervised.md, "
                        "docs/domain-adaptation.md); default: off")
    p.add_argument("--unlabelled-data", default="rest", metavar="SRC",
                   help="the unlabelled images: 'rest' (the training images --subset did not draw), "
                        "'sklearn-digits' (the adaptation half of scikit-learn's 8x8 digits), or a data set name "
                        "(its training split); default: rest")
    p.add_argument("--unlabelled-dir", default=None, metavar="DIR",
                   help="folder (or file) of the --unlabelled-data set; default: the standard locations")
    p.add_argument("--unlabelled-opt", dest="unlabelled_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the unlabelled term, e.g. --unlabelled-opt threshold=0.9 (repeatable; keys: "
                        "weight, threshold, ratio, rampup, teacher_decay, noise, dann_hidden, seed); default: none")


def unlabelled_from_args(args: argparse.Namespace, recipe: Any, task: Any) -> Any:
    """The :class:`~dltricks.train.unlabelled.Unlabelled` of ``args`` (``None`` without ``--unlabelled``),
    checked against ``task`` (image shape, class names)."""
    from dltricks.commands._args import parse_options
    from dltricks.train.unlabelled import Unlabelled

    options = parse_options(getattr(args, "unlabelled_opts", []), "--unlabelled-opt")
    if args.unlabelled is None:
        if options or args.unlabelled_data != "rest" or args.unlabelled_dir is not None:
            raise ConfigError("--unlabelled-data/--unlabelled-dir/--unlabelled-opt need --unlabelled METHOD")
        return None
    if "method" in options:
        raise ConfigError("--unlabelled-opt method=...: give the method as --unlabelled METHOD")
    unlabelled = Unlabelled(_images(args, recipe), method=args.unlabelled, **options)
    unlabelled.check_task(task)
    return unlabelled


def _images(args: argparse.Namespace, recipe: Any) -> Any:
    from dltricks.train.prepare import task_for_recipe

    source = args.unlabelled_data
    if source == "sklearn-digits":
        from dltricks.data.shift import load_sklearn_digits, split_target

        return split_target(load_sklearn_digits(), seed=0)[0]
    if source == "rest":
        if args.subset is None:
            raise ConfigError("--unlabelled-data rest: the unlabelled images are the training images --subset N "
                              "did not draw; give --subset N (the labelled count), or another --unlabelled-data")
        from dltricks.train.unlabelled import split_labelled

        full = _train_split(task_for_recipe(args.data, recipe, data_dir=args.data_dir), args.data)
        if args.subset >= len(full):
            raise ConfigError(f"--subset {args.subset}: the training split of {args.data} has {len(full)} images, "
                              "so none would be left unlabelled")
        seed = args.subset_seed if args.subset_seed is not None else 0
        return split_labelled(full, args.subset, seed=seed)[1]
    return _train_split(task_for_recipe(source, recipe, data_dir=args.unlabelled_dir), source)


def _train_split(task: Any, name: str) -> Any:
    from dltricks.data.base import ArrayDataset

    dataset = getattr(task.train_loader, "dataset", None)
    if not isinstance(dataset, ArrayDataset):
        raise DataError(f"--unlabelled-data {name}: not an image classification data set")
    return dataset

"""The model registry: build any model by name.

``@register_model`` records a constructor under its function name together with a
:class:`ModelInfo` that says what input the model takes; :func:`create_model` builds it and
:func:`list_models` finds names by glob pattern. An unknown name raises a :class:`ModelError`
that lists the closest registered names. The parametrised suite in ``tests/test_models.py`` reads
:class:`ModelInfo` to build a small test input for every registered model.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dltricks.errors import ModelError, did_you_mean

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info", "model_entrypoint"]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model takes and how the shared test suite should feed it.

    Attributes:
        name: registry name (the constructor's function name).
        family: the module the constructor lives in (``resnet``, ``vit``...).
        task: ``classification`` (image -> logits), ``segmentation`` (image -> per-pixel logits),
            ``sequence`` (token ids -> per-token logits) or ``seq2seq``.
        input_size: the input the model was designed for, ``(C, H, W)`` for images or ``(T,)``
            for token sequences.
        test_input_size: a small input the shared suite uses (keeps CI fast).
        min_input_size: smallest spatial size the model accepts (smaller must raise a clear error).
        make_test_input: optional ``fn(model, batch_size) -> tuple of tensors`` for models whose input
            is not one float image (token ids, source + target pairs...).
        paper: citation of the paper that introduced the architecture.
    """

    name: str
    family: str
    task: str = "classification"
    input_size: tuple[int, ...] = (3, 224, 224)
    test_input_size: tuple[int, ...] = (3, 64, 64)
    min_input_size: int | None = None
    make_test_input: Callable[[nn.Module, int], tuple[torch.Tensor, ...]] | None = None
    paper: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_info: dict[str, ModelInfo] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    task: str = "classification",
    input_size: tuple[int, ...] = (3, 224, 224),
    test_input_size: tuple[int, ...] | None = None,
    min_input_size: int | None = None,
    make_test_input: Callable[[nn.Module, int], tuple[torch.Tensor, ...]] | None = None,
    paper: str = "",
    tags: tuple[str, ...] = (),
):
    """Register a model constructor under its function name.

    Use bare (``@register_model``) or with metadata (``@register_model(input_size=(3, 32, 32))``).
    The constructor must accept ``num_classes`` and ``in_chans`` keyword arguments (sequence models
    accept ``num_classes`` as their vocabulary/output size and may ignore ``in_chans``).
    """

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = constructor.__name__
        if name in _model_entrypoints and _model_entrypoints[name] is not constructor:
            raise RuntimeError(f"model {name!r} is registered twice")
        module = sys.modules.get(constructor.__module__)
        family = constructor.__module__.rsplit(".", 1)[-1]
        if test_input_size is None:
            small = (input_size if len(input_size) != 3
                     else (input_size[0], min(64, input_size[1]), min(64, input_size[2])))
        else:
            small = test_input_size
        _model_entrypoints[name] = constructor
        _model_info[name] = ModelInfo(
            name=name,
            family=family,
            task=task,
            input_size=tuple(input_size),
            test_input_size=tuple(small),
            min_input_size=min_input_size,
            make_test_input=make_test_input,
            paper=paper or (getattr(module, "PAPER", "") if module else ""),
            tags=tuple(tags),
        )
        return constructor

    if fn is not None:
        return decorator(fn)
    return decorator


def _ensure_loaded() -> None:
    # Importing the package registers every family.
    import dltricks.models  # noqa: F401


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """Registered model names matching a glob ``pattern`` (e.g. ``"resnet*"``), sorted."""
    _ensure_loaded()
    names = sorted(_model_entrypoints)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if task:
        names = [n for n in names if _model_info[n].task == task]
    return names


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    _ensure_loaded()
    if name not in _model_entrypoints:
        raise ModelError(f"unknown model {name!r}.{did_you_mean(name, _model_entrypoints)} "
                         f"Run `dltricks models` to list all {len(_model_entrypoints)} models.")
    return _model_entrypoints[name]


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model."""
    model_entrypoint(name)
    return _model_info[name]


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                 pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the classifier output (default: the constructor's, usually 1000 for
            ImageNet architectures and 10 for CIFAR/MNIST ones).
        in_chans: number of input channels (default: the constructor's, usually 3).
        pretrained: not supported - dltricks trains from scratch and never downloads weights.
        **kwargs: architecture options forwarded to the constructor (``drop_path_rate``...).

    Raises:
        ModelError: unknown name, unsupported option, or bad argument values.
    """
    constructor = model_entrypoint(name)
    if pretrained:
        raise ModelError(f"pretrained weights are not available for {name!r}: dltricks builds models "
                         "from scratch; load your own weights with dltricks.train.load_weights")
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
            raise ModelError(f"in_chans must be a positive integer, got {in_chans!r}")
        kwargs["in_chans"] = in_chans
    signature = inspect.signature(constructor)
    accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_var_kw:
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:
            allowed = [p for p in signature.parameters]
            raise ModelError(f"model {name!r} has no option {unknown[0]!r}.{did_you_mean(unknown[0], allowed)} "
                             f"Options: {', '.join(allowed)}")
    try:
        model = constructor(**kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ModelError(f"model {name!r}: {err}") from err
        raise
    model.model_name = name  # type: ignore[attr-defined]
    return model

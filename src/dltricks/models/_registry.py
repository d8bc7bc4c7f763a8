"""The model registry: build any model by name.

``@register_model`` records a constructor under its function name together with a
:class:`ModelInfo` that says what input the model takes; :func:`create_model` builds it and
:func:`list_models` finds names by glob pattern. An unknown name raises a :class:`ModelError`
that lists the closest registered names. The parametrised suite in ``tests/test_models.py`` reads
:class:`ModelInfo` to build a small test input for every registered model.

Options are checked before a model is built (:func:`check_model_options`): plain values (numbers,
strings, lists) against the constructor's type hints, and every option named in :data:`OPTION_BOUNDS`
(rates in [0, 1), positive sizes...) against its bound, so ``drop_rate=5`` or ``widths=[-4, 8]`` is one
clear :class:`ModelError` instead of a failure deep inside a layer. Options that come from a file (a
checkpoint's metadata, a command line) are also sized before anything is allocated
(:func:`check_model_size` builds the model on the ``meta`` device, which allocates no memory, and refuses
one whose weights exceed :data:`MAX_MODEL_BYTES`).
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import torch
from torch import nn

from dltricks.config import coerce
from dltricks.errors import ArgumentError, ConfigError, ModelError, did_you_mean

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info", "model_entrypoint",
           "check_model_options", "check_model_size", "OPTION_BOUNDS", "MAX_MODEL_BYTES"]


def _rate(value: Any) -> str | None:
    return None if 0.0 <= value < 1.0 else "a rate in [0, 1)"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "a number > 0"


def _positive_sizes(value: Any) -> str | None:
    sizes = value if isinstance(value, (list, tuple)) else [value]
    return None if all(v >= 1 for v in sizes) else "positive sizes (>= 1)"


# Bounds of the option names that the families share (timm's vocabulary); a value of another type is left
# to the type check.
OPTION_BOUNDS: dict[str, Callable[[Any], str | None]] = {
    **dict.fromkeys(("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "block_dropout",
                     "dropout"), _rate),
    **dict.fromkeys(("mlp_ratio", "width_mult"), _positive),
    **dict.fromkeys(("num_classes", "in_chans", "depth", "depths", "embed_dim", "embed_dims", "num_heads",
                     "hidden_size", "hidden", "d_model", "img_size", "patch_size", "max_len", "base_channels",
                     "src_vocab_size", "vocab_size", "output_stride", "widths", "width", "growth_rate"),
                    _positive_sizes),
}

# Largest model (weights and buffers) built from options that come from a file or a command line: far above
# every registered model with its defaults (BERT-base: 0.44 GB), and at most half of this machine's memory.
MAX_MODEL_BYTES = 16 * 2**30


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
    if not isinstance(name, str):
        raise ArgumentError(f"model name must be a string such as 'resnet18', got {type(name).__name__}; "
                            "list_models() gives them all")
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
                 pretrained: bool | str | os.PathLike = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the classifier output (default: the constructor's, usually 1000 for
            ImageNet architectures and 10 for CIFAR/MNIST ones).
        in_chans: number of input channels (default: the constructor's, usually 3).
        pretrained: path of a weight file saved by timm, torchvision or dltricks (``.safetensors``, or ``.pth``
            read with ``weights_only=True``); dltricks never downloads weights, so ``True`` is an error. A
            classifier of another size is re-initialised; ``model.pretrained_report`` says what was loaded
            (see :mod:`dltricks.models._pretrained`).
        **kwargs: architecture options forwarded to the constructor (``drop_path_rate``...).

    Raises:
        ModelError: unknown name, unsupported option, or bad argument values.
    """
    constructor = model_entrypoint(name)
    kwargs = check_model_options(name, kwargs)
    if pretrained is True:
        raise ModelError(f"pretrained=True for {name!r}: dltricks never downloads weights; pass the path of a "
                         "timm/torchvision weight file (pretrained='resnet18.safetensors')")
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
    if pretrained:
        from dltricks.models._pretrained import load_pretrained

        model.pretrained_report = load_pretrained(  # type: ignore[attr-defined]
            model, pretrained, family=_model_info[name].family, name=name)
    return model


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def _numeric(value: Any) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)


def check_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of model ``name`` checked before it is built: plain data (what a command line, a recipe or a
    checkpoint gives) against the type hints of the constructor, then the options named in
    :data:`OPTION_BOUNDS` against their bounds. Returns them (ints widened to floats, lists to tuples, as the
    hints say); a layer class or a function passed by a Python caller is the constructor's to judge."""
    constructor = model_entrypoint(name)
    try:
        hints = get_type_hints(constructor)
    except (NameError, TypeError):  # hints that do not resolve outside the model's module stay unchecked
        hints = {}
    checked = {}
    for key, value in options.items():
        if key in hints and _is_plain(value):
            try:
                value = coerce(value, hints[key], key=f"model {name} option {key}")
            except ConfigError as err:
                raise ModelError(str(err)) from None
        bound = OPTION_BOUNDS.get(key)
        if bound is not None and _numeric(value):
            problem = bound(value)
            if problem:
                raise ModelError(f"model {name} option {key}: got {value!r}, expected {problem}")
        checked[key] = value
    return checked


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None


def check_model_size(name: str, options: dict[str, Any], *, max_bytes: int | None = None) -> int | None:
    """Bytes of the weights and buffers of model ``name`` built with ``options``, measured on the ``meta``
    device (nothing is allocated); a model above ``max_bytes`` (default: :data:`MAX_MODEL_BYTES`, at most half
    of this machine's memory) is a :class:`ModelError`. ``None`` when the model cannot be built there."""
    if max_bytes is None:
        memory = _memory_bytes()
        max_bytes = min(MAX_MODEL_BYTES, memory // 2) if memory else MAX_MODEL_BYTES
    try:
        with torch.device("meta"):
            model = create_model(name, **options)
    except ModelError:
        raise
    except Exception:  # a constructor that needs real tensors: the real build will say what is wrong
        return None
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if size > max_bytes:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ModelError(f"model {name} with {given[:200]} would take {size / 2**30:,.1f} GiB of weights, more than "
                         f"the {max_bytes / 2**30:,.1f} GiB allowed; refused before allocating it (check the options)")
    return size

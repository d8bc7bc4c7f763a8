"""Activation layers selectable by name.

Every entry is a zero-argument constructor, so blocks can take ``act_layer=`` as a name or a callable:

* ``relu`` (Nair & Hinton 2010), ``relu6`` (MobileNet; clipped at 6 for low-precision inference),
  ``leaky_relu`` (slope 0.01 for x < 0; Maas et al. 2013), ``elu``, ``gelu`` (Hendrycks & Gimpel 2016;
  ConvNeXt and Transformers), ``silu`` / ``swish`` (x * sigmoid(x); EfficientNet), ``hardswish``
  (MobileNetV3), ``sigmoid``, ``tanh`` (the saturating activations of LeNet-era nets), ``none``.

ReLU-family layers are created with ``inplace=True``: after a conv or norm the input is not needed for
the backward pass, and the in-place form saves one activation-sized buffer per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from dltricks.errors import ConfigError, did_you_mean

__all__ = ["ACT_LAYERS", "get_act_layer"]

ACT_LAYERS: dict[str, Callable[[], nn.Module]] = {
    "relu": partial(nn.ReLU, inplace=True),
    "relu6": partial(nn.ReLU6, inplace=True),
    "leaky_relu": partial(nn.LeakyReLU, 0.01, inplace=True),
    "elu": partial(nn.ELU, inplace=True),
    "gelu": nn.GELU,
    "silu": partial(nn.SiLU, inplace=True),
    "swish": partial(nn.SiLU, inplace=True),
    "hardswish": partial(nn.Hardswish, inplace=True),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "none": nn.Identity,
}


def get_act_layer(name: str | Callable[[], nn.Module] | None) -> Callable[[], nn.Module]:
    """An activation constructor from its name (see the module docstring); callables pass through."""
    if name is None:
        return nn.Identity
    if callable(name):
        return name
    key = name.lower()
    if key not in ACT_LAYERS:
        raise ConfigError(f"unknown activation {name!r}.{did_you_mean(key, ACT_LAYERS)} "
                          f"Choose from: {', '.join(ACT_LAYERS)}")
    return ACT_LAYERS[key]

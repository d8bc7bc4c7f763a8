"""Weight initialisation shared by the CNN families.

He et al. 2015 ("Delving deep into rectifiers", eq. 10): a ReLU layer keeps the variance of its
signal when its weights have variance ``2 / n``, with ``n`` the fan-in (forward signal) or the fan-out
(backward signal). torchvision and timm initialise convolutions with the fan-out variant,
``std = sqrt(2 / (k*k*C_out))``; the original DenseNet code uses the fan-in one. Normalisation layers
start as the identity (gamma 1, beta 0); classifiers start small so the initial logits are close to
uniform. Each family's docstring says which options it uses; ``zero_init_last`` style tricks (Goyal et
al. 2017) stay in the families that have residual branches.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)

LinearInit = Literal["normal", "uniform_fan_out", "zero_bias", "keep"]


def init_cnn_(model: nn.Module, *, mode: Literal["fan_in", "fan_out"] = "fan_out",
              linear: LinearInit = "normal", linear_std: float = 0.01) -> nn.Module:
    """Initialise ``model`` in place and return it.

    * ``nn.Conv2d``: Kaiming normal with ReLU gain (``mode`` picks fan-in or fan-out); bias zero.
    * affine normalisation layers: weight 1, bias 0.
    * ``nn.Linear`` by ``linear``: ``"normal"`` N(0, ``linear_std``) (VGG, GoogLeNet, MobileNetV2);
      ``"uniform_fan_out"`` U(-1/sqrt(out), 1/sqrt(out)) (EfficientNet's reference code); ``"zero_bias"``
      keeps PyTorch's default weights and zeroes the bias (DenseNet); ``"keep"`` leaves it alone.
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if linear not in ("normal", "uniform_fan_out", "zero_bias", "keep"):
        raise ValueError(f"linear must be 'normal', 'uniform_fan_out', 'zero_bias' or 'keep', got {linear!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "keep":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, linear_std)
            elif linear == "uniform_fan_out":
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model

"""One contract for every segmentation model: encoder -> decoder -> head, one ``forward``.

**Encoder contract.** An :class:`Encoder` maps an image ``(B, in_chans, H, W)`` to a *list* of feature
maps, highest resolution first. It declares what it returns before it runs:

* ``feature_channels[i]``: channels of map ``i``;
* ``feature_strides[i]``: its stride, map ``i`` is ``(B, feature_channels[i], ceil(H / s_i), ceil(W / s_i))``
  (strides never decrease along the list);
* ``output_stride``: the stride of the last map (``feature_strides[-1]``).

A ResNet encoder (:class:`dltricks.models.segmentation.encoders.ResNetEncoder`) returns the stem output and
the four stages, strides ``[2, 4, 8, 16, 32]``. With ``output_stride=16`` or ``8`` the last stages trade
their stride for dilation (DeepLab's atrous trick, Chen et al. 2017): the maps keep resolution
(strides ``[2, 4, 8, 16, 16]`` or ``[2, 4, 8, 8, 8]``) and the receptive field still grows, at the price
of 4x or 16x more compute in the dilated stages. A U-Net encoder returns ``depth + 1`` maps at strides
``1, 2, ..., 2**depth``; built with ``return_indices=True`` it also attaches the max-pooling argmax
positions as ``features.indices`` (a :class:`Features` list) for max-unpooling decoders.
``tests/test_seg_models.py`` checks channels, strides and sizes of every encoder at output stride 8, 16
and 32 and at odd input sizes.

**Decoder contract.** A decoder takes that list and returns one map ``(B, C_dec, H / s, W / s)`` at some
stride ``s`` (1 for U-Net, 4 for DeepLabV3+ and FPN, the output stride for DeepLabV3). It declares
``out_chs``.

**Head.** A 1x1 convolution to ``num_classes`` logits; :meth:`SegmentationModel.forward` finally resizes
the logits bilinearly to the input's ``H x W`` when the decoder stopped at a stride above 1, so every
model returns ``(B, num_classes, H, W)`` for any input size, odd ones included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.checks import check_image_input

__all__ = ["Features", "Encoder", "SegmentationHead", "SegmentationModel", "init_decoder_weights"]


class Features(list):
    """The list of feature maps an encoder returns; ``indices`` holds max-pooling argmax maps when the
    encoder was asked for them (one per downsampling, highest resolution first), else ``None``."""

    indices: list[torch.Tensor] | None = None


class Encoder(nn.Module):
    """Base class of segmentation encoders (see the module docstring for the contract)."""

    in_chans: int
    feature_channels: list[int]
    feature_strides: list[int]

    @property
    def output_stride(self) -> int:
        return self.feature_strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class SegmentationHead(nn.Sequential):
    """Optional dropout, then a 1x1 convolution from the decoder's channels to ``num_classes`` logits."""

    def __init__(self, in_chs: int, num_classes: int, *, drop_rate: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.Dropout2d(drop_rate)] if drop_rate > 0 else []
        layers.append(nn.Conv2d(in_chs, num_classes, 1))
        super().__init__(*layers)


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> head, resized to the input: the one ``forward`` of every segmentation model.

    Args:
        encoder: an :class:`Encoder`.
        decoder: module mapping the encoder's list to one map with ``decoder.out_chs`` channels.
        num_classes: logits per pixel (1 for a binary problem trained with a sigmoid).
        min_input_size: smallest ``H`` and ``W`` accepted (checked at the entrance with a clear error).
        drop_rate: dropout before the classifier.
    """

    def __init__(self, encoder: Encoder, decoder: nn.Module, *, num_classes: int, min_input_size: int = 1,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = SegmentationHead(decoder.out_chs, num_classes, drop_rate=drop_rate)
        self.num_classes = num_classes
        self.in_chans = encoder.in_chans
        self.min_input_size = min_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_input_size,
                          model=getattr(self, "model_name", type(self).__name__))
        features = self.encoder(x)  # [(B, C_i, H / s_i, W / s_i)], highest resolution first
        y = self.decoder(features)  # (B, C_dec, H / s, W / s)
        logits = self.head(y)  # (B, num_classes, H / s, W / s)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits  # (B, num_classes, H, W)


def init_decoder_weights(module: nn.Module) -> None:
    """He-normal (fan-out) convs with zero bias, norms at weight 1 / bias 0, as the ResNet encoders."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

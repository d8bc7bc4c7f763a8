"""Segmentation models: one contract (encoder -> decoder -> head, :mod:`.base`), five families.

* :mod:`.unet`: ``unet`` (Ronneberger et al. 2015) and ``unet_small`` (16 base channels, the CPU recipe);
* :mod:`.deeplab`: ``deeplabv3_resnet50/101`` and ``deeplabv3plus_resnet50/101`` (Chen et al. 2017/2018);
* :mod:`.fpn`: ``fpn_resnet18/50`` (Lin et al. 2017; Kirillov et al. 2019);
* :mod:`.token_mixer`: ``vim_seg_tiny`` and ``mambaout_seg_tiny``, plain Vision Mamba / MambaOut encoders
  (the test of MambaOut's Hypothesis 2);
* :mod:`.encoders`: the ResNet encoder wrapper; :mod:`.inference`: sliding-window prediction and PNG masks.

Every model is registered with ``task="segmentation"`` and returns ``(B, num_classes, H, W)`` logits for
an input ``(B, in_chans, H, W)`` of any size (odd sizes included).
"""

from dltricks.models.segmentation.base import Encoder, Features, SegmentationHead, SegmentationModel
from dltricks.models.segmentation.encoders import ResNetEncoder
from dltricks.models.segmentation import unet  # noqa: F401
from dltricks.models.segmentation import deeplab  # noqa: F401
from dltricks.models.segmentation import fpn  # noqa: F401
from dltricks.models.segmentation import token_mixer  # noqa: F401

__all__ = ["Encoder", "Features", "SegmentationHead", "SegmentationModel", "ResNetEncoder"]

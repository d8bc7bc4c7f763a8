"""Plain token-mixer encoders for segmentation: Vision Mamba blocks vs MambaOut's Gated CNN blocks.

The test of MambaOut's Hypothesis 2 (``ssm.mambaout-h2``): is an SSM worth having on a long but *non-causal*
visual task? Both encoders are the same plain (non-hierarchical) stack; only the token mixer differs:

    stem  = ConvNormAct_3x3(image)                         (B, C_s, H, W)       full-resolution detail
    t     = PatchEmbed_PxP(image)                          (B, H/P, W/P, D)     N = HW / P^2 tokens
    t     = t + Mixer(Norm(t))  x depth                    residual blocks, pre-norm
    maps  = [stem, Norm(t) as (B, D, H/P, W/P)]            strides [1, P]

* ``mixer="vim"``: Vision Mamba's block (:class:`~dltricks.layers.ssm.BiMamba` in a
  :class:`~dltricks.layers.ssm.MambaBlock`, RMSNorm): the tokens are flattened row-major and scanned
  forward and backward, so every token sees the whole image (Zhu et al. 2024). No position table: the scan
  order already tells the SSM where a token is, and a table would tie the encoder to one crop size.
* ``mixer="mambaout"``: MambaOut's Gated CNN block (:class:`~dltricks.layers.ssm.GatedCNNBlock`, LayerNorm),
  the Mamba block without its SSM, mixing tokens with a 7x7 depthwise convolution (Yu & Wang 2024), so a
  token sees a window that grows by 6 tokens per block.

The decoder resizes the token map to the stem's resolution, concatenates the two and applies a double 3x3
convolution; the head is the usual 1x1 convolution. With ``embed_dim`` 32, ``depth`` 2 the two encoders have
about the same number of parameters (the Gated CNN's 8/3 expansion against BiMamba's two directions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.conv import ConvNormAct
from dltricks.layers.patch_embed import PatchEmbed
from dltricks.layers.ssm.gated_cnn import GatedCNNBlock
from dltricks.layers.ssm.mamba import BiMamba, MambaBlock
from dltricks.models._registry import register_model
from dltricks.models.segmentation.base import Encoder, Features, SegmentationModel, init_decoder_weights
from dltricks.models.segmentation.unet import DoubleConv

__all__ = ["MIXERS", "TokenMixerEncoder", "TokenMixerDecoder", "TokenMixerSegmenter", "vim_seg_tiny",
           "mambaout_seg_tiny"]

MIXERS = ("vim", "mambaout")
PAPERS = ("Zhu et al., Vision Mamba, ICML 2024 (arXiv:2401.09417); Yu & Wang, MambaOut: Do We Really Need Mamba "
          "for Vision?, 2024 (arXiv:2405.07992)")


class TokenMixerEncoder(Encoder):
    """A plain stack of ``depth`` token-mixing blocks on ``patch_size`` patches (module docstring).

    Returns two maps: the stem's (stride 1, ``stem_chs`` channels) and the normed tokens' (stride
    ``patch_size``, ``embed_dim`` channels). An input that is not a multiple of ``patch_size`` is zero-padded
    at the bottom and right before patching.
    """

    def __init__(self, *, mixer: str, in_chans: int = 1, embed_dim: int = 32, depth: int = 2, patch_size: int = 2,
                 stem_chs: int = 16, d_state: int = 8, expand: float = 2, kernel_size: int = 7) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; expected one of {', '.join(MIXERS)}")
        self.mixer, self.in_chans, self.patch_size = mixer, in_chans, patch_size
        self.feature_channels, self.feature_strides = [stem_chs, embed_dim], [1, patch_size]
        self.stem = ConvNormAct(in_chans, stem_chs, 3)
        self.patch_embed = PatchEmbed(patch_size, patch_size, in_chans, embed_dim, pad=True, flatten=False)
        if mixer == "vim":
            self.blocks = nn.ModuleList(
                MambaBlock(embed_dim, BiMamba(embed_dim, d_state=d_state, expand=expand), norm="rms")
                for _ in range(depth))
            self.norm: nn.Module = nn.RMSNorm(embed_dim, eps=1e-5)
        else:
            self.blocks = nn.ModuleList(GatedCNNBlock(embed_dim, kernel_size=kernel_size) for _ in range(depth))
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.stem(x)  # (B, C_s, H, W)
        t = self.patch_embed(x)  # (B, ceil(H/P), ceil(W/P), D): a partial last patch is zero-padded
        b, h, w, d = t.shape
        if self.mixer == "vim":
            seq = t.reshape(b, h * w, d)  # (B, N, D), row-major: the order both scan directions follow
            for block in self.blocks:
                seq = block(seq)
            t = seq.reshape(b, h, w, d)
        else:
            for block in self.blocks:
                t = block(t)  # (B, H/P, W/P, D)
        tokens = self.norm(t).permute(0, 3, 1, 2).contiguous()  # (B, D, H/P, W/P)
        return Features([stem, tokens])


class TokenMixerDecoder(nn.Module):
    """Resize the token map to the stem's size, concatenate the stem's map, double 3x3 convolution."""

    def __init__(self, encoder_channels: list[int], *, out_chs: int = 16) -> None:
        super().__init__()
        self.conv = DoubleConv(sum(encoder_channels), out_chs)
        self.out_chs = out_chs
        init_decoder_weights(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        stem, tokens = features
        up = F.interpolate(tokens, size=stem.shape[-2:], mode="bilinear", align_corners=False)  # (B, D, H, W)
        return self.conv(torch.cat([stem, up], dim=1))  # (B, out_chs, H, W)


class TokenMixerSegmenter(SegmentationModel):
    """:class:`TokenMixerEncoder` -> :class:`TokenMixerDecoder` -> 1x1 head (keyword arguments: the encoder's)."""

    def __init__(self, *, mixer: str, num_classes: int = 1, in_chans: int = 1, embed_dim: int = 32, depth: int = 2,
                 patch_size: int = 2, stem_chs: int = 16, decoder_chs: int = 16, **encoder_kwargs) -> None:
        encoder = TokenMixerEncoder(mixer=mixer, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                                    patch_size=patch_size, stem_chs=stem_chs, **encoder_kwargs)
        decoder = TokenMixerDecoder(encoder.feature_channels, out_chs=decoder_chs)
        super().__init__(encoder, decoder, num_classes=num_classes, min_input_size=1)


_SEG = dict(task="segmentation", paper=PAPERS, input_size=(1, 128, 128), test_input_size=(1, 32, 32),
            min_input_size=1)


@register_model(**_SEG)
def vim_seg_tiny(*, num_classes: int = 1, in_chans: int = 1, **kwargs) -> TokenMixerSegmenter:
    """Two Vision Mamba blocks (D 32, 2x2 patches: 4,096 tokens on a 128 px crop) as a segmentation encoder."""
    return TokenMixerSegmenter(mixer="vim", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_SEG)
def mambaout_seg_tiny(*, num_classes: int = 1, in_chans: int = 1, **kwargs) -> TokenMixerSegmenter:
    """Two MambaOut Gated CNN blocks (D 32, 2x2 patches) as a segmentation encoder: vim_seg_tiny without SSM."""
    return TokenMixerSegmenter(mixer="mambaout", num_classes=num_classes, in_chans=in_chans, **kwargs)

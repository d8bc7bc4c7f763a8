"""DETR: detection as direct set prediction with a Transformer encoder-decoder and a Hungarian loss.

Paper: Carion, Massa, Synnaeve, Usunier, Kirillov & Zagoruyko, "End-to-End Object Detection with
Transformers", ECCV 2020.

**Model** (paper Fig. 2). A CNN gives a map ``(B, C, h, w)``; a 1x1 conv projects it to ``D`` channels and its
``h w`` cells become tokens. A Transformer encoder mixes them; a decoder turns ``Q`` learned *object queries*
into ``Q`` output embeddings by self-attention among the queries and cross-attention to the encoder's tokens.
Two heads shared by every query give a softmax over ``K`` classes plus "no object" and a box
``sigmoid(MLP(e)) = (cx, cy, w, h)`` normalised by the image size. Positions enter every attention layer,
added to queries and keys only (:mod:`dltricks.layers.transformer`): the 2-D sine code of each token
(:func:`dltricks.layers.position.sine_position_encoding_2d`) in the encoder and on the memory's keys in the
decoder's cross-attention, the learned query embedding on the decoder's queries, whose input starts at zero.

**Hungarian loss** (Eq. 1-2, :class:`dltricks.tasks.detection.losses.DETRLoss`). Each image's ``M`` boxes are
matched one-to-one to queries by the least-cost assignment with

    cost(q, m) = - p_q(c_m) + 5 ||b_q - b_m||_1 - 2 GIoU(b_q, b_m)

and the loss is, over all queries, the cross-entropy against the matched class or "no object" (whose weight
is 0.1 to balance the many unmatched queries), plus ``5 L1 + 2 (1 - GIoU)`` on matched pairs, divided by the
number of boxes in the batch. With ``aux_loss`` every decoder layer's output goes through the same (shared)
heads and adds its own matched loss (paper Sec. 3.2, "auxiliary decoding losses").

**Post-processing.** Each query's best class (not "no object") and its probability give one detection per
query; no NMS, since the set loss already penalises two queries on one object (paper Sec. 4.2, Fig. 4: NMS
helps the predictions of the first decoder layer, not those of the last).

Not as in the paper: pre-LN layers by default (``norm_first=True``, Xiong et al. 2020), trained at the other
detectors' learning rate without the paper's 300-500 epochs; the backbone is a two-stage small ResNet at
stride 8 (an 8 x 8 token grid on 64 px) instead of a ResNet-50 at stride 32; no dropout.

**Measured** (``benchmarks/detection_mnist.py``, 10 epochs, seed 0, n = 1, docs/detection.md): COCO mAP 0.116
(AP50 0.255) at stride 8 and 0.044 (AP50 0.120) at stride 16 (4 x 4 tokens), against 0.54-0.58 for YOLO,
RetinaNet and FCOS with the same recipe. Training and validation loss agreed and were still falling; 20
epochs at stride 8 gave 0.353 (AP50 0.625). DETR converges slowly, as the paper reports.

**Output** (training and evaluation mode): ``logits (B, Q, K)`` and ``no_object_logits (B, Q, 1)`` (the
``K + 1`` logits of the softmax), ``boxes (B, Q, 4)`` normalised ``cxcywh``, ``image_size (B, 2)`` (``H, W``);
with ``aux_loss`` also ``aux_logits (B, L - 1, Q, K + 1)`` and ``aux_boxes (B, L - 1, Q, 4)`` for the first
``L - 1`` decoder layers.
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.boxes import box_convert, clip_boxes
from dltricks.layers.position import sine_position_encoding_2d
from dltricks.layers.transformer import TransformerDecoder, TransformerEncoder
from dltricks.models._registry import register_model
from dltricks.models.detection.base import backbone_for_stride

__all__ = ["DETR", "detr_tiny"]

PAPER = "Carion et al., End-to-End Object Detection with Transformers, ECCV 2020 (DETR)"


class DETR(nn.Module):
    """DETR (see the module docstring).

    Args:
        num_classes: object classes (the head adds "no object").
        in_chans: image channels.
        backbone: a ResNet with ``forward_features_list``; its last map is used (default:
            :func:`backbone_for_stride` at ``stride``).
        embed_dim, num_heads, mlp_ratio: Transformer width, heads and MLP width as a multiple of it.
        enc_depth, dec_depth: encoder and decoder layers (the paper: 6 and 6).
        num_queries: object queries, the most objects one image can hold (the paper: 100).
        aux_loss: also output every earlier decoder layer's predictions.
        norm_first: pre-LN (True) or the paper's post-LN layers.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, backbone: nn.Module | None = None,
                 stride: int = 8, embed_dim: int = 64, num_heads: int = 4, mlp_ratio: float = 4.0,
                 enc_depth: int = 2, dec_depth: int = 3, num_queries: int = 10, aux_loss: bool = True,
                 norm_first: bool = True, min_input_size: int = 32) -> None:
        super().__init__()
        for key, value in (("num_classes", num_classes), ("num_queries", num_queries), ("dec_depth", dec_depth)):
            if value < 1:
                raise ModelError(f"DETR needs {key} >= 1, got {value}")
        if embed_dim % 4 or embed_dim % num_heads:
            raise ModelError(f"DETR needs embed_dim divisible by 4 and by num_heads ({num_heads}), got {embed_dim}")
        self.num_classes, self.in_chans, self.min_input_size = num_classes, in_chans, min_input_size
        self.num_queries, self.aux_loss = num_queries, aux_loss
        self.backbone = backbone if backbone is not None else backbone_for_stride(in_chans, stride)
        self.input_proj = nn.Conv2d(self.backbone.feature_channels[-1], embed_dim, 1)
        layer = dict(mlp_ratio=mlp_ratio, norm_first=norm_first, act_layer=nn.ReLU)
        self.encoder = TransformerEncoder(embed_dim, enc_depth, num_heads, **layer)
        # The decoder's final norm also normalises the auxiliary outputs (DETR applies it to every layer).
        self.decoder = TransformerDecoder(embed_dim, dec_depth, num_heads, final_norm=True, **layer)
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.class_head = nn.Linear(embed_dim, num_classes + 1)
        self.box_head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                      nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                      nn.Linear(embed_dim, 4))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ModelError(f"DETR expects input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ModelError(f"DETR got an empty batch (input of shape {tuple(x.shape)}); pass at least one image")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ModelError(f"DETR needs input of at least {self.min_input_size}x{self.min_input_size} pixels, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(x)
        src = self.input_proj(self.backbone.forward_features_list(x)[-1])  # (B, D, h, w)
        B, D, h, w = src.shape
        tokens = src.flatten(2).transpose(1, 2)  # (B, h * w, D)
        pos = sine_position_encoding_2d(h, w, D, device=src.device, dtype=src.dtype)[None]  # (1, h * w, D)
        memory = self.encoder(tokens, pos=pos)  # (B, h * w, D)
        query_pos = self.query_embed.weight[None].expand(B, -1, -1)  # (B, Q, D)
        hidden, per_layer = torch.zeros_like(query_pos), []
        for layer in self.decoder.layers:
            hidden = layer(hidden, memory, is_causal=False, query_pos=query_pos, memory_pos=pos)
            per_layer.append(self.decoder.norm(hidden))
        if not self.aux_loss:
            per_layer = per_layer[-1:]
        stacked = torch.stack(per_layer, dim=1)  # (B, L, Q, D)
        logits = self.class_head(stacked)  # (B, L, Q, K + 1)
        boxes = self.box_head(stacked).sigmoid()  # (B, L, Q, 4) normalised cxcywh
        size = torch.tensor([float(x.shape[-2]), float(x.shape[-1])], device=x.device, dtype=logits.dtype)
        out = {"logits": logits[:, -1, :, :-1], "no_object_logits": logits[:, -1, :, -1:], "boxes": boxes[:, -1],
               "image_size": size.expand(B, 2)}
        if self.aux_loss and len(per_layer) > 1:
            out["aux_logits"], out["aux_boxes"] = logits[:, :-1], boxes[:, :-1]
        return out

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, Q, 4)`` xyxy in pixels (clipped to the image) and class probabilities ``(B, Q, K)``."""
        H, W = (float(v) for v in output["image_size"][0])
        scale = torch.tensor([W, H, W, H], device=output["boxes"].device)
        boxes = clip_boxes(box_convert(output["boxes"].float(), "cxcywh", "xyxy") * scale, (H, W))
        logits = torch.cat([output["logits"], output["no_object_logits"]], dim=-1).float()
        return boxes, logits.softmax(-1)[..., :-1]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                max_detections: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per-image ``(boxes (n, 4) xyxy, scores (n,), labels (n,))`` for a batch of images."""
        return self.postprocess(self(x), score_thresh=score_thresh, max_detections=max_detections)

    @classmethod
    def postprocess(cls, output: dict[str, torch.Tensor], *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                    max_detections: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One detection per query: its best class and that class's probability, those above ``score_thresh``,
        by decreasing score. ``nms_thresh`` is accepted for the common interface and not used (no NMS)."""
        boxes, probs = cls.decode(output)
        out = []
        for b, p in zip(boxes, probs):
            scores, labels = p.max(dim=-1)  # (Q,)
            keep = (scores > score_thresh).nonzero().squeeze(1)
            keep = keep[scores[keep].argsort(descending=True, stable=True)][:max_detections]
            out.append((b[keep], scores[keep], labels[keep]))
        return out


@register_model(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=32,
                paper=PAPER)
def detr_tiny(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> DETR:
    """DETR for 64 px MNIST scenes: 2-stage small ResNet (stride 8, an 8 x 8 token grid on 64 px), D = 64,
    4 heads, 2 encoder and 3 decoder layers, 10 queries, auxiliary losses."""
    return DETR(num_classes=num_classes, in_chans=in_chans, **kwargs)

"""DETR and the YOLO-style detector: their from-scratch parts against references.

* the 2-D sine position code against a loop over Python floats;
* the Transformer layers with DETR's per-layer positions against DETR's own layer written with
  ``nn.MultiheadAttention`` (the reference implementation's ``forward_post`` / ``forward_pre``);
* the Hungarian loss against a brute-force search over every query permutation, its terms recomputed by hand;
* the YOLO target assignment and box decoding against loops.

The shared suite (tests/test_models.py) and the overfit test (tests/test_det_models.py) cover both models as
they cover every detector.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks import create_model
from dltricks.errors import ModelError
from dltricks.layers.boxes import box_convert, generalized_box_iou
from dltricks.layers.position import sine_position_encoding_2d, sinusoidal_position_encoding
from dltricks.layers.transformer import TransformerDecoderLayer, TransformerEncoderLayer
from dltricks.models.detection.yolo import decode_yolo
from dltricks.tasks.detection import DETRLoss, YOLOLoss, assign_yolo
from dltricks.tasks.detection.matching import hungarian_cost


@pytest.mark.parametrize("normalize", [True, False])
def test_sine_position_encoding_2d_matches_a_loop(normalize: bool) -> None:
    H, W, D, base = 3, 5, 8, 10000.0
    pe = sine_position_encoding_2d(H, W, D, normalize=normalize, dtype=torch.float64)
    assert pe.shape == (H * W, D)
    half = D // 2
    for i in range(H):
        for j in range(W):
            y = 2 * math.pi * (i + 1) / H if normalize else i + 1.0
            x = 2 * math.pi * (j + 1) / W if normalize else j + 1.0
            for c in range(half):
                freq = base ** (-2 * (c // 2) / half)
                f = math.sin if c % 2 == 0 else math.cos
                assert math.isclose(pe[i * W + j, c].item(), f(y * freq), abs_tol=1e-12)
                assert math.isclose(pe[i * W + j, half + c].item(), f(x * freq), abs_tol=1e-12)
    if not normalize:  # each half is the 1-D table at positions 1, 2, ...
        torch.testing.assert_close(pe.view(H, W, D)[:, 0, :half],
                                   sinusoidal_position_encoding(H, half, offset=1, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding_2d(2, 2, 6)


def _detr_encoder_reference(ref: nn.TransformerEncoderLayer, x: torch.Tensor, pos: torch.Tensor,
                            norm_first: bool) -> torch.Tensor:
    """DETR's TransformerEncoderLayer (forward_post / forward_pre) on the modules of a torch layer."""
    def ffn(h):
        return ref.linear2(F.relu(ref.linear1(h)))

    if norm_first:
        h = ref.norm1(x)
        x = x + ref.self_attn(h + pos, h + pos, h, need_weights=False)[0]
        return x + ffn(ref.norm2(x))
    x = ref.norm1(x + ref.self_attn(x + pos, x + pos, x, need_weights=False)[0])
    return ref.norm2(x + ffn(x))


def _detr_decoder_reference(ref: nn.TransformerDecoderLayer, x: torch.Tensor, memory: torch.Tensor,
                            query_pos: torch.Tensor, pos: torch.Tensor, norm_first: bool) -> torch.Tensor:
    def ffn(h):
        return ref.linear2(F.relu(ref.linear1(h)))

    if norm_first:
        h = ref.norm1(x)
        x = x + ref.self_attn(h + query_pos, h + query_pos, h, need_weights=False)[0]
        h = ref.norm2(x)
        x = x + ref.multihead_attn(h + query_pos, memory + pos, memory, need_weights=False)[0]
        return x + ffn(ref.norm3(x))
    x = ref.norm1(x + ref.self_attn(x + query_pos, x + query_pos, x, need_weights=False)[0])
    x = ref.norm2(x + ref.multihead_attn(x + query_pos, memory + pos, memory, need_weights=False)[0])
    return ref.norm3(x + ffn(x))


@torch.no_grad()
def _copy_layer(ours: nn.Module, ref: nn.Module) -> None:
    """Weights of a torch encoder/decoder layer into ours (as tests/test_transformer.py does)."""
    ours.mlp.fc1.load_state_dict(ref.linear1.state_dict())
    ours.mlp.fc2.load_state_dict(ref.linear2.state_dict())
    if isinstance(ours, TransformerEncoderLayer):
        ours.attn.load_from_torch(ref.self_attn)
    else:
        ours.self_attn.load_from_torch(ref.self_attn)
        ours.cross_attn.load_from_torch(ref.multihead_attn)
        ours.norm3.load_state_dict(ref.norm3.state_dict())
    ours.norm1.load_state_dict(ref.norm1.state_dict())
    ours.norm2.load_state_dict(ref.norm2.state_dict())


@pytest.mark.parametrize("norm_first", [True, False])
def test_layers_with_positions_match_detr_reference(norm_first: bool) -> None:
    torch.manual_seed(0)
    kw = dict(mlp_ratio=2, norm_first=norm_first, act_layer=nn.ReLU, norm_layer=nn.LayerNorm)
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = TransformerEncoderLayer(16, 4, **kw).eval()
    _copy_layer(ours, ref)
    x, pos = torch.randn(2, 6, 16), torch.randn(1, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, pos=pos), _detr_encoder_reference(ref, x, pos, norm_first))
        torch.testing.assert_close(ours(x), ref(x))  # without positions: unchanged

    dref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    dec = TransformerDecoderLayer(16, 4, **kw).eval()
    _copy_layer(dec, dref)
    tgt, memory, query_pos = torch.randn(2, 3, 16), torch.randn(2, 6, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        got = dec(tgt, memory, is_causal=False, query_pos=query_pos, memory_pos=pos)
        torch.testing.assert_close(got, _detr_decoder_reference(dref, tgt, memory, query_pos, pos, norm_first))


def _random_boxes(n: int, g: torch.Generator, size: float = 64.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.6
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.35], dim=1)


@pytest.mark.parametrize("seed", range(4))
def test_detr_loss_matches_brute_force_permutations(seed: int) -> None:
    """Q = 4 queries, image 0 with 3 boxes and image 1 with 1: the loss equals the one computed by hand from the
    cheapest of all query permutations (aux outputs included)."""
    g = torch.Generator().manual_seed(seed)
    B, Q, K, L = 2, 4, 3, 2
    H, W = 64.0, 48.0
    logits = torch.randn(B, L, Q, K + 1, generator=g, dtype=torch.float64)
    boxes = torch.rand(B, L, Q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2  # normalised cxcywh
    gt = [_random_boxes(3, g, 48.0), _random_boxes(1, g, 48.0)]
    labels = [torch.randint(0, K, (3,), generator=g), torch.randint(0, K, (1,), generator=g)]
    targets = torch.full((B, 3, 5), -1.0, dtype=torch.float64)
    for i in range(B):
        targets[i, :len(gt[i]), :4], targets[i, :len(gt[i]), 4] = gt[i], labels[i].double()
    output = {"logits": logits[:, -1, :, :K], "no_object_logits": logits[:, -1, :, K:], "boxes": boxes[:, -1],
              "image_size": torch.tensor([[H, W]] * B), "aux_logits": logits[:, :-1], "aux_boxes": boxes[:, :-1]}
    loss_fn = DETRLoss(K)
    loss = loss_fn(output, targets)

    scale = torch.tensor([W, H, W, H], dtype=torch.float64)
    expected = 0.0
    for layer in range(L):
        ce_num = ce_den = l1 = giou = 0.0
        for i in range(B):
            probs = logits[i, layer].softmax(-1)
            pred = box_convert(boxes[i, layer], "cxcywh", "xyxy")
            gt_n = gt[i] / scale
            cost = hungarian_cost(probs, pred, gt_n, labels[i])
            M = len(gt_n)
            best = min(itertools.permutations(range(Q), M), key=lambda p: sum(cost[q, m].item() for m, q in
                                                                                 enumerate(p)))
            target = [K] * Q
            for m, q in enumerate(best):
                target[q] = int(labels[i][m])
                l1 += (boxes[i, layer, q] - box_convert(gt_n[m], "xyxy", "cxcywh")).abs().sum().item()
                giou += 1 - generalized_box_iou(pred[q:q + 1], gt_n[m:m + 1]).item()
            for q in range(Q):
                w = 0.1 if target[q] == K else 1.0
                ce_num += -w * logits[i, layer, q].log_softmax(-1)[target[q]].item()
                ce_den += w
        expected += ce_num / ce_den + 5 * l1 / 4 + 2 * giou / 4  # 4 boxes in the batch
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert set(loss_fn.last) == {"ce", "l1", "giou"}


def test_detr_loss_takes_empty_images_and_postprocess_keeps_one_box_per_query() -> None:
    torch.manual_seed(0)
    model = create_model("detr_tiny", num_queries=5)
    out = model(torch.randn(2, 1, 64, 64))
    loss_fn = DETRLoss(10)
    loss = loss_fn(out, torch.tensor([[[0, 0, 0, 0, -1.0]], [[0, 0, 0, 0, -1.0]]]))
    assert torch.isfinite(loss) and loss_fn.last["l1"] == loss_fn.last["giou"] == 0.0
    loss.backward()
    assert model.class_head.weight.grad.abs().sum() > 0
    model.eval()
    for boxes, scores, labels in model.predict(torch.randn(3, 1, 64, 64), score_thresh=0.0):
        assert len(boxes) == len(scores) == len(labels) == 5  # one per query, nothing suppressed
        assert ((boxes >= 0) & (boxes <= 64)).all() and (scores[:-1] >= scores[1:]).all()
    with pytest.raises(ModelError, match="stride must be 8, 16 or 32"):
        create_model("detr_tiny", stride=4)


def _assign_loop(priors: torch.Tensor, stride: float, anchors: list[tuple[float, float]], grid_w: int,
                 boxes: torch.Tensor) -> list[int]:
    """The YOLO rule one box at a time: its centre's cell, the best-IoU anchor shape there, later boxes win."""
    out = [-1] * len(priors)
    for m, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        j, i = math.floor((x1 + x2) / 2 / stride), math.floor((y1 + y2) / 2 / stride)
        w, h = x2 - x1, y2 - y1
        ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in anchors]
        a = ious.index(max(ious))
        out[(i * grid_w + j) * len(anchors) + a] = m
    return out


@pytest.mark.parametrize("seed", range(6))
def test_yolo_assignment_matches_a_loop(seed: int) -> None:
    model = create_model("yolo_tiny")
    stride, grid = float(model.strides[0]), (8, 10)
    priors = model.priors(grid).double()
    g = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(6, g, 64.0)
    boxes[5] = boxes[0]  # two boxes with one cell and one shape: the later one keeps the anchor
    got = assign_yolo(priors, torch.full((len(priors),), stride, dtype=torch.float64), boxes)
    assert got.tolist() == _assign_loop(priors, stride, list(model.anchor_wh), grid[1], boxes)
    assert 0 not in got.tolist() and 5 in got.tolist()
    assert (assign_yolo(priors, torch.full((len(priors),), stride), boxes[:0]) == -1).all()


def test_yolo_decoding_and_targets_invert_each_other() -> None:
    """Offsets built from the docstring's targets decode back to the box, and then the box term is zero."""
    model = create_model("yolo_tiny")
    priors = model.priors((8, 8))
    s = float(model.strides[0])
    strides = torch.full((len(priors), 1), s)
    boxes = torch.tensor([[3.0, 5.0, 14.0, 22.0], [30.0, 33.0, 47.0, 50.0]])
    matched = assign_yolo(priors, strides[:, 0], boxes)
    pos = matched >= 0
    gt, p = boxes[matched[pos]], priors[pos]
    corner = (p[:, :2] + p[:, 2:]) / 2 - s / 2
    frac = ((gt[:, :2] + gt[:, 2:]) / 2 - corner) / s
    offsets = torch.zeros(1, len(priors), 4)
    offsets[0, pos] = torch.cat([torch.logit(frac), torch.log((gt[:, 2:] - gt[:, :2]) / (p[:, 2:] - p[:, :2]))], 1)
    torch.testing.assert_close(decode_yolo(offsets[0, pos], p, strides[pos]), gt)
    output = {"logits": torch.zeros(1, len(priors), 10), "objectness": torch.zeros(1, len(priors), 1),
              "offsets": offsets, "priors": priors[None], "strides": strides[None]}
    loss_fn = YOLOLoss(10)
    loss_fn(output, torch.cat([boxes, torch.tensor([[1.0], [2.0]])], 1)[None])
    assert loss_fn.last["box"] < 1e-10 and math.isclose(loss_fn.last["cls"], 2 * math.log(10), rel_tol=1e-6)

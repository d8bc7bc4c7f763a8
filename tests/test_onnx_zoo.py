"""ONNX export of every model family of the zoo, run in onnxruntime against PyTorch (issue 17).

One small member per family (the registry's ``family``: the module its constructor lives in), shrunk with its
own options where it has them so the whole file stays fast. :func:`dltricks.compress.export_onnx` exports it
with the dynamo exporter and a dynamic batch dimension, then runs the file in onnxruntime on a batch of
another size and compares every output (logits, per-pixel logits, each detection map) with PyTorch's to
``atol + rtol * |y|``; the test then checks a third batch size itself. Families the exporter cannot handle are
listed in :data:`NOT_EXPORTED` with the reason; a family in neither list fails the completeness test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from dltricks.compress import export_onnx, onnx_session
from dltricks.compress.export import ATOL, RTOL, run_onnx_all, torch_outputs
from dltricks.errors import ModelError
from dltricks.models import create_model, list_models, model_info
from dltricks.models.convnext import ConvNeXt
from dltricks.models.densenet import DenseNet
from dltricks.models.mobilenet import MOBILENET_V2_SETTINGS, MobileNetV2
from dltricks.models.swin import SwinTransformer


def _image(*shape: int) -> Callable[[nn.Module, int], tuple[torch.Tensor, ...]]:
    return lambda model, batch: (torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1)),)


def _tokens(length: int, vocab: int) -> Callable[[nn.Module, int], tuple[torch.Tensor, ...]]:
    return lambda model, batch: (torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(1)),)


def _seq2seq(model: nn.Module, batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 32, (batch, 7), generator=g), torch.randint(3, 32, (batch, 5), generator=g)


# family -> (model name, constructor options, input maker). Small options keep the traced graph short: the
# exporter's time grows with the number of ops, not with the size of the weights.
FAMILIES: dict[str, tuple[str, dict[str, Any], Callable[[nn.Module, int], tuple[torch.Tensor, ...]]]] = {
    "simple": ("small_cnn", {"num_classes": 4, "widths": (8, 16)}, _image(1, 16, 16)),
    "sngp": ("sngp_mlp", {"num_classes": 4, "img_size": 16, "width": 16, "num_random_features": 32}, _image(1, 16, 16)),
    "lenet": ("lenet5", {"num_classes": 4}, _image(1, 28, 28)),
    "alexnet": ("alexnet", {"num_classes": 4}, _image(3, 67, 67)),
    "vgg": ("vgg16_bn_cifar", {"num_classes": 4}, _image(3, 32, 32)),  # the 15 M-parameter CIFAR VGG: same blocks
    "airbench": ("airbench_cifar", {"num_classes": 4, "widths": (8, 16, 16)}, _image(3, 32, 32)),
    "nas_cnn": ("nas_cnn", {"num_classes": 4, "widths": (8, 8, 16)}, _image(1, 16, 16)),
    "resnet": ("resnet20", {"num_classes": 4}, _image(3, 16, 16)),
    "preact_resnet": ("preact_resnet18_cifar", {"num_classes": 4}, _image(3, 16, 16)),
    "wide_resnet": ("wide_resnet28_10", {"num_classes": 4}, _image(3, 8, 8)),
    "densenet": ("densenet_bc100_cifar", {"num_classes": 4}, _image(3, 16, 16)),
    "googlenet": ("googlenet", {"num_classes": 4}, _image(3, 32, 32)),
    "inception": ("inception_v3", {"num_classes": 4}, _image(3, 75, 75)),
    "xception": ("xception", {"num_classes": 4}, _image(3, 32, 32)),
    "mobilenet": ("mobilenet_v2", {"num_classes": 4, "width_mult": 0.25}, _image(3, 32, 32)),
    "efficientnet": ("efficientnet_b0", {"num_classes": 4}, _image(3, 32, 32)),
    "convnext": ("convnext_tiny", {"num_classes": 4}, _image(3, 32, 32)),
    "mambaout": ("mambaout_cifar_mini", {"num_classes": 4}, _image(3, 32, 32)),
    "vit": ("vit_cifar_patch4_32", {"num_classes": 4}, _image(3, 32, 32)),
    "mlp_mixer": ("mixer_cifar_patch4_32", {"num_classes": 4}, _image(3, 32, 32)),
    "vim": ("vim_tiny_cifar", {"num_classes": 4, "depth": 1, "embed_dim": 16, "img_size": 8}, _image(3, 8, 8)),
    "mamba": ("mamba_cls_tiny", {"num_classes": 4, "depth": 1, "d_model": 16}, _image(6, 1)),
    "bert": ("bert_tiny_cls", {"num_classes": 4, "vocab_size": 64, "max_len": 16}, _tokens(8, 64)),
    "transformer": ("transformer_tiny", {"num_classes": 32, "src_vocab_size": 32}, _seq2seq),
    "unet": ("unet_small", {"num_classes": 2, "base_channels": 4, "depth": 2}, _image(1, 16, 16)),
    "fpn": ("fpn_resnet18", {"num_classes": 3}, _image(3, 32, 32)),
    "deeplab": ("deeplabv3plus_resnet50", {"num_classes": 3}, _image(3, 32, 32)),
    "token_mixer": ("mambaout_seg_tiny", {"num_classes": 2}, _image(1, 16, 16)),
    "fcos": ("fcos_tiny", {"num_classes": 3}, _image(1, 32, 32)),
    "retinanet": ("retinanet_tiny", {"num_classes": 3}, _image(1, 32, 32)),
    "yolo": ("yolo_tiny", {"num_classes": 3}, _image(1, 32, 32)),
    "detr": ("detr_tiny", {"num_classes": 3, "embed_dim": 16, "enc_depth": 1, "dec_depth": 2, "num_queries": 3},
             _image(1, 32, 32)),
    # One pyramid level and few proposals: the fixed-shape NMS of the proposals unrolls into one step per
    # candidate box, and every level adds its own RoIAlign.
    "faster_rcnn": ("faster_rcnn_tiny", {"num_classes": 3, "pyramid_strides": (16,), "pre_nms_top_k": 4,
                                         "post_nms_top_k": 2, "roi_size": 2, "hidden": 8}, _image(1, 32, 32)),
    "sliding_window": ("sliding_window_tiny", {"num_classes": 3, "window_sizes": (16,), "aspect_ratios": (0.5, 1.0),
                                               "window_stride": 8}, _image(1, 32, 32)),
    "mask_rcnn": ("mask_rcnn_tiny", {"num_classes": 3, "pyramid_strides": (16,), "pre_nms_top_k": 4,
                                     "post_nms_top_k": 2, "roi_size": 2, "hidden": 8, "mask_roi_size": 3,
                                     "mask_convs": 1, "mask_chs": 4}, _image(1, 32, 32)),
}

# family -> (model, options, input, why torch.onnx.export (dynamo, torch 2.13, onnxscript 0.5) cannot export it);
# test_not_exported checks that it still fails, so the list cannot go stale when the exporter improves.
NOT_EXPORTED: dict[str, tuple[str, dict[str, Any], Callable[[nn.Module, int], tuple[torch.Tensor, ...]], str]] = {
    "seq2seq": ("seq2seq_gru_additive", {"num_classes": 32, "src_vocab_size": 32, "embed_dim": 8, "hidden_size": 16},
                _seq2seq, "the GRU/LSTM encoder runs on a PackedSequence (pack_padded_sequence) whose batch sizes are "
                "computed from the token values: torch.export cannot trace that data-dependent shape"),
    "swin": ("swin_cifar_patch2_window4_32", {"num_classes": 4}, _image(3, 32, 32),
             "window attention calls scaled_dot_product_attention on 5-D tensors (B, windows, heads, tokens, dim); "
             "onnxscript translates only 4-D query, key and value"),
}


# The slowest families to trace, built from their own classes with fewer blocks (the same block code is exported;
# 15-20 s each with the registered configurations on this machine).
SMALLER: dict[str, Callable[[], nn.Module]] = {
    "densenet": lambda: DenseNet(growth_rate=6, block_config=(2, 2, 2), num_init_features=12, num_classes=4,
                                 stem="cifar"),
    "convnext": lambda: ConvNeXt(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=4),
    # One inverted residual block per stage: 7 instead of 17 (4.6 s instead of 9.7 s of export).
    "mobilenet": lambda: MobileNetV2(num_classes=4, width_mult=0.25,
                                     settings=tuple((t, c, 1, s) for t, c, _, s in MOBILENET_V2_SETTINGS)),
    "swin": lambda: SwinTransformer(num_classes=4, img_size=32, patch_size=2, embed_dim=24, depths=(2, 1, 1),
                                    num_heads=(3, 6, 12), window_size=4),
}


def _build(family: str, name: str, options: dict[str, Any]) -> nn.Module:
    return SMALLER[family]() if family in SMALLER else create_model(name, **options)


def test_every_family_is_exported_or_listed():
    families = {model_info(name).family for name in list_models()}
    assert families == set(FAMILIES) | set(NOT_EXPORTED), "classify the new families in FAMILIES or NOT_EXPORTED"
    assert not set(FAMILIES) & set(NOT_EXPORTED)
    named = {f: v[0] for f, v in FAMILIES.items()} | {f: v[0] for f, v in NOT_EXPORTED.items()}
    assert all(model_info(name).family == family for family, name in named.items())


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Batch-norm statistics that are not the identity, so that the exported normalisation is really checked."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_export_runs_in_onnxruntime(family, tmp_path):
    name, options, make_input = FAMILIES[family]
    torch.manual_seed(0)
    model = _randomise_norms(_build(family, name, options)).eval()
    # the graph optimizer is off here (a quarter of the export time); tests/test_compress.py exports with it on
    path = export_onnx(model, make_input(model, 2), tmp_path / f"{name}.onnx", optimize=False)  # checked at batch 3
    x = make_input(model, 5)  # a third batch size
    got, expected = run_onnx_all(onnx_session(path), x), torch_outputs(model, x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.float(), e, atol=ATOL, rtol=RTOL)
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]


@pytest.mark.parametrize("family", sorted(NOT_EXPORTED))
def test_not_exported_families_still_fail_with_a_clear_error(family, tmp_path):
    name, options, make_input, _ = NOT_EXPORTED[family]
    torch.manual_seed(0)
    model = _build(family, name, options).eval()
    shown = type(model).__name__ if family in SMALLER else name  # a model built by hand has no registered name
    with pytest.raises(ModelError, match=f"cannot export {shown} to ONNX"):
        export_onnx(model, make_input(model, 2), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # no partial file

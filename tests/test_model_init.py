"""Initial values the papers (or their reference code) specify, per model family.

A wrong initial value rarely breaks the shared model suite (shapes, gradients and round-trips stay fine);
it shows up as a model that trains worse, which no short test sees. So the values are pinned here:
exact constants exactly (layer scale 1e-6, zeroed branches and heads, A = -(1..N), D = 1), random
initialisations by their distribution (pooled standard deviation of weight / expected std within 5 %,
mean near 0, bounds of uniform and truncated draws).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.mbconv import MBConv
from dltricks.layers.se import SqueezeExcite
from dltricks.models import create_model
from dltricks.models.convnext import ConvNeXt, ConvNeXtBlock


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **kwargs)


def _assert_std(pairs: list[tuple[torch.Tensor, float]], what: str, tol: float = 0.05) -> None:
    """The pooled weights, each divided by its expected standard deviation, have std 1 and mean 0."""
    z = torch.cat([w.detach().flatten() / s for w, s in pairs])
    assert z.numel() > 1000, f"{what}: too few values ({z.numel()}) for a statistical check"
    assert abs(z.std().item() - 1) < tol, f"{what}: std ratio {z.std().item():.3f}"
    assert abs(z.mean().item()) < tol, f"{what}: mean {z.mean().item():.3f} (in units of the std)"


def _assert_each_std(pairs: list[tuple[torch.Tensor, float]], what: str, min_numel: int = 2000,
                     tol: float = 0.1) -> None:
    """Each large tensor on its own (a pooled check can hide a few layers with the wrong fan)."""
    large = [(w, s) for w, s in pairs if w.numel() >= min_numel]
    assert large, f"{what}: no tensor of {min_numel} values or more"
    for i, (w, s) in enumerate(large):
        ratio = (w.detach() / s).std().item()
        assert abs(ratio - 1) < tol, f"{what} #{i} {tuple(w.shape)}: std ratio {ratio:.3f}"


def _linears(model: nn.Module, skip: tuple[str, ...] = ()) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(skip)]


def _zero_biases(modules: list[nn.Module]) -> bool:
    return all(m.bias is None or not m.bias.any() for m in modules)


def _conv_fan(conv: nn.Conv2d, mode: str) -> int:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return k * (conv.out_channels if mode == "fan_out" else conv.in_channels) // (
        conv.groups if mode == "fan_in" else 1)


def _kaiming_convs(model: nn.Module, mode: str) -> list[tuple[torch.Tensor, float]]:
    """Kaiming normal with ReLU gain: std = sqrt(2 / fan), fan = k*k*C_out (fan_out) or k*k*C_in/groups."""
    return [(m.weight, math.sqrt(2.0 / _conv_fan(m, mode))) for m in model.modules() if isinstance(m, nn.Conv2d)]


def _norms_are_identity(model: nn.Module) -> bool:
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
             and m.weight is not None]
    return bool(norms) and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)


# --------------------------------------------------------------------------------------------------
# Convolutional families


def test_resnet_kaiming_fan_out_convs_and_identity_batch_norm() -> None:
    model = _build("resnet18")
    _assert_each_std(_kaiming_convs(model, "fan_out"), "resnet18 convs")  # the 7x7 stem: fan-out 21x its fan-in
    assert _norms_are_identity(model)


def test_preact_resnet_zero_init_residual_zeroes_the_last_conv_of_every_branch() -> None:
    model = _build("preact_resnet18_cifar", zero_init_residual=True)
    blocks = [m for m in model.modules() if hasattr(m, "zero_init_last")]
    assert len(blocks) == 8
    assert all(not b.conv2.weight.any() for b in blocks)
    assert all(b.conv1.weight.any() for b in blocks)  # only the last conv of each branch
    model.init_weights()  # the default: no zeroing
    assert all(b.conv2.weight.any() for b in blocks)


def test_mobilenet_v2_classifier_and_zero_init_residual() -> None:
    model = _build("mobilenet_v2", zero_init_residual=True)
    _assert_std(_kaiming_convs(model, "fan_out"), "mobilenet_v2 convs", tol=0.06)
    fc = model.get_classifier()
    _assert_std([(fc.weight, 0.01)], "mobilenet_v2 classifier N(0, 0.01)")
    assert not fc.bias.any()
    blocks = [m for m in model.modules() if isinstance(m, MBConv)]
    residual = [b for b in blocks if b.has_residual]
    assert len(blocks) == 17 and len(residual) == 10
    assert all(not b.conv_pwl.norm.weight.any() for b in residual)  # the projection's BN gamma, Goyal et al. 2017
    assert all(b.conv_pwl.norm.weight.all() for b in blocks if not b.has_residual)
    x = torch.randn(2, residual[0].conv_pwl.conv.out_channels, 6, 6)
    torch.testing.assert_close(residual[0].eval()(x), x)  # so every residual block starts as the identity


def test_efficientnet_classifier_uniform_fan_out_and_se_layers() -> None:
    model = _build("efficientnet_b0")
    fc = model.get_classifier()
    bound = 1 / math.sqrt(fc.out_features)  # the reference code's U(-1/sqrt(out), 1/sqrt(out))
    assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.99 * bound
    _assert_std([(fc.weight, bound / math.sqrt(3))], "efficientnet_b0 classifier")
    assert not fc.bias.any()
    se = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se) == 16  # one per MBConv block
    for b in (b for b in model.modules() if isinstance(b, MBConv)):  # SE width: 1/4 of the block's input
        in_chs = (b.conv_dw if isinstance(b.conv_pw, nn.Identity) else b.conv_pw).conv.in_channels
        assert b.se.fc1.out_channels == max(1, int(in_chs * 0.25))
    _assert_std([(w, s) for m in se for w, s in _kaiming_convs(m, "fan_out")], "efficientnet_b0 SE convs")
    assert _zero_biases([m.fc1 for m in se] + [m.fc2 for m in se])


def test_se_resnet_squeeze_excite_reduction_and_init() -> None:
    model = _build("seresnet50")
    se = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se) == 16
    assert all(m.fc1.out_channels == m.fc1.in_channels // 16 for m in se)  # r = 16 (Hu et al.)
    _assert_std([(w, s) for m in se for w, s in _kaiming_convs(m, "fan_out")], "seresnet50 SE convs")
    assert _zero_biases([m.fc1 for m in se] + [m.fc2 for m in se])


def test_densenet_kaiming_fan_in_and_zero_classifier_bias() -> None:
    model = _build("densenet_bc100_cifar")
    _assert_std(_kaiming_convs(model, "fan_in"), "densenet convs (fan-in, as the original code)")
    assert _norms_are_identity(model)
    assert not model.get_classifier().bias.any()


def test_vgg_and_googlenet_classifiers_are_normal_0_01() -> None:
    for name in ("vgg16_bn_cifar", "googlenet"):
        model = _build(name)
        _assert_std(_kaiming_convs(model, "fan_out"), f"{name} convs", tol=0.06)
        linears = [m for _, m in _linears(model)]
        _assert_std([(m.weight, 0.01) for m in linears], f"{name} linears N(0, 0.01)")
        assert _zero_biases(linears)


def test_convnext_layer_scale_1e_6_and_truncated_normal_0_02() -> None:
    model = _build("convnext_tiny")
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 18
    assert all(torch.equal(b.gamma, torch.full_like(b.gamma, 1e-6)) for b in blocks)  # Liu et al. 2022, sec. 2.2
    weights = [(m.weight, 0.02) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    _assert_std(weights, "convnext convs and linears")
    assert max(w.abs().max().item() for w, _ in weights) <= 2.0  # trunc_normal_'s absolute bounds
    assert _zero_biases([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert _norms_are_identity(model)
    small = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10)
    torch.manual_seed(0)
    plain = ConvNeXt(**small)
    torch.manual_seed(0)
    scaled = ConvNeXt(**small, head_init_scale=0.001)  # the paper's fine-tuning head
    torch.testing.assert_close(scaled.head.weight, plain.head.weight * 0.001)
    assert all(b.gamma is None for b in ConvNeXt(**small, layer_scale_init=0).modules() if isinstance(b, ConvNeXtBlock))


def test_mambaout_truncated_normal_0_02_and_no_layer_scale() -> None:
    model = _build("mambaout_femto_cifar")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    _assert_std([(m.weight, 0.02) for m in layers], "mambaout convs and linears")
    assert _zero_biases(layers)
    # The official MambaOut blocks have no layer scale: every parameter is a conv, linear or norm parameter.
    owned = {id(p) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) or "Norm" in type(m).__name__
             for p in m.parameters(recurse=False)}
    assert all(id(p) in owned for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Transformers and MLP-Mixer


def test_vit_position_embedding_class_token_and_linears() -> None:
    model = _build("vit_cifar_patch4_32")
    _assert_std([(model.pos_embed, 0.02)], "vit pos_embed trunc_normal(0.02)")
    assert model.cls_token.abs().max() < 1e-5 and model.cls_token.std() > 1e-7  # N(0, 1e-6), as timm
    linears = [m for _, m in _linears(model)]
    _assert_std([(m.weight, 0.02) for m in linears], "vit linears")
    assert _zero_biases(linears)
    assert _norms_are_identity(model)


def test_swin_relative_position_bias_and_linears() -> None:
    model = _build("swin_cifar_patch2_window4_32")
    tables = [p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")]
    assert len(tables) == 10
    _assert_std([(t, 0.02) for t in tables], "swin relative position bias tables", tol=0.08)
    linears = [m for _, m in _linears(model)]
    _assert_std([(m.weight, 0.02) for m in linears], "swin linears")
    assert _zero_biases(linears)


def test_mlp_mixer_zero_head_xavier_linears_and_tiny_mlp_biases() -> None:
    model = _build("mixer_cifar_patch4_32")
    assert not model.head.weight.any() and not model.head.bias.any()  # Tolstikhin et al. 2021: zero head
    mixing = _linears(model, skip=("head",))
    _assert_std([(m.weight, math.sqrt(2 / (m.in_features + m.out_features))) for _, m in mixing], "mixer xavier")
    mlp_biases = torch.cat([m.bias for n, m in mixing if "mlp" in n])
    assert 0 < mlp_biases.std().item() < 2e-6  # N(0, 1e-6)


def test_bert_normal_0_02_and_zero_padding_embedding() -> None:
    model = _build("bert_tiny")
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    _assert_std([(m.weight[1:] if isinstance(m, nn.Embedding) and m.padding_idx == 0 else m.weight, 0.02)
                 for m in layers], "bert N(0, 0.02)")
    assert _zero_biases([m for m in layers if isinstance(m, nn.Linear)])
    padded = [m for m in layers if isinstance(m, nn.Embedding) and m.padding_idx is not None]
    assert padded and all(not m.weight[m.padding_idx].any() for m in padded)
    assert _norms_are_identity(model)


def test_transformer_xavier_weights_and_embeddings_scaled_by_the_width() -> None:
    model = _build("transformer_tiny")
    D = model.embed_dim
    for emb in (model.src_embed, model.tgt_embed):
        _assert_std([(emb.weight, D ** -0.5)], "transformer embeddings N(0, D^-1/2)", tol=0.08)
    matrices = [(p, math.sqrt(2 / (p.shape[0] + p.shape[1]))) for n, p in model.named_parameters()
                if p.dim() == 2 and "embed" not in n]
    _assert_std(matrices, "transformer xavier_uniform")


# --------------------------------------------------------------------------------------------------
# State-space models


def _check_mamba_mixers(model: nn.Module, depth: int) -> None:
    mixers = [m for m in model.modules() if hasattr(m, "A_log") and hasattr(m, "dt_proj")]
    assert mixers
    for m in mixers:
        N = m.A_log.shape[-1]
        torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1, N + 1.0).expand_as(m.A_log))  # S4D-real
        torch.testing.assert_close(m.D, torch.ones_like(m.D))
        dt = F.softplus(m.dt_proj.bias)  # survives the model's zeroing of linear biases
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001 and dt.std() > 0
    # out_proj: kaiming-uniform (bound 1/sqrt(fan_in)), then divided by sqrt(depth) (GPT-2 re-scaling).
    out = [p for n, p in model.named_parameters() if n.endswith("out_proj.weight")]
    assert len(out) == depth
    for w in out:
        bound = 1 / math.sqrt(w.shape[1]) / math.sqrt(depth)
        assert w.abs().max() <= bound * 1.0001 and w.abs().max() > 0.95 * bound


def test_mamba_lm_init_of_the_reference_code() -> None:
    model = _build("mamba_lm_tiny")
    _assert_std([(model.encoder.weight, 0.02)], "mamba embedding N(0, 0.02)")
    _check_mamba_mixers(model, model.depth)


def test_vision_mamba_position_embedding_class_token_and_mixers() -> None:
    model = _build("vim_tiny_cifar")
    _assert_std([(model.pos_embed, 0.02)], "vim pos_embed")
    assert 0.01 < model.cls_token.std() < 0.03
    _assert_std([(model.head.weight, 0.02)], "vim head")
    assert not model.head.bias.any()
    _check_mamba_mixers(model, 12)


def test_unet_batch_norms_start_as_the_identity() -> None:
    assert _norms_are_identity(_build("unet_small"))

"""Transformer blocks and the encoder-decoder model against PyTorch's nn.Transformer* with copied weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dltricks import create_model
from dltricks.layers.attention import causal_mask, padding_mask
from dltricks.layers.transformer import (TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                                         TransformerEncoderLayer)


@torch.no_grad()
def copy_encoder_layer(ours: TransformerEncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    ours.attn.load_from_torch(ref.self_attn)
    ours.mlp.fc1.load_state_dict(ref.linear1.state_dict())
    ours.mlp.fc2.load_state_dict(ref.linear2.state_dict())
    ours.norm1.load_state_dict(ref.norm1.state_dict())
    ours.norm2.load_state_dict(ref.norm2.state_dict())


@torch.no_grad()
def copy_decoder_layer(ours: TransformerDecoderLayer, ref: nn.TransformerDecoderLayer) -> None:
    ours.self_attn.load_from_torch(ref.self_attn)
    ours.cross_attn.load_from_torch(ref.multihead_attn)
    ours.mlp.fc1.load_state_dict(ref.linear1.state_dict())
    ours.mlp.fc2.load_state_dict(ref.linear2.state_dict())
    for i in (1, 2, 3):
        getattr(ours, f"norm{i}").load_state_dict(getattr(ref, f"norm{i}").state_dict())


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = TransformerEncoderLayer(16, 4, mlp_ratio=2, norm_first=norm_first, act_layer=nn.ReLU,
                                   norm_layer=nn.LayerNorm).eval()
    copy_encoder_layer(ours, ref)
    x = torch.randn(3, 6, 16)
    pad = padding_mask(torch.tensor([6, 4, 1]), 6)
    torch.testing.assert_close(ours(x, key_padding_mask=pad)[~pad], ref(x, src_key_padding_mask=pad)[~pad])
    torch.testing.assert_close(ours(x, is_causal=True), ref(x, src_mask=~causal_mask(6)))


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = TransformerDecoderLayer(16, 4, mlp_ratio=2, norm_first=norm_first, act_layer=nn.ReLU,
                                   norm_layer=nn.LayerNorm).eval()
    copy_decoder_layer(ours, ref)
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mem_pad = padding_mask(torch.tensor([7, 3]), 7)
    expected = ref(x, memory, tgt_mask=~causal_mask(5), memory_key_padding_mask=mem_pad)
    out, (w_self, w_cross) = ours(x, memory, memory_key_padding_mask=mem_pad, need_weights=True)
    torch.testing.assert_close(out, expected)
    assert (w_self.triu(1) == 0).all() and (w_cross[1, :, :, 3:] == 0).all()


def test_encoder_decoder_stacks_match_nn_transformer():
    torch.manual_seed(0)
    ref = nn.Transformer(16, 4, 2, 2, 32, dropout=0.0, batch_first=True).eval()
    enc = TransformerEncoder(16, 2, 4, mlp_ratio=2, norm_first=False, final_norm=True, act_layer=nn.ReLU,
                             norm_layer=nn.LayerNorm).eval()
    dec = TransformerDecoder(16, 2, 4, mlp_ratio=2, norm_first=False, final_norm=True, act_layer=nn.ReLU,
                             norm_layer=nn.LayerNorm).eval()
    for ours, theirs in zip(enc.layers, ref.encoder.layers):
        copy_encoder_layer(ours, theirs)
    for ours, theirs in zip(dec.layers, ref.decoder.layers):
        copy_decoder_layer(ours, theirs)
    enc.norm.load_state_dict(ref.encoder.norm.state_dict())
    dec.norm.load_state_dict(ref.decoder.norm.state_dict())
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    expected = ref(src, tgt, tgt_mask=~causal_mask(5))
    torch.testing.assert_close(dec(tgt, enc(src)), expected)
    ours_params = sum(p.numel() for p in [*enc.parameters(), *dec.parameters()])
    assert ours_params == sum(p.numel() for p in ref.parameters())


def test_dropout_in_attention_and_mlp_only_in_training():
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(16, 4, drop=0.3, attn_drop=0.3)
    x = torch.randn(2, 5, 16)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    assert layer.attn.attn_drop == 0.3 and layer.mlp.drop1.p == 0.3 and layer.attn.proj_drop.p == 0.3


def test_encoder_returns_weights_of_every_layer():
    enc = TransformerEncoder(8, 3, 2).eval()
    out, weights = enc(torch.randn(2, 4, 8), need_weights=True)
    assert out.shape == (2, 4, 8) and len(weights) == 3 and weights[0].shape == (2, 2, 4, 4)


def test_pre_ln_gradients_are_better_scaled_than_post_ln_at_init():
    """Xiong et al. 2020: at initialisation post-LN gradients grow towards the output layers, pre-LN ones do
    not. We compare last-layer / first-layer gradient norm ratios of 6-layer stacks."""
    ratios = {}
    for norm_first in (True, False):
        torch.manual_seed(0)
        enc = TransformerEncoder(32, 6, 4, norm_first=norm_first, final_norm=True)
        x = torch.randn(8, 16, 32)
        enc(x).square().mean().backward()
        first = enc.layers[0].mlp.fc2.weight.grad.norm()
        last = enc.layers[-1].mlp.fc2.weight.grad.norm()
        ratios[norm_first] = (last / first).item()
    assert ratios[False] > ratios[True]


def test_transformer_model_greedy_decode_and_shapes():
    torch.manual_seed(0)
    model = create_model("transformer_tiny", num_classes=11, src_vocab_size=13).eval()
    src = torch.randint(3, 13, (3, 6))
    src[1, 4:] = 0  # padding
    logits = model(src, torch.randint(3, 11, (3, 4)))
    assert logits.shape == (3, 4, 11)
    tokens = model.generate(src, max_len=7, bos_id=1, eos_id=2)
    # Greedy decoding = argmax of the teacher-forced pass fed with its own outputs, up to each EOS.
    prefix = torch.cat([torch.ones(3, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    greedy = model(src, prefix).argmax(-1)
    for b in range(3):
        n = int((tokens[b] == 2).nonzero()[0]) + 1 if (tokens[b] == 2).any() else tokens.shape[1]
        assert torch.equal(greedy[b, :n], tokens[b, :n])
    # Padding in the source is invisible: the same sentence without its padding gives the same output.
    torch.testing.assert_close(model(src[1:2, :4], prefix[1:2]), model(src[1:2], prefix[1:2]))


@pytest.mark.parametrize("pos_embed", ["learned", "rope"])
def test_transformer_position_variants(pos_embed):
    torch.manual_seed(0)
    model = create_model("transformer_tiny", num_classes=9, src_vocab_size=9, pos_embed=pos_embed).eval()
    src, tgt = torch.randint(3, 9, (2, 5)), torch.randint(3, 9, (2, 4))
    out = model(src, tgt)
    assert out.shape == (2, 4, 9) and torch.isfinite(out).all()
    # Source order matters (positions are used).
    assert not torch.allclose(model(src.flip(1), tgt), out)


def test_transformer_base_parameter_count():
    """Vaswani et al. base: d_model 512, 8 heads, d_ff 2048, 6+6 layers; with a shared 37,000-token
    vocabulary and tied embeddings: 63.1 M parameters (the paper reports 65 M)."""
    with torch.device("meta"):
        model = create_model("transformer_base")
    n = sum(p.numel() for p in model.parameters())
    layers = 6 * (4 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 2 * 1024) \
        + 6 * (8 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 3 * 1024)
    assert n == layers + 37000 * 512
    assert 60e6 < n < 66e6

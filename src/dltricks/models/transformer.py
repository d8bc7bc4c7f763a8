"""The encoder-decoder Transformer (Vaswani et al. 2017, "Attention is all you need").

    memory = Encoder(√d · Emb(src) + PE)                 N layers of self-attention + MLP
    h      = Decoder(√d · Emb(tgt_in) + PE, memory)      N layers of causal self-attention,
                                                        cross-attention to memory, MLP
    logits = h Embᵀ                                      output layer tied to the target embedding (sec. 3.4)

``transformer_base`` is the base configuration of Table 3: d_model = 512, 8 heads, d_ff = 2048, 6 + 6
layers, P_drop = 0.1, post-LN, sinusoidal positions, embeddings shared between source, target and output
over a joint 37,000-token BPE vocabulary: 63.1 M parameters here (the paper reports 65 M; it does not
state the exact vocabulary of that count). ``transformer_small`` (256/4/1024, 3 + 3) and
``transformer_tiny`` (128/4/512, 2 + 2) are pre-LN, for small tasks such as ``--data dates``.

The model is called as ``model(src, tgt_in)`` with token ids (B, S) and (B, T) and returns
logits (B, T, num_classes); ``pad_id`` tokens of ``src`` are masked out of attention. Label smoothing
(ε = 0.1 in the paper) and the warm-up schedule lrate = d^−0.5 · min(step^−0.5, step · warmup^−1.5) are
trainer options. :meth:`Transformer.generate` decodes greedily.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dltricks.layers.position import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding
from dltricks.layers.transformer import TransformerDecoder, TransformerEncoder
from dltricks.models._registry import register_model

PAPER = "Vaswani et al., Attention Is All You Need, NeurIPS 2017"

__all__ = ["Transformer", "seq2seq_test_input"]


class Transformer(nn.Module):
    """Encoder-decoder Transformer for token sequences.

    Args:
        num_classes: target vocabulary size (the output layer).
        src_vocab_size: source vocabulary size (default: shared with the target; then one embedding
            matrix serves source, target and output, as in the paper).
        embed_dim, depth, decoder_depth, num_heads, mlp_ratio: d_model, encoder layers, decoder layers
            (default = depth), heads, d_ff / d_model.
        drop_rate: dropout on embeddings and sub-layer outputs; attn_drop_rate: on attention weights.
        norm_first: pre-LN (True) or the original post-LN (False).
        pos_embed: ``"sinusoidal"``, ``"learned"`` or ``"rope"`` (rotary, in every self-attention).
        max_len: longest sequence for learned positions.
        pad_id: id of padding in ``src``.
        act: ``"relu"`` (paper) or ``"gelu"``.
    """

    def __init__(self, *, num_classes: int = 37000, src_vocab_size: int | None = None, embed_dim: int = 512,
                 depth: int = 6, decoder_depth: int | None = None, num_heads: int = 8, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.1, attn_drop_rate: float = 0.0, norm_first: bool = False,
                 pos_embed: str = "sinusoidal", max_len: int = 1024, pad_id: int = 0, act: str = "relu") -> None:
        super().__init__()
        if pos_embed not in ("sinusoidal", "learned", "rope"):
            raise ValueError(f"pos_embed must be 'sinusoidal', 'learned' or 'rope', got {pos_embed!r}")
        if act not in ("relu", "gelu"):
            raise ValueError(f"act must be 'relu' or 'gelu', got {act!r}")
        self.num_classes, self.embed_dim, self.pad_id = num_classes, embed_dim, pad_id
        self.src_vocab_size = src_vocab_size or num_classes
        self.shared = src_vocab_size is None or src_vocab_size == num_classes
        self.tgt_embed = nn.Embedding(num_classes, embed_dim)
        self.src_embed = self.tgt_embed if self.shared else nn.Embedding(self.src_vocab_size, embed_dim)
        self.embed_scale = math.sqrt(embed_dim)
        if pos_embed == "learned":
            self.src_pos: nn.Module = LearnedPositionalEmbedding(max_len, embed_dim, dropout=drop_rate)
            self.tgt_pos: nn.Module = LearnedPositionalEmbedding(max_len, embed_dim, dropout=drop_rate)
        elif pos_embed == "sinusoidal":  # no parameters: one module serves both sides
            self.src_pos = self.tgt_pos = SinusoidalPositionalEncoding(embed_dim, max_len=max_len, dropout=drop_rate)
        else:  # rope: positions enter inside the attention; embeddings only get dropout
            self.src_pos = self.tgt_pos = nn.Dropout(drop_rate)
        rope = RotaryEmbedding(embed_dim // num_heads) if pos_embed == "rope" else None
        activation = nn.ReLU if act == "relu" else nn.GELU
        common = dict(mlp_ratio=mlp_ratio, drop=drop_rate, attn_drop=attn_drop_rate, norm_first=norm_first,
                      act_layer=activation, norm_layer=nn.LayerNorm)
        enc_extra = {"rope": rope} if rope is not None else {}
        self.encoder = TransformerEncoder(embed_dim, depth, num_heads, **common, **enc_extra)
        self.decoder = TransformerDecoder(embed_dim, decoder_depth or depth, num_heads, rope=rope, **common)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)  # as nn.Transformer / the tensor2tensor code
        # Tied embeddings are multiplied by √d: N(0, d^-1/2) makes √d·Emb unit-variance.
        for emb in {id(self.tgt_embed): self.tgt_embed, id(self.src_embed): self.src_embed}.values():
            nn.init.normal_(emb.weight, std=self.embed_dim ** -0.5)

    def _embed(self, ids: torch.Tensor, embedding: nn.Embedding, pos: nn.Module) -> torch.Tensor:
        return pos(embedding(ids) * self.embed_scale)  # (B, T, D)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (B, S, D) and the source padding mask (B, S), True at padding."""
        if src.dim() != 2 or src.is_floating_point():
            raise ValueError(f"Transformer expects input token ids of shape (B, S), got {tuple(src.shape)} {src.dtype}")
        src_pad = src == self.pad_id
        memory = self.encoder(self._embed(src, self.src_embed, self.src_pos), key_padding_mask=src_pad)
        return memory, src_pad

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor, *,
               need_weights: bool = False):
        x = self._embed(tgt_in, self.tgt_embed, self.tgt_pos)
        h = self.decoder(x, memory, memory_key_padding_mask=src_pad, need_weights=need_weights)
        h, weights = h if need_weights else (h, None)
        logits = h @ self.tgt_embed.weight.t()  # (B, T, V)
        return (logits, weights) if need_weights else logits

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, *, max_len: int, bos_id: int, eos_id: int) -> torch.Tensor:
        """Greedy decoding: (B, ≤ max_len) token ids; positions after a sequence's EOS hold ``pad_id``.

        The decoder is re-run on the whole prefix at each step (no key/value cache): O(T²) steps, fine
        for the short outputs this library trains on.
        """
        memory, src_pad = self.encode(src)
        B = src.shape[0]
        tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            logits = self.decode(tokens, memory, src_pad)[:, -1]  # (B, V)
            nxt = logits.argmax(-1).masked_fill(done, self.pad_id)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return tokens[:, 1:]


def seq2seq_test_input(model: nn.Module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(src (B, 9), tgt_in (B, 6)) token ids for the shared model suite; the second source is padded."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, model.src_vocab_size, (batch, 9), generator=g)
    src[1:, 5:] = model.pad_id
    tgt = torch.randint(3, model.num_classes, (batch, 6), generator=g)
    return src, tgt


@register_model(task="seq2seq", input_size=(64,), test_input_size=(9,), make_test_input=seq2seq_test_input)
def transformer_base(*, num_classes: int = 37000, src_vocab_size: int | None = None, drop_rate: float = 0.1,
                     attn_drop_rate: float = 0.0, norm_first: bool = False, pos_embed: str = "sinusoidal",
                     pad_id: int = 0) -> Transformer:
    """Vaswani et al. base: 512/8 heads/2048, 6+6 post-LN layers, P_drop 0.1, shared 37k vocabulary (63.1 M)."""
    return Transformer(num_classes=num_classes, src_vocab_size=src_vocab_size, embed_dim=512, depth=6, num_heads=8,
                       mlp_ratio=4.0, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, norm_first=norm_first,
                       pos_embed=pos_embed, pad_id=pad_id)


@register_model(task="seq2seq", input_size=(64,), test_input_size=(9,), make_test_input=seq2seq_test_input)
def transformer_small(*, num_classes: int = 128, src_vocab_size: int | None = 128, drop_rate: float = 0.1,
                      attn_drop_rate: float = 0.1, norm_first: bool = True, pos_embed: str = "sinusoidal",
                      pad_id: int = 0) -> Transformer:
    """Small pre-LN Transformer: 256/4 heads/1024, 3+3 layers; 128-symbol vocabularies by default."""
    return Transformer(num_classes=num_classes, src_vocab_size=src_vocab_size, embed_dim=256, depth=3, num_heads=4,
                       mlp_ratio=4.0, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, norm_first=norm_first,
                       pos_embed=pos_embed, pad_id=pad_id, act="gelu")


@register_model(task="seq2seq", input_size=(64,), test_input_size=(9,), make_test_input=seq2seq_test_input)
def transformer_tiny(*, num_classes: int = 128, src_vocab_size: int | None = 128, drop_rate: float = 0.1,
                     attn_drop_rate: float = 0.0, norm_first: bool = True, pos_embed: str = "sinusoidal",
                     pad_id: int = 0) -> Transformer:
    """Tiny pre-LN Transformer: 128/4 heads/512, 2+2 layers; for character tasks like ``--data dates``."""
    return Transformer(num_classes=num_classes, src_vocab_size=src_vocab_size, embed_dim=128, depth=2, num_heads=4,
                       mlp_ratio=4.0, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, norm_first=norm_first,
                       pos_embed=pos_embed, pad_id=pad_id, act="gelu")

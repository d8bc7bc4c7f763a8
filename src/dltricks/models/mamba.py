"""Mamba sequence models (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", arXiv:2312.00752) and the same backbone with other token mixers, for fair comparisons.

:class:`SequenceModel` is embedding (token ids) or a linear encoder (real-valued steps) → ``depth``
pre-norm residual blocks → final norm → a per-token head (language modelling, copying, induction) or
a pooled classification head (sequential MNIST, ListOps). The token mixer is one switch:

* ``"mamba"``: the Mamba block (:class:`~dltricks.layers.ssm.Mamba`); ``gate`` and ``selective``
  give the Mamba paper's Table 1 ablation (no-gate S4 / no-gate S6 / gated S4 / Mamba);
* ``"s4d"``: the S4D layer with its GELU + GLU output (:class:`~dltricks.layers.ssm.S4DMixer`);
* ``"gated_cnn"``: MambaOut's Gated CNN made causal (:class:`~dltricks.layers.ssm.GatedCNN1d`), i.e.
  the Mamba block without its SSM;
* ``"attention"``: a causal pre-LN Transformer block (attention + MLP) with sinusoidal absolute positions
  added to the embeddings (Vaswani et al. 2017), the "MHA-Abs" baseline of the Mamba paper.

Every mixer is causal: output t depends on inputs 1..t only (``tests/test_mamba_models.py``).

:class:`MambaLM` is the language model of ``mamba_ssm`` (``MambaLMHeadModel``): tied input/output
embeddings, RMSNorm, and its initialisation (normal(0.02) embeddings, zero biases except Δ's,
out_proj re-scaled by 1/√depth). It generates with a recurrent cache (O(1) per token).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.position import sinusoidal_position_encoding
from dltricks.layers.ssm.gated_cnn import GatedCNN1d
from dltricks.layers.ssm.mamba import Mamba, MambaBlock, MambaState, get_seq_norm
from dltricks.layers.ssm.s4d import S4DMixer
from dltricks.layers.transformer import TransformerEncoderLayer
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

__all__ = ["SequenceModel", "MambaLM", "MIXERS"]

PAPER = "Gu & Dao, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (COLM 2024), arXiv:2312.00752"

MIXERS = ("mamba", "s4d", "gated_cnn", "attention")


class SequenceModel(ClassifierMixin, nn.Module):
    """Encoder → ``depth`` residual blocks with one kind of token mixer → norm → head (module docstring).

    Args:
        num_classes: outputs per token (vocabulary) or per sequence (classes with ``pool``).
        vocab_size: embed token ids (B, L) with this vocabulary; None with ``in_features``.
        in_features: real-valued inputs (B, L, in_features) through a linear encoder.
        d_model, depth: width and number of blocks.
        mixer: one of :data:`MIXERS`.
        pool: ``None`` for per-token logits (B, L, num_classes), ``"mean"`` or ``"last"`` for (B, num_classes).
        norm: ``"rms"`` or ``"layer"`` pre-norm (the attention blocks always use LayerNorm).
        drop_path_rate: stochastic depth rising linearly to this value.
        d_state, expand, d_conv, gate, selective, s4d_init, scan_impl: Mamba options (``d_state`` also sets
            the S4D state size).
        kernel_size, expansion_ratio: Gated CNN options.
        num_heads, mlp_ratio: attention options.
        tie_embeddings: share the token embedding with the output layer (needs vocab_size == num_classes).

    Classifier interface (:mod:`dltricks.models._classifier`, for any ``pool``): ``forward_features`` is
    the final-normed sequence (B, L, d_model); ``forward_head`` pools it (``"mean"``, ``"last"``) or keeps
    every token (``pool=None``) and applies ``head``, a linear layer without bias. ``reset_classifier``
    gives an untied head.
    """

    head_attr = "head"
    head_bias = False

    def __init__(self, *, num_classes: int, vocab_size: int | None = None, in_features: int | None = None,
                 d_model: int = 128, depth: int = 2, mixer: str = "mamba", pool: str | None = None,
                 norm: str = "rms", drop_path_rate: float = 0.0, d_state: int = 16, expand: float = 2,
                 d_conv: int = 4, gate: bool = True, selective: bool = True, s4d_init: str = "lin",
                 scan_impl: str = "auto", kernel_size: int = 4, expansion_ratio: float = 8 / 3, num_heads: int = 4,
                 mlp_ratio: float = 4.0, tie_embeddings: bool = False) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; choose from {', '.join(MIXERS)}")
        if (vocab_size is None) == (in_features is None):
            raise ValueError("give exactly one of vocab_size (token ids) or in_features (real-valued inputs)")
        if pool not in (None, "mean", "last"):
            raise ValueError(f"pool must be None, 'mean' or 'last', got {pool!r}")
        self.num_classes, self.vocab_size, self.in_features = num_classes, vocab_size, in_features
        self.d_model, self.depth, self.mixer_kind, self.pool = d_model, depth, mixer, pool
        self.num_features = d_model
        if vocab_size is not None:
            self.encoder: nn.Module = nn.Embedding(vocab_size, d_model)
        else:
            self.encoder = nn.Linear(in_features, d_model)  # type: ignore[arg-type]
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        blocks: list[nn.Module] = []
        for i in range(depth):
            if mixer == "attention":
                blocks.append(TransformerEncoderLayer(d_model, num_heads, mlp_ratio=mlp_ratio, drop_path=rates[i]))
                continue
            if mixer == "mamba":
                token_mixer: nn.Module = Mamba(d_model, d_state=d_state, expand=expand, d_conv=d_conv, gate=gate,
                                               selective=selective, s4d_init=s4d_init, scan_impl=scan_impl)
            elif mixer == "s4d":
                token_mixer = S4DMixer(d_model, d_state, init=s4d_init)
            else:
                token_mixer = GatedCNN1d(d_model, kernel_size=kernel_size, expansion_ratio=expansion_ratio)
            blocks.append(MambaBlock(d_model, token_mixer, norm=norm, drop_path=rates[i]))
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = (nn.LayerNorm(d_model, eps=1e-6) if mixer == "attention" else get_seq_norm(norm)(d_model))
        self.head = nn.Linear(d_model, num_classes, bias=False) if num_classes > 0 else nn.Identity()
        self._init_weights()
        if tie_embeddings:
            if vocab_size != num_classes:
                raise ValueError(f"tie_embeddings needs vocab_size == num_classes, got {vocab_size} and {num_classes}")
            self.head.weight = self.encoder.weight  # type: ignore[assignment]

    def _init_weights(self) -> None:
        """``mamba_ssm``'s init: N(0, 0.02) embeddings, zero linear biases (except Δ's), and out_proj /
        fc2 weights kaiming-uniform then divided by √depth (GPT-2's residual re-scaling)."""
        if isinstance(self.encoder, nn.Embedding):
            nn.init.normal_(self.encoder.weight, std=0.02)
        if self.mixer_kind == "attention":
            return  # the Transformer blocks keep their own initialisation
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for name, p in self.blocks.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(self.depth)

    def _encode(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if self.vocab_size is not None:
            if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise ValueError(f"{type(self).__name__} expects token ids of shape (B, L), got {tuple(x.shape)} "
                                 f"{x.dtype}")
            h = self.encoder(x.long())  # (B, L, d)
        else:
            if x.dim() != 3 or x.shape[-1] != self.in_features:
                raise ValueError(f"{type(self).__name__} expects input (B, L, {self.in_features}), got "
                                 f"{tuple(x.shape)}")
            h = self.encoder(x.float())
        if self.mixer_kind == "attention":
            pe = sinusoidal_position_encoding(h.shape[1], self.d_model, offset=offset, device=h.device, dtype=h.dtype)
            h = h + pe  # (B, L, d) + (L, d)
        return h

    def forward_features(self, x: torch.Tensor, *, state: list[MambaState | None] | None = None) -> torch.Tensor:
        """The final-normed sequence (B, L, d_model); ``state`` as in :meth:`forward`."""
        h = self._encode(x)
        for i, block in enumerate(self.blocks):
            if self.mixer_kind == "attention":
                h = block(h, is_causal=True)
            elif state is not None:
                h = block(h, state=state[i])
            else:
                h = block(h)
        return self.norm_f(h)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_classes) with ``pool``, per-token (B, L, num_classes) without; ``pre_logits`` stops
        before ``head``."""
        if self.pool == "mean":
            x = x.mean(dim=1)  # (B, d)
        elif self.pool == "last":
            x = x[:, -1]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, *, state: list[MambaState | None] | None = None) -> torch.Tensor:
        """Logits (B, L, num_classes), or (B, num_classes) with ``pool``. ``state`` (from
        :meth:`allocate_state`, Mamba mixers only) makes the call continue a cached sequence."""
        return self.forward_head(self.forward_features(x, state=state))

    def allocate_state(self, batch_size: int, *, device: torch.device | str | None = None) -> list[MambaState | None]:
        """One recurrent cache per block (Mamba mixers only)."""
        if self.mixer_kind != "mamba":
            raise ValueError(f"recurrent inference needs the mamba mixer, this model uses {self.mixer_kind!r}")
        return [block.allocate_state(batch_size, device=device) for block in self.blocks]


class MambaLM(SequenceModel):
    """A Mamba language model: token ids (B, L) -> next-token logits (B, L, vocab), tied embeddings."""

    def __init__(self, *, num_classes: int = 256, d_model: int = 128, depth: int = 4, d_state: int = 16,
                 expand: float = 2, d_conv: int = 4, norm: str = "rms", drop_path_rate: float = 0.0,
                 scan_impl: str = "auto", tie_embeddings: bool = True) -> None:
        super().__init__(num_classes=num_classes, vocab_size=num_classes, d_model=d_model, depth=depth, mixer="mamba",
                         norm=norm, drop_path_rate=drop_path_rate, d_state=d_state, expand=expand, d_conv=d_conv,
                         scan_impl=scan_impl, tie_embeddings=tie_embeddings)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``input_ids`` (B, L) by ``max_new_tokens``: the prompt is consumed by one parallel
        scan, then each token costs one recurrent step. ``temperature`` 0 is greedy decoding."""
        state = self.allocate_state(input_ids.shape[0], device=input_ids.device)
        logits = self(input_ids, state=state)[:, -1]  # (B, V)
        out = [input_ids]
        for _ in range(max_new_tokens):
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            else:
                token = logits.argmax(dim=-1, keepdim=True)
            out.append(token)
            logits = self(token, state=state)[:, -1]
        return torch.cat(out, dim=1)


def _token_input(model: nn.Module, batch: int) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, model.vocab_size, (batch, 12), generator=g),)


def _real_input(model: nn.Module, batch: int) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 12, model.in_features, generator=g),)


_LM = dict(paper=PAPER, task="sequence", input_size=(1024,), test_input_size=(12,), make_test_input=_token_input)


@register_model(**_LM)
def mamba_lm_tiny(*, num_classes: int = 256, d_model: int = 128, depth: int = 4, **kwargs) -> MambaLM:
    """A 4-layer, 128-wide byte-level Mamba LM (0.44 M parameters at 256 tokens)."""
    return MambaLM(num_classes=num_classes, d_model=d_model, depth=depth, **kwargs)


@register_model(**_LM)
def mamba_lm_small(*, num_classes: int = 256, d_model: int = 256, depth: int = 8, **kwargs) -> MambaLM:
    """An 8-layer, 256-wide byte-level Mamba LM (3.3 M parameters at 256 tokens)."""
    return MambaLM(num_classes=num_classes, d_model=d_model, depth=depth, **kwargs)


@register_model(paper=PAPER, task="classification", input_size=(784, 1), test_input_size=(12, 1),
                make_test_input=_real_input)
def mamba_cls_tiny(*, num_classes: int = 10, in_chans: int = 1, d_model: int = 64, depth: int = 2,
                   pool: str = "mean", **kwargs) -> SequenceModel:
    """A 2-layer, 64-wide Mamba sequence classifier for real-valued sequences (B, L, in_chans), e.g.
    sequential MNIST (L = 784, in_chans = 1); mean-pooled head."""
    return SequenceModel(num_classes=num_classes, in_features=in_chans, d_model=d_model, depth=depth, mixer="mamba",
                         pool=pool, **kwargs)


@register_model(paper=PAPER, task="sequence", input_size=(256,), test_input_size=(12,), make_test_input=_token_input)
def mamba_tokens_tiny(*, num_classes: int = 16, vocab_size: int | None = None, d_model: int = 64, depth: int = 2,
                      mixer: str = "mamba", **kwargs) -> SequenceModel:
    """The 2-layer, 64-wide token model of the Mamba paper's synthetic tasks (sec. 4.1: selective copying,
    induction heads): per-token logits (B, L, num_classes) over a vocabulary of ``vocab_size`` (default:
    ``num_classes``) tokens, untied head; 67,520 parameters at 16 tokens. ``mixer`` swaps the token mixer
    (``"s4d"``, ``"gated_cnn"``, ``"attention"``) for the comparisons of ``dltricks.experiments.ssm``."""
    return SequenceModel(num_classes=num_classes, vocab_size=vocab_size or num_classes, d_model=d_model, depth=depth,
                         mixer=mixer, **kwargs)

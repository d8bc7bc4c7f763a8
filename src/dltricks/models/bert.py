"""BERT-style encoders (Devlin et al. 2019): masked-language-model pre-training, then a fine-tuning head.

Input representation: token + position + segment embeddings, LayerNorm, dropout (sec. 3, Fig. 2); a
post-LN Transformer encoder with GELU (the original layout); the output is one vector per token.

* Pre-training (:class:`BertForMaskedLM`, sec. 3.1 "Task #1"): 15 % of the tokens are chosen; of
  those 80 % become ``[MASK]``, 10 % a random token, 10 % stay unchanged (:func:`mask_tokens`), and the
  model predicts the original tokens there (cross-entropy; other positions are ignored with label −100).
  The prediction head is dense -> GELU -> LayerNorm -> output layer tied to the token embeddings (+ bias).
* Fine-tuning (:class:`BertForSequenceClassification`, sec. 4.1): the final state of the first token
  (``[CLS]``) goes through the pooler (dense + tanh) and a new linear classifier;
  :meth:`BertForSequenceClassification.from_pretrained_mlm` copies a pre-trained encoder into it.

Sizes (Turc et al. 2019 for the small ones): ``bert_tiny`` L=2 H=128, ``bert_mini`` L=4 H=256,
``bert_base`` L=12 H=768 A=12 - the encoder with pooler has 109,482,240 parameters at the 30,522-token
WordPiece vocabulary, the published bert-base-uncased count (tested). ``bert_tiny_cls`` is the
classifier; other sizes: ``BertForSequenceClassification(embed_dim=, depth=, num_heads=)``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.transformer import TransformerEncoder
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Devlin et al., BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding, NAACL 2019"

__all__ = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "mask_tokens",
           "mlm_loss", "IGNORE_INDEX"]

IGNORE_INDEX = -100


class BertModel(nn.Module):
    """Embeddings + post-LN Transformer encoder (+ pooler).

    ``forward(input_ids (B, T), token_type_ids=None, key_padding_mask=None)`` returns
    ``(sequence_output (B, T, D), pooled (B, D) or None)``. Padding defaults to ``input_ids == pad_id``.
    :meth:`encode` gives the sequence output alone and :meth:`pool` the pooler's output for it.
    """

    def __init__(self, *, vocab_size: int = 30522, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, max_len: int = 512, type_vocab_size: int = 2, drop_rate: float = 0.1,
                 attn_drop_rate: float = 0.1, pad_id: int = 0, pooler: bool = True) -> None:
        super().__init__()
        self.vocab_size, self.embed_dim, self.pad_id, self.max_len = vocab_size, embed_dim, pad_id, max_len
        self.word_embeddings = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_len, embed_dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, embed_dim)
        norm = partial(nn.LayerNorm, eps=1e-12)
        self.embed_norm = norm(embed_dim)
        self.embed_drop = nn.Dropout(drop_rate)
        self.encoder = TransformerEncoder(embed_dim, depth, num_heads, mlp_ratio=mlp_ratio, norm_first=False,
                                          final_norm=False, drop=drop_rate, attn_drop=attn_drop_rate,
                                          act_layer=partial(nn.GELU, approximate="none"), norm_layer=norm)
        self.pooler = nn.Linear(embed_dim, embed_dim) if pooler else None
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # N(0, 0.02) everywhere, zero biases (sec. A.2 / the reference code's initializer_range).
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def encode(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
               key_padding_mask: torch.Tensor | None = None, *, need_weights: bool = False):
        """The sequence output (B, T, D), or ``(sequence_output, attention weights)`` with ``need_weights``."""
        if input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(f"BERT expects input token ids of shape (B, T), "
                             f"got {tuple(input_ids.shape)} {input_ids.dtype}")
        B, T = input_ids.shape
        if T > self.max_len:
            raise ValueError(f"input of {T} tokens is longer than the {self.max_len} learned positions")
        if key_padding_mask is None:
            key_padding_mask = input_ids == self.pad_id
        positions = torch.arange(T, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]  # (B, T, D)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embed_drop(self.embed_norm(x + self.token_type_embeddings(token_type_ids)))
        return self.encoder(x, key_padding_mask=key_padding_mask, need_weights=need_weights)

    def pool(self, x: torch.Tensor) -> torch.Tensor | None:
        """The pooler (dense + tanh) on the [CLS] state of a sequence output: (B, D), or None without pooler."""
        return torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, *, need_weights: bool = False):
        x = self.encode(input_ids, token_type_ids, key_padding_mask, need_weights=need_weights)
        x, weights = x if need_weights else (x, None)
        pooled = self.pool(x)
        return (x, pooled, weights) if need_weights else (x, pooled)


class BertForMaskedLM(nn.Module):
    """BERT encoder + MLM head; ``forward`` returns token logits (B, T, vocab_size)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.bert = BertModel(pooler=False, **kwargs)
        D, V = self.bert.embed_dim, self.bert.vocab_size
        self.transform = nn.Linear(D, D)
        self.transform_norm = nn.LayerNorm(D, eps=1e-12)
        self.decoder_bias = nn.Parameter(torch.zeros(V))
        self.num_classes, self.pad_id = V, self.bert.pad_id
        nn.init.normal_(self.transform.weight, std=0.02)
        nn.init.zeros_(self.transform.bias)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.bert(input_ids, token_type_ids, key_padding_mask)
        x = self.transform_norm(F.gelu(self.transform(x)))  # (B, T, D)
        return x @ self.bert.word_embeddings.weight.t() + self.decoder_bias  # tied output layer: (B, T, V)


class BertForSequenceClassification(ClassifierMixin, nn.Module):
    """BERT encoder with pooler + dropout + linear classifier; ``forward`` returns (B, num_classes).

    Classifier interface (:mod:`dltricks.models._classifier`): ``forward_features`` takes the same
    arguments as ``forward`` and returns the sequence output (B, T, D); ``forward_head`` applies the
    pooler to the [CLS] state and dropout (the pre-logit features) and ``classifier``.
    """

    head_attr = "classifier"

    def __init__(self, *, num_classes: int = 2, classifier_dropout: float = 0.1, **kwargs) -> None:
        super().__init__()
        self.bert = BertModel(pooler=True, **kwargs)
        self.num_classes, self.pad_id = num_classes, self.bert.pad_id
        self.num_features = self.bert.embed_dim
        self.drop = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(self.bert.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, std=0.02)
            nn.init.zeros_(self.classifier.bias)

    def forward_features(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                         key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.bert.encode(input_ids, token_type_ids, key_padding_mask)  # (B, T, D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.bert.pool(x))  # pooled [CLS] state: (B, D)
        return x if pre_logits else self.classifier(x)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(input_ids, token_type_ids, key_padding_mask))

    @torch.no_grad()
    def load_pretrained(self, mlm: BertForMaskedLM) -> BertForSequenceClassification:
        """Copy the encoder of a pre-trained :class:`BertForMaskedLM`; the pooler and classifier stay new."""
        missing, unexpected = self.bert.load_state_dict(mlm.bert.state_dict(), strict=False)
        if unexpected or any(not k.startswith("pooler") for k in missing):
            raise ModelError(f"encoder mismatch: missing {missing}, unexpected {unexpected}")
        return self

    @classmethod
    def from_pretrained_mlm(cls, mlm: BertForMaskedLM, *, num_classes: int, **kwargs) -> BertForSequenceClassification:
        bert = mlm.bert
        model = cls(num_classes=num_classes, vocab_size=bert.vocab_size, embed_dim=bert.embed_dim,
                    depth=len(bert.encoder.layers), num_heads=bert.encoder.layers[0].attn.num_heads,
                    max_len=bert.max_len, type_vocab_size=bert.token_type_embeddings.num_embeddings,
                    pad_id=bert.pad_id, **kwargs)
        return model.load_pretrained(mlm)


def mask_tokens(input_ids: torch.Tensor, *, mask_id: int, vocab_size: int, special_ids: tuple[int, ...] = (0,),
                mask_prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: returns (corrupted inputs, labels) with labels = original id at the chosen 15 %
    and ``IGNORE_INDEX`` elsewhere; chosen tokens become [MASK] (80 %), a random token (10 %) or stay (10 %).
    Special tokens (padding, [CLS], [SEP]...) are never chosen."""
    device = input_ids.device
    u = torch.rand(input_ids.shape, generator=generator, device=device)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in special_ids:
        special |= input_ids == sid
    chosen = (u < mask_prob) & ~special
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    inputs = input_ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    randomise = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    inputs[randomise] = random_ids[randomise]
    return inputs, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked positions (labels ≠ ``IGNORE_INDEX``)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def _token_input(model: nn.Module, batch: int) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.bert.vocab_size
    ids = torch.randint(1, vocab, (batch, 8), generator=g)
    ids[1:, 6:] = model.pad_id
    return (ids,)


_SIZES = {"tiny": (128, 2, 2), "mini": (256, 4, 4), "base": (768, 12, 12)}


def _mlm(size: str, **kwargs) -> BertForMaskedLM:
    D, L, A = _SIZES[size]
    return BertForMaskedLM(embed_dim=D, depth=L, num_heads=A, **kwargs)


def _cls(size: str, **kwargs) -> BertForSequenceClassification:
    D, L, A = _SIZES[size]
    return BertForSequenceClassification(embed_dim=D, depth=L, num_heads=A, **kwargs)


_MLM = dict(task="sequence", input_size=(128,), test_input_size=(8,), make_test_input=_token_input)
_CLS = dict(task="classification", input_size=(128,), test_input_size=(8,), make_test_input=_token_input)


@register_model(**_MLM)
def bert_tiny(*, num_classes: int = 30522, max_len: int = 512, drop_rate: float = 0.1,
              pad_id: int = 0) -> BertForMaskedLM:
    """BERT-Tiny (L=2, H=128, A=2) with the MLM head; ``num_classes`` is the vocabulary size."""
    return _mlm("tiny", vocab_size=num_classes, max_len=max_len, drop_rate=drop_rate, attn_drop_rate=drop_rate,
                pad_id=pad_id)


@register_model(**_MLM)
def bert_mini(*, num_classes: int = 30522, max_len: int = 512, drop_rate: float = 0.1,
              pad_id: int = 0) -> BertForMaskedLM:
    """BERT-Mini (L=4, H=256, A=4) with the MLM head."""
    return _mlm("mini", vocab_size=num_classes, max_len=max_len, drop_rate=drop_rate, attn_drop_rate=drop_rate,
                pad_id=pad_id)


@register_model(**_MLM)
def bert_base(*, num_classes: int = 30522, max_len: int = 512, drop_rate: float = 0.1,
              pad_id: int = 0) -> BertForMaskedLM:
    """BERT-Base (L=12, H=768, A=12) with the MLM head: 109,514,298 parameters (tied output layer)."""
    return _mlm("base", vocab_size=num_classes, max_len=max_len, drop_rate=drop_rate, attn_drop_rate=drop_rate,
                pad_id=pad_id)


@register_model(**_CLS)
def bert_tiny_cls(*, num_classes: int = 2, vocab_size: int = 30522, max_len: int = 512, drop_rate: float = 0.1,
                  pad_id: int = 0) -> BertForSequenceClassification:
    """BERT-Tiny encoder + pooler + classifier (sequence classification fine-tuning)."""
    return _cls("tiny", num_classes=num_classes, vocab_size=vocab_size, max_len=max_len, drop_rate=drop_rate,
                attn_drop_rate=drop_rate, classifier_dropout=drop_rate, pad_id=pad_id)

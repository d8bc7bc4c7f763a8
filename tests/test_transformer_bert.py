"""BERT: published parameter count, the 80/10/10 masking rule, MLM pre-training lowers the loss, and the
fine-tuning head starts from the pre-trained encoder."""

from __future__ import annotations

import torch

from dltricks import create_model
from dltricks.models.bert import (IGNORE_INDEX, BertForSequenceClassification, BertModel, mask_tokens, mlm_loss)


def test_bert_base_parameter_count():
    with torch.device("meta"):
        encoder = BertModel()  # bert-base-uncased: L=12, H=768, A=12, vocabulary 30,522, 512 positions
        mlm = create_model("bert_base")
    assert sum(p.numel() for p in encoder.parameters()) == 109_482_240
    assert sum(p.numel() for p in mlm.parameters()) == 109_514_298  # no pooler; tied decoder + bias + transform


def test_mask_tokens_follows_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 100), generator=g)
    ids[:, 0] = 1  # [CLS]
    ids[:, -10:] = 0  # padding
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=(0, 1), generator=g)
    chosen = labels != IGNORE_INDEX
    eligible = 200 * 89
    assert abs(chosen.sum().item() / eligible - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -10:].any()
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (inputs == 4) & chosen
    kept = (inputs == ids) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.02
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.02  # (+ random draws equal to the original)
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_mlm_pretraining_lowers_loss_and_finetuning_reuses_encoder():
    """A toy language whose tokens are predictable from context: sequences count up by one."""
    torch.manual_seed(0)
    vocab = 40
    mlm = create_model("bert_tiny", num_classes=vocab, max_len=32, drop_rate=0.0)
    optimizer = torch.optim.AdamW(mlm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch():
        start = torch.randint(5, 20, (32, 1), generator=g)
        return start + torch.arange(16)[None]  # ids 5 .. 35

    losses = []
    for _ in range(60):
        inputs, labels = mask_tokens(batch(), mask_id=4, vocab_size=vocab, special_ids=(0,), generator=g)
        loss = mlm_loss(mlm(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    classifier = BertForSequenceClassification.from_pretrained_mlm(mlm, num_classes=3)
    for name, p in mlm.bert.state_dict().items():
        torch.testing.assert_close(classifier.bert.state_dict()[name], p)
    assert classifier(batch()).shape == (32, 3)

"""RNN encoder-decoders: the step-by-step decoder agrees with the teacher-forced pass, padding is invisible,
attention weights are proper distributions."""

from __future__ import annotations

import pytest
import torch

from dltricks import create_model, list_models

SEQ2SEQ = list_models("seq2seq_*")


def make_src(vocab: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, vocab, (3, 7), generator=g)
    src[1, 5:] = 0
    src[2, 2:] = 0
    return src


def test_all_variants_registered():
    assert {"seq2seq_gru_additive", "seq2seq_gru_dot", "seq2seq_gru_general", "seq2seq_gru_noattn",
            "seq2seq_lstm_additive", "seq2seq_lstm_general", "seq2seq_lstm_noattn"} <= set(SEQ2SEQ)


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_greedy_decoding_matches_teacher_forcing(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=12, src_vocab_size=20, hidden_size=16, embed_dim=8).eval()
    src = make_src()
    tokens, attn = model.generate(src, max_len=6, bos_id=1, eos_id=2)
    prefix = torch.cat([torch.ones(3, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logits, weights = model.forward_with_attention(src, prefix)
    for b in range(3):
        stop = (tokens[b] == 2).nonzero()
        n = int(stop[0]) + 1 if len(stop) else tokens.shape[1]
        assert torch.equal(logits[b, :n].argmax(-1), tokens[b, :n])
        if attn is not None:
            torch.testing.assert_close(weights[b, :n], attn[b, :n])
    assert (attn is None) == name.endswith("noattn")


@pytest.mark.parametrize("name", ["seq2seq_gru_additive", "seq2seq_lstm_general", "seq2seq_gru_noattn"])
def test_source_padding_is_invisible(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=12, src_vocab_size=20, hidden_size=16, embed_dim=8).eval()
    src = make_src()
    tgt = torch.randint(3, 12, (3, 4))
    with torch.no_grad():
        full = model(src, tgt)
        trimmed = model(src[2:3, :2], tgt[2:3])  # the same sentence without its padding
    torch.testing.assert_close(trimmed, full[2:3], rtol=1e-5, atol=1e-6)


def test_attention_weights_are_distributions_over_real_tokens():
    torch.manual_seed(0)
    model = create_model("seq2seq_gru_additive", num_classes=12, src_vocab_size=20, hidden_size=16).eval()
    src = make_src()
    with torch.no_grad():
        _, w = model.forward_with_attention(src, torch.randint(3, 12, (3, 5)))
    assert w.shape == (3, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))
    assert (w[1, :, 5:] == 0).all() and (w[2, :, 2:] == 0).all()


def test_bad_inputs_raise_clear_errors():
    model = create_model("seq2seq_gru_dot")
    with pytest.raises(ValueError, match="token ids"):
        model(torch.randn(2, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="cell"):
        create_model("seq2seq_gru_dot").__class__(cell="rnn")

"""The shared suite: every registered model, the same contract.

For each name in ``list_models()``: output shape; one backward pass gives every parameter a finite
gradient; no NaN; a state_dict round-trip reproduces the output; eval mode is deterministic;
channels_last gives the same output; odd and too-small input sizes either work or raise a clear error
naming the minimum size. Every model whose registry task is ``classification`` also has the classifier
interface of :mod:`dltricks.models._classifier` (timm's names): ``forward`` equals
``forward_head(forward_features(x))``, ``pre_logits=True`` gives ``(B, head_hidden_size)``,
``get_classifier()`` is the last linear layer, and ``reset_classifier`` replaces it (``0`` removes it) without
renaming parameters. Per-model tests elsewhere only check what is special about a model.

Each model is built once per test (building the largest ones costs more than running them at the small
test input), and the round-trip target is a deep copy whose every state entry has been scrambled, so a
tensor missing from ``state_dict()`` shows up as a different output.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dltricks import create_model, list_models, model_info
from dltricks.models._registry import model_entrypoint
from dltricks.errors import ModelError

ALL_MODELS = list_models()
NUM_CLASSES = 7


def build(name: str) -> nn.Module:
    info = model_info(name)
    torch.manual_seed(0)
    kwargs = {"num_classes": NUM_CLASSES} if info.task in ("classification", "segmentation") else {}
    return create_model(name, **kwargs)


def example_input(name: str, model: nn.Module, batch: int = 2,
                  size: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
    info = model_info(name)
    if info.make_test_input is not None and size is None:
        return tuple(info.make_test_input(model, batch))
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, *(size or info.test_input_size), generator=generator),)


def main_output(out: object) -> torch.Tensor:
    """Models with auxiliary heads may return (logits, aux...) in training mode."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return main_output(out[0])
    if isinstance(out, dict):  # detectors: every dense output (logits, boxes, anchors...), flattened per image
        return torch.cat([v.flatten(1).float() for v in out.values() if isinstance(v, torch.Tensor)], dim=1)
    raise TypeError(f"unexpected output type {type(out)}")


def scrambled_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and persistent buffers all hold other values."""
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for tensor in clone.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
            else:
                tensor.add_(1)
    return clone


def check_size(name: str, model: nn.Module, size: int) -> None:
    """An input of ``size x size`` works (right output size) or raises a clear error."""
    info = model_info(name)
    channels = info.test_input_size[0]
    x = torch.randn(1, channels, size, size)
    try:
        with torch.no_grad():
            out = main_output(model(x))
    except (ValueError, ModelError) as err:
        message = str(err)
        assert "input" in message.lower(), f"error for {size}x{size} does not say what input was expected: {message}"
        if info.min_input_size is not None:
            assert str(info.min_input_size) in message, \
                f"error does not name the minimum size {info.min_input_size}: {message}"
        return
    assert torch.isfinite(out).all()
    if info.task == "segmentation":
        assert out.shape[-2:] == (size, size)


def check_classifier_interface(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """The classifier contract of :mod:`dltricks.models._classifier`, on an already-built model.

    Runs in eval mode at the suite's small test input; ends with the model's classifier removed.
    """
    batch = inputs[0].shape[0]
    model.eval()
    with torch.no_grad():
        logits = model(*inputs)
        assert isinstance(logits, torch.Tensor)
        features = model.forward_features(*inputs)
        # forward is forward_head(forward_features(x)): the same numbers, not merely close ones.
        torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)
        assert model.num_features in (features.shape[1], features.shape[-1]), \
            f"num_features {model.num_features} is not the width of forward_features' output {tuple(features.shape)}"
        pre_logits = model.forward_head(features, pre_logits=True)
    hidden = model.head_hidden_size
    assert pre_logits.shape == (batch, hidden)

    # get_classifier() is the last layer: a linear map from the pre-logit features to the logits.
    head = model.get_classifier()
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (hidden, NUM_CLASSES) and model.num_classes == NUM_CLASSES
    with torch.no_grad():
        torch.testing.assert_close(head(pre_logits), logits, rtol=0, atol=0)

    # reset_classifier(n): a fresh last layer, same parameter names; first to another size, then back.
    keys = list(model.state_dict())
    for num_classes in (NUM_CLASSES - 4, NUM_CLASSES):
        model.reset_classifier(num_classes)
        new_head = model.get_classifier()
        assert isinstance(new_head, nn.Linear) and new_head is not head
        assert (new_head.in_features, new_head.out_features) == (hidden, num_classes)
        assert model.num_classes == num_classes
        assert list(model.state_dict()) == keys, "reset_classifier changed the state_dict keys"
        with torch.no_grad():
            out = model(*inputs)
        assert out.shape == (batch, num_classes) and torch.isfinite(out).all()

    # reset_classifier(0): no last layer, forward returns the pre-logit features.
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == (batch, hidden)
    torch.testing.assert_close(out, pre_logits, rtol=0, atol=0)


def test_registry_is_not_empty() -> None:
    assert len(ALL_MODELS) >= 3


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_contract(name: str) -> None:
    info = model_info(name)
    model = build(name)
    inputs = example_input(name, model)

    # Output shape, no NaN, and a backward pass reaching every parameter.
    model.train()
    out = main_output(model(*inputs))
    assert torch.isfinite(out).all(), "non-finite output"
    if info.task == "classification":
        assert out.shape == (inputs[0].shape[0], NUM_CLASSES)
    elif info.task == "segmentation":
        assert out.shape == (inputs[0].shape[0], NUM_CLASSES, *inputs[0].shape[-2:])
    else:
        assert out.shape[0] == inputs[0].shape[0]
    out.float().square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    model.zero_grad(set_to_none=True)

    # Eval mode is deterministic.
    model.eval()
    with torch.no_grad():
        first = main_output(model(*inputs))
        second = main_output(model(*inputs))
    torch.testing.assert_close(first, second, rtol=0, atol=0)

    # state_dict round-trip into a copy whose state was scrambled.
    clone = scrambled_copy(model)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(clone(*inputs)), first)
    del clone

    # Odd and too-small inputs work or raise a clear error (image models with default inputs).
    if len(info.test_input_size) == 3 and info.make_test_input is None:
        for size in (info.test_input_size[1] + 1, 2):
            check_size(name, model, size)

    # channels_last gives the same output for image models.
    if inputs[0].dim() == 4 and inputs[0].is_floating_point():
        model_cl = model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            out_cl = main_output(model_cl(*(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                                          for x in inputs)))
        # float32 rounding differs between memory layouts; it grows with the output's magnitude (an
        # untrained deep net in eval mode can reach |logits| ~ 1e4 with its initial BN running stats).
        scale = max(1.0, first.abs().max().item())
        torch.testing.assert_close(out_cl, first, rtol=1e-4, atol=1e-4 * scale)

    # The classifier interface (last: it replaces the classifier).
    if info.task == "classification":
        check_classifier_interface(model, inputs)


CLASSIFICATION_MODELS = list_models(task="classification")


def test_classification_task_is_registered() -> None:
    assert len(CLASSIFICATION_MODELS) >= 3 and set(CLASSIFICATION_MODELS) <= set(ALL_MODELS)


# One small model per way of holding the last layer: an attribute (``fc``/``head``/``classifier``), an index
# of an nn.Sequential, a submodule of a head module, a bias-free layer, a text model.
@pytest.mark.parametrize("name", ["lenet5", "mnist_example_cnn", "speedrun_cnn", "mobilenet_v2", "resnet20",
                                  "mambaout_cifar_mini", "vit_cifar_patch4_32", "mamba_cls_tiny", "bert_tiny_cls"])
def test_num_classes_zero_at_construction(name: str) -> None:
    """``num_classes=0`` builds the model without its last layer, like ``reset_classifier(0)``."""
    torch.manual_seed(0)
    model = model_entrypoint(name)(num_classes=0).eval()  # create_model accepts only num_classes >= 1
    inputs = example_input(name, model)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    with torch.no_grad():
        out = model(*inputs)
        pre_logits = model.forward_head(model.forward_features(*inputs), pre_logits=True)
    assert out.shape == (inputs[0].shape[0], model.head_hidden_size)
    torch.testing.assert_close(out, pre_logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_reset_classifier_resets_auxiliary_heads(name: str) -> None:
    """With ``aux_logits=True`` every training-mode output follows ``reset_classifier``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, aux_logits=True)
    x = example_input(name, model)[0]
    keys = list(model.state_dict())
    model.reset_classifier(3)
    assert list(model.state_dict()) == keys
    model.train()
    outputs = model(x)
    assert isinstance(outputs, tuple) and len(outputs) == (3 if name == "googlenet" else 2)
    assert all(out.shape == (x.shape[0], 3) for out in outputs)
    # The main logits still come from forward_head(forward_features(x)) (compared in eval mode: dropout).
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x), rtol=0, atol=0)

"""One classifier interface for every classification model, with timm's method names and semantics.

Every model registered with ``task="classification"`` (see :class:`~dltricks.models.ModelInfo`) has:

* ``forward_features(x)``: the features before pooling and head - a feature map ``(B, C, H, W)`` for
  CNNs (``(B, H, W, C)`` for the channels-last Swin and MambaOut), the token sequence ``(B, N, D)`` for
  Transformers, Mixers, Vision Mamba, BERT and the sequence models. Input checks happen here.
* ``forward_head(x, pre_logits=False)``: pooling, whatever sits between pooling and the last linear
  layer (a final norm, dropout, hidden FC layers), and that layer: logits ``(B, num_classes)``; with
  ``pre_logits=True`` it stops before the last layer and returns ``(B, head_hidden_size)``.
* ``forward(x)``: literally ``forward_head(forward_features(x))``, so both paths give the same numbers.
  (GoogLeNet and Inception v3 with ``aux_logits=True`` also return their auxiliary logits in training
  mode; their main logits still come from ``forward_head(forward_features(x))``.)
* ``get_classifier()``: the last layer, the module at :attr:`ClassifierMixin.head_attr`
  (``nn.Identity`` when ``num_classes == 0``).
* ``reset_classifier(num_classes)``: a freshly initialised ``nn.Linear(head_hidden_size, num_classes)``
  in its place (``nn.Identity`` for 0, so ``forward`` returns the pre-logit features) and
  ``model.num_classes`` updated. Parameter names do not change (``fc.weight``, ``classifier.6.weight``...).

Widths, as timm names them: ``num_features`` is the channel (or embedding) width of ``forward_features``'
output; ``head_hidden_size`` is the width of the pre-logit features, the input of ``get_classifier()``. They
are equal unless the head has hidden layers (the FC stacks of VGG, AlexNet, LeNet-5 and the PyTorch MNIST
example CNN, MambaOut's MLP head) or flattens a map (``speedrun_cnn``).

Exempt, by the registry's ``task`` field and not by a list of names: ``"sequence"`` models (language-model
heads giving per-token logits over a vocabulary), ``"seq2seq"`` encoder-decoders and ``"segmentation"``
models. The shared suite (``tests/test_models.py``) checks the interface for every other model.
:class:`~dltricks.models.mamba.SequenceModel` implements it for any ``pool``; with ``pool=None`` the head is
the per-token linear layer and the logits are ``(B, L, num_classes)``.

A family mixes :class:`ClassifierMixin` into its ``nn.Module``, names its last layer in ``head_attr``, sets
``num_classes`` and ``num_features`` (and ``head_hidden_size`` where it differs) and writes its own
``forward_features`` / ``forward_head`` / ``forward``; the mixin supplies ``get_classifier`` and
``reset_classifier``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ClassifierMixin"]


class ClassifierMixin:
    """``get_classifier`` / ``reset_classifier`` for an ``nn.Module`` whose last layer sits at ``head_attr``.

    Class attributes (a family may also set them per instance):
        head_attr: dotted path of the last layer inside the model: ``"fc"``, ``"head"``, ``"classifier.6"``
            (index 6 of an ``nn.Sequential``), ``"head.fc2"``...
        head_bias: whether :meth:`reset_classifier` gives the new linear layer a bias.
    """

    head_attr: str = "head"
    head_bias: bool = True
    num_classes: int
    num_features: int

    @property
    def head_hidden_size(self) -> int:
        """Width of the pre-logit features (the last layer's input); ``num_features`` unless set."""
        return self.__dict__.get("_head_hidden_size", self.num_features)

    @head_hidden_size.setter
    def head_hidden_size(self, value: int) -> None:
        self.__dict__["_head_hidden_size"] = int(value)

    def get_classifier(self) -> nn.Module:
        """The last layer (``nn.Linear``, or ``nn.Identity`` when ``num_classes == 0``)."""
        return self.get_submodule(self.head_attr)  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer by a fresh ``nn.Linear(head_hidden_size, num_classes)``; 0 removes it.

        The new layer gets PyTorch's default initialisation and the device and dtype of the model's
        parameters. Its parameter names are those of the layer it replaces.
        """
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self._replace_module(self.head_attr, self._new_classifier(num_classes))

    def _new_classifier(self, num_classes: int, in_features: int | None = None) -> nn.Module:
        """``nn.Linear(in_features or head_hidden_size, num_classes)``, or ``nn.Identity`` for 0 classes."""
        if num_classes <= 0:
            return nn.Identity()
        layer = nn.Linear(self.head_hidden_size if in_features is None else in_features, num_classes,
                          bias=self.head_bias)
        reference = next((p for p in self.parameters() if p.is_floating_point()), None)  # type: ignore[attr-defined]
        if reference is not None:
            layer = layer.to(device=reference.device, dtype=reference.dtype)
        return layer

    def _replace_module(self, path: str, module: nn.Module) -> None:
        parent_path, _, name = path.rpartition(".")
        parent = self.get_submodule(parent_path) if parent_path else self  # type: ignore[attr-defined]
        setattr(parent, name, module)

"""Weights from a file saved by timm or torchvision, loaded into the dltricks model of the same architecture.

Twenty of our architectures compute exactly the function of timm's (or torchvision's) model of the same
name; only some parameter names differ. :func:`load_pretrained` reads a state dict (``.safetensors``, or a
``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``, so a pickle that would run code is
refused, never executed), renames its keys with the explicit rules of the model's family
(:data:`KEY_RULES`), and copies every tensor into the model:

* a key that matches no parameter, a parameter that the file lacks, or a tensor of the wrong shape outside
  the classifier is a :class:`~dltricks.errors.ModelError` that names the first mismatches (a file for
  another architecture stops here);
* a classifier of another size (ImageNet's 1000 classes into a 10-class model) is not copied: the head
  keeps its fresh initialisation, and the returned :class:`LoadReport` says so.

The rules map a *reference* key to *our* key. Families whose names already agree (ResNet, DenseNet, ViT,
MLP-Mixer, Inception v3, VGG) need none; the others are spelled out below and tested key by key against
the manifests of ``../shared/fixtures/timm`` (``tests/test_pretrained.py``).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dltricks.errors import ModelError

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "map_reference_keys", "check_fit", "KEY_RULES"]

Rules = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: the file, the key rules used, and the head left at its initialisation."""

    path: str
    rules: str
    loaded: int
    head_reinitialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = (f"; head re-initialised ({', '.join(self.head_reinitialised)}: other number of classes)"
                if self.head_reinitialised else "")
        return f"loaded {self.loaded} tensors from {self.path} ({self.rules} names){head}"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a weight file and its metadata (safetensors only); any unreadable file is a ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained weights {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as err:  # safetensors raises its own error types for truncated or corrupt headers
            raise ModelError(f"pretrained weights {str(path)!r}: not a readable safetensors file "
                             f"({_first_line(err)})") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # the weights-only unpickler met something other than tensors
        raise ModelError(f"pretrained weights {str(path)!r}: refused, the file is a pickle that needs more than "
                         f"tensors ({_refused_global(err)}); nothing in it was run") from None
    except Exception as err:  # RuntimeError/OSError/EOFError for a truncated or foreign file
        raise ModelError(f"pretrained weights {str(path)!r}: unreadable with torch.load(weights_only=True), "
                         f"truncated or not a PyTorch file ({_first_line(err)})") from None
    for wrapper in ("state_dict", "model", "model_state"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ModelError(f"pretrained weights {str(path)!r}: expected a state dict (names -> tensors), "
                         f"got {type(obj).__name__}")
    bad = next(((k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise ModelError(f"pretrained weights {str(path)!r}: expected a state dict (names -> tensors), but entry "
                         f"{bad[0]!r} is a {type(bad[1]).__name__}")
    return dict(obj), {}


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an error message (at most 120 characters), or the error's type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:120] if lines else type(err).__name__


def _refused_global(err: BaseException) -> str:
    """What torch's weights-only unpickler refused: a callable such as ``posix.system``, or an opcode."""
    text = str(err)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"it would call {match.group(1)}"
    match = re.search(r"Unsupported operand \d+", text)
    return match.group(0) if match else _first_line(err)


# ----- key rules, one per family -------------------------------------------------------------------------------

def _substitute(pairs: list[tuple[str, str]]) -> Rules:
    """Rules as ``(pattern, replacement)`` regexes; the first pattern that matches a key renames it."""
    compiled = [(re.compile(p), r) for p, r in pairs]

    def apply(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state.items():
            for pattern, repl in compiled:
                if pattern.match(key):
                    key = pattern.sub(repl, key, count=1)
                    break
            out[key] = value
        return out

    return apply


# timm's EfficientNet/MobileNet blocks name their convolutions and number their BatchNorms in forward order
# (bn1 after the first conv...); ours keep each norm next to its conv (``conv_dw.conv`` + ``conv_dw.norm``).
# Forward order per block kind, as (timm conv name, our module name):
_TIMM_BLOCK_KINDS: list[tuple[frozenset[str], list[tuple[str, str]]]] = [
    (frozenset({"conv"}), [("conv", "conv_exp")]),  # ConvBnAct (EfficientNetV2's fused stage without expansion)
    (frozenset({"conv_dw", "conv_pw"}), [("conv_dw", "conv_dw"), ("conv_pw", "conv_pwl")]),  # depthwise-separable
    (frozenset({"conv_exp", "conv_pwl"}), [("conv_exp", "conv_exp"), ("conv_pwl", "conv_pwl")]),  # fused MBConv
    (frozenset({"conv_pw", "conv_dw", "conv_pwl"}),  # inverted residual (MBConv)
     [("conv_pw", "conv_pw"), ("conv_dw", "conv_dw"), ("conv_pwl", "conv_pwl")]),
]
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)$")


def _timm_effnet_block(convs: set[str]) -> dict[str, str]:
    """timm name (``conv_dw``, ``bn2``...) -> our module path (``conv_dw.conv``, ``conv_dw.norm``) in one block."""
    for kind, order in _TIMM_BLOCK_KINDS:
        if convs == kind:
            names = {}
            for i, (theirs, ours) in enumerate(order, start=1):
                names[theirs] = f"{ours}.conv"
                names[f"bn{i}"] = f"{ours}.norm"
            return names | {"se": "se"}
    raise ModelError(f"timm block with convolutions {sorted(convs)} is not a known EfficientNet block")


def _timm_effnet_blocks(state: dict[str, torch.Tensor], block_prefix: Callable[[int, int], str]
                        ) -> dict[str, torch.Tensor]:
    convs: dict[tuple[int, int], set[str]] = {}
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m and m[3].startswith("conv") and m[4] == "weight":
            convs.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    names = {block: _timm_effnet_block(c) for block, c in convs.items()}
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m and (int(m[1]), int(m[2])) in names:
            part = names[int(m[1]), int(m[2])].get(m[3], m[3])
            rest = m[4].replace("conv_reduce.", "fc1.").replace("conv_expand.", "fc2.")
            key = f"{block_prefix(int(m[1]), int(m[2]))}.{part}.{rest}"
        out[key] = value
    return out


def _timm_efficientnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = _timm_effnet_blocks(state, lambda s, b: f"blocks.{s}.{b}")
    return _substitute([(r"^conv_stem\.", "stem.conv."), (r"^bn1\.", "stem.norm."),
                        (r"^conv_head\.", "conv_head.conv."), (r"^bn2\.", "conv_head.norm.")])(state)


def _timm_mobilenetv2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Our MobileNetV2 is one flat ``features`` Sequential: stem, then every block in order, then the 1x1 head conv.
    blocks = sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK_KEY.match, state) if m})
    index = {block: i + 1 for i, block in enumerate(blocks)}
    state = _timm_effnet_blocks(state, lambda s, b: f"features.{index[s, b]}")
    last = len(blocks) + 1
    return _substitute([(r"^conv_stem\.", "features.0.conv."), (r"^bn1\.", "features.0.norm."),
                        (r"^conv_head\.", f"features.{last}.conv."), (r"^bn2\.", f"features.{last}.norm."),
                        (r"^classifier\.", "classifier.1.")])(state)


# torchvision's EfficientNets number everything: ``features.0`` is the stem, ``features.S.B.block.I`` is child I
# of block B of stage S (a Conv-BN-act as ``I.0``/``I.1``, or the squeeze-excitation as ``I.fc1``/``I.fc2``), the
# last ``features.N`` is the 1x1 head conv and ``classifier.1`` the Linear after the Dropout. A block's kind
# follows from how many Conv-BN children it has and whether it has an SE; our module names in forward order:
_TV_BLOCK_KINDS: dict[tuple[int, bool], list[str]] = {
    (1, False): ["conv_exp"],  # FusedMBConv without expansion (EfficientNetV2's first stage)
    (2, False): ["conv_exp", "conv_pwl"],  # FusedMBConv
    (2, True): ["conv_dw", "conv_pwl"],  # MBConv without expansion (depthwise-separable + SE)
    (3, True): ["conv_pw", "conv_dw", "conv_pwl"],  # MBConv
}
_TV_BLOCK_KEY = re.compile(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$")
_TV_LAYER_KEY = re.compile(r"^features\.(\d+)\.([01])\.(.+)$")


def _torchvision_efficientnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    children: dict[tuple[int, int], dict[int, bool]] = {}  # block -> {child index: is the SE}
    for key in state:
        m = _TV_BLOCK_KEY.match(key)
        if m:
            children.setdefault((int(m[1]), int(m[2])), {})[int(m[3])] = m[4].startswith("fc")
    names: dict[tuple[int, int], dict[int, str]] = {}
    for block, kids in children.items():
        convs = sorted(i for i, is_se in kids.items() if not is_se)
        kind = (len(convs), len(convs) < len(kids))
        if kind not in _TV_BLOCK_KINDS:
            raise ModelError(f"torchvision block features.{block[0]}.{block[1]} with {kind[0]} convolutions "
                             f"{'and' if kind[1] else 'without'} squeeze-excitation is not a known EfficientNet block")
        names[block] = dict(zip(convs, _TV_BLOCK_KINDS[kind])) | {i: "se" for i, is_se in kids.items() if is_se}
    last = max((int(m[1]) for m in map(_TV_LAYER_KEY.match, state) if m and not _TV_BLOCK_KEY.match(m[0])),
               default=-1)
    out = {}
    for key, value in state.items():
        m = _TV_BLOCK_KEY.match(key)
        if m:
            stage, block, part = int(m[1]), int(m[2]), names[int(m[1]), int(m[2])][int(m[3])]
            rest = m[4] if part == "se" else {"0": "conv", "1": "norm"}[m[4][0]] + m[4][1:]
            key = f"blocks.{stage - 1}.{block}.{part}.{rest}"
        elif (m := _TV_LAYER_KEY.match(key)) and int(m[1]) in (0, last):
            key = f"{'stem' if m[1] == '0' else 'conv_head'}.{'conv' if m[2] == '0' else 'norm'}.{m[3]}"
        elif key.startswith("classifier.1."):
            key = "classifier." + key[len("classifier.1."):]
        out[key] = value
    return out


# timm's legacy Xception numbers its modules block1..block12 (three entry, eight middle, one exit module) and
# calls the separable conv's halves ``conv1``/``pointwise``; its ``rep`` Sequential has our ``main``'s layout
# (ReLU, SepConv, BN, ..., MaxPool) index for index, and ``skip``/``skipbn`` are our shortcut's conv and BN.
_XCEPTION_ENTRY = 3


def _timm_xception(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    blocks = sorted({int(m[1]) for m in map(re.compile(r"^block(\d+)\.").match, state) if m})
    exit_block = blocks[-1] if blocks else 0

    def flow(n: int) -> str:
        if n <= _XCEPTION_ENTRY:
            return f"entry.{n - 1}"
        return "exit.0" if n == exit_block else f"middle.{n - _XCEPTION_ENTRY - 1}"

    renamed = {}
    for key, value in state.items():
        m = re.match(r"^block(\d+)\.(.+)$", key)
        renamed[f"{flow(int(m[1]))}.{m[2]}" if m else key] = value
    return _substitute([
        (r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^conv2\.", "stem.3."), (r"^bn2\.", "stem.4."),
        (r"^(entry|middle|exit)\.(\d+)\.skip\.", r"\1.\2.shortcut.0."),
        (r"^(entry|middle|exit)\.(\d+)\.skipbn\.", r"\1.\2.shortcut.1."),
        (r"^(entry|middle|exit)\.(\d+)\.rep\.(\d+)\.conv1\.", r"\1.\2.main.\3.conv_dw."),
        (r"^(entry|middle|exit)\.(\d+)\.rep\.(\d+)\.pointwise\.", r"\1.\2.main.\3.conv_pw."),
        (r"^(entry|middle|exit)\.(\d+)\.rep\.", r"\1.\2.main."),
        (r"^conv3\.conv1\.", "exit.1.conv_dw."), (r"^conv3\.pointwise\.", "exit.1.conv_pw."), (r"^bn3\.", "exit.2."),
        (r"^conv4\.conv1\.", "exit.4.conv_dw."), (r"^conv4\.pointwise\.", "exit.4.conv_pw."), (r"^bn4\.", "exit.5."),
    ])(renamed)


KEY_RULES: dict[str, dict[str, Rules]] = {
    # family -> {reference format -> rules}; "identity" is always tried too.
    "resnet": {"timm": _substitute([(r"^(layer\d+\.\d+)\.se\.", r"\1.attn.")])},
    "convnext": {"timm": _substitute([(r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head.")])},
    "mambaout": {"timm": _substitute([
        (r"^stages\.(\d+)\.blocks\.", r"stages.\1."), (r"^stages\.(\d+)\.downsample\.", r"downsamples.\1."),
        (r"^head\.norm\.", "norm."), (r"^head\.pre_logits\.fc\.", "head.fc1."),
        (r"^head\.pre_logits\.norm\.", "head.norm."), (r"^head\.fc\.", "head.fc2.")])},
    "swin": {"timm": _substitute([
        (r"^layers\.(\d+)\.(blocks\.\d+\.attn)\.relative_position_bias_table",
         r"stages.\1.\2.rel_pos.relative_position_bias_table"),
        (r"^layers\.", "stages."), (r"^head\.fc\.", "head.")])},
    "efficientnet": {"timm": _timm_efficientnet, "torchvision": _torchvision_efficientnet},
    "mobilenet": {"timm": _timm_mobilenetv2},
    "xception": {"timm": _timm_xception},
}


def map_reference_keys(model: nn.Module, family: str, state: dict[str, torch.Tensor], *,
                       fmt: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """``state`` renamed to ``model``'s parameter names: with the rules of format ``fmt`` when given, else with
    whichever of the family's rules (or no renaming) matches most of the model's keys."""
    candidates: dict[str, Rules] = {"identity": lambda s: dict(s), **KEY_RULES.get(family, {})}
    if fmt is not None and fmt in candidates:
        candidates = {fmt: candidates[fmt]}
    ours = set(model.state_dict())
    best: tuple[int, str, dict[str, torch.Tensor]] | None = None
    for name, rules in candidates.items():
        mapped = rules(state)
        score = len(ours & set(mapped))
        if best is None or score > best[0]:
            best = (score, name, mapped)
    assert best is not None
    return best[1], best[2]


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_fit(model: nn.Module, mapped: dict[str, torch.Tensor], *, what: str) -> list[str]:
    """The classifier keys of ``mapped`` whose shape differs from ``model``'s (to leave at their initialisation);
    any other mismatch (unexpected or missing key, wrong shape) is a ModelError that starts with ``what``."""
    own = model.state_dict()
    head_attr = getattr(model, "head_attr", None)
    head_keys = {f"{head_attr}.{p}" for p in ("weight", "bias")} if head_attr else set()
    unexpected = [k for k in mapped if k not in own]
    missing = [k for k in own if k not in mapped]
    wrong_shape = [k for k in mapped if k in own and mapped[k].shape != own[k].shape]
    head_reinit = [k for k in wrong_shape if k in head_keys]
    wrong_shape = [k for k in wrong_shape if k not in head_keys]
    problems = []
    if wrong_shape:
        problems.append("wrong shape: " + _first([f"{k} {tuple(mapped[k].shape)} vs ours {tuple(own[k].shape)}"
                                                  for k in wrong_shape]))
    if missing:
        problems.append(f"missing: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_first(unexpected)}")
    if problems:
        raise ModelError(f"{what}: " + "; ".join(problems))
    return head_reinit


def load_pretrained(model: nn.Module, path: str | Path, *, family: str, name: str = "") -> LoadReport:
    """Copy the weights of ``path`` (timm, torchvision or dltricks names) into ``model`` (module docstring)."""
    state, meta = read_state_dict(path)
    rules, mapped = map_reference_keys(model, family, state, fmt=meta.get("format"))
    arch = f" (for {meta['arch']})" if meta.get("arch") else ""
    head_reinit = check_fit(model, mapped, what=f"pretrained weights {str(path)!r}{arch} do not fit model "
                                                f"{name or type(model).__name__} ({rules} names)")
    own = model.state_dict()
    with torch.no_grad():
        for key, value in mapped.items():
            if key not in head_reinit:
                own[key].copy_(value.to(own[key].dtype))
    return LoadReport(path=str(path), rules=rules, loaded=len(mapped) - len(head_reinit),
                      head_reinitialised=head_reinit)

"""The trainer's parts against references: schedules vs torch.optim.lr_scheduler, optimizers and weight-decay
groups vs torch.optim, EMA vs torch.optim.swa_utils.AveragedModel, clipping vs its definition, gradient
accumulation vs one large batch, label smoothing vs nn.CrossEntropyLoss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.testing import assert_close

from dltricks.errors import ConfigError
from dltricks.train.ema import ModelEma
from dltricks.train.optim import build_optimizer, param_groups
from dltricks.train.recipe import load_recipe
from dltricks.train.runtime import deterministic_mode, resolve_channels_last, resolve_device, resolve_precision
from dltricks.train.schedule import LRSchedule
from dltricks.tasks.base import classification_loss
from dltricks.train.trainer import _Trainer
from train_helpers import tiny_cnn, tiny_mlp, toy_task

# --------------------------------------------------------------------------------------------------
# Schedules


def _torch_lrs(make_scheduler, steps: int, lr: float = 0.1, per: int = 1) -> list[float]:
    """lr used at each step by a torch scheduler stepped every ``per`` optimizer steps."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for step in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (step + 1) % per == 0:
            sched.step()
    return lrs


def _ours(overrides: list[str], steps_per_epoch: int, epochs: int, lr: float = 0.1) -> list[float]:
    schedule = LRSchedule(load_recipe(None, overrides).schedule, steps_per_epoch, epochs)
    return [lr * schedule(s) for s in range(steps_per_epoch * epochs)]


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_step_multistep_exponential_match_torch_at_epoch_boundaries(interval):
    spe, epochs = 5, 8
    S = torch.optim.lr_scheduler
    cases = [
        (["schedule.name=step", "schedule.step_epochs=3", "schedule.gamma=0.5"], lambda o: S.StepLR(o, 3, 0.5)),
        (["schedule.name=multistep", "schedule.milestones=[2, 5]", "schedule.gamma=0.1"],
         lambda o: S.MultiStepLR(o, [2, 5], 0.1)),
        (["schedule.name=exponential", "schedule.gamma=0.8"], lambda o: S.ExponentialLR(o, 0.8)),
        (["schedule.name=cosine", "schedule.min_lr_factor=0.1"],
         lambda o: S.CosineAnnealingLR(o, epochs, eta_min=0.01)),
        (["schedule.name=constant"], lambda o: S.ConstantLR(o, factor=1.0)),
    ]
    for overrides, make in cases:
        ours = _ours([*overrides, f"schedule.interval={interval}"], spe, epochs)
        ref = _torch_lrs(make, spe * epochs, per=spe)
        if interval == "epoch":  # piecewise constant within epochs: equal at every step
            assert_close(ours, ref, rtol=1e-9, atol=1e-12)
        else:  # per-step curve passes through the per-epoch values at epoch starts
            assert_close(ours[::spe], ref[::spe], rtol=1e-9, atol=1e-12)


def test_per_step_cosine_matches_torch_stepped_every_step():
    spe, epochs = 7, 3
    ours = _ours(["schedule.name=cosine"], spe, epochs)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, spe * epochs), spe * epochs)
    assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_onecycle_matches_torch():
    spe, epochs = 10, 4
    ours = _ours(["schedule.name=onecycle", "schedule.pct_start=0.3", "schedule.div_factor=10",
                  "schedule.final_div_factor=100"], spe, epochs)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=spe * epochs, pct_start=0.3, div_factor=10, final_div_factor=100,
        cycle_momentum=False), spe * epochs)
    assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("total,pct_start", [(10, 0.15), (10, 0.95), (7, 0.5)])
def test_onecycle_matches_torch_when_a_phase_is_shorter_than_one_step(total, pct_start):
    """The peak at pct_start * total - 1 may fall between steps or less than one step from either end."""
    ours = _ours(["schedule.name=onecycle", f"schedule.pct_start={pct_start}"], total, 1)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=total, pct_start=pct_start, cycle_momentum=False), total)
    assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_onecycle_edges_torch_does_not_define():
    # pct_start * total = 1: the rising phase is empty (torch divides by zero there); the first step is the peak.
    schedule = LRSchedule(load_recipe(None, ["schedule.name=onecycle", "schedule.pct_start=0.1"]).schedule, 10, 1)
    assert schedule(0) == 1.0 and schedule(1) < 1.0
    # Past the last step the factor stays at its final value (1 / (div_factor * final_div_factor)).
    schedule = LRSchedule(load_recipe(None, ["schedule.name=onecycle"]).schedule, 10, 1)
    assert schedule(9) == pytest.approx(1 / 25e4) and schedule(12) == schedule(9)


def test_cosine_stays_at_its_floor_past_the_end_and_unknown_shapes_are_named():
    config = load_recipe(None, ["schedule.name=cosine", "schedule.min_lr_factor=0.1"]).schedule
    schedule = LRSchedule(config, 5, 2)
    assert schedule(10) == pytest.approx(0.1) and schedule(13) == schedule(10)
    with pytest.raises(ValueError, match="'bogus'"):  # past the recipe's check, e.g. a config built by hand
        LRSchedule(dataclasses.replace(config, name="bogus"), 5, 2)(0)


def test_onecycle_per_epoch_matches_torch_stepped_every_epoch():
    spe, epochs = 5, 6
    ours = _ours(["schedule.name=onecycle", "schedule.interval=epoch", "schedule.pct_start=0.4"], spe, epochs)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=epochs, pct_start=0.4, cycle_momentum=False), spe * epochs, per=spe)
    assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_linear_warmup_in_front_of_any_schedule():
    spe, epochs = 10, 5
    lrs = _ours(["schedule.name=cosine", "schedule.warmup_epochs=1.5", "schedule.warmup_start_factor=0.1"], spe, epochs)
    plain = _ours(["schedule.name=cosine"], spe, epochs)
    W = 15
    for step in range(W):
        assert lrs[step] == pytest.approx(plain[step] * (0.1 + 0.9 * (step + 1) / W))
    assert lrs[W:] == plain[W:]
    assert all(b > a for a, b in zip(lrs[:W - 1], lrs[1:W]))  # rises during warm-up


# --------------------------------------------------------------------------------------------------
# Optimizers and weight decay groups


def test_skip_norm_bias_groups():
    model = tiny_cnn()
    groups = param_groups(model, weight_decay=0.1, skip_norm_bias=True)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    for name, p in model.named_parameters():
        if p.ndim > 1:
            assert id(p) in decay, name
        else:  # BN weights/biases and the head bias
            assert id(p) in no_decay, name
    assert len(param_groups(model, weight_decay=0.1, skip_norm_bias=False)) == 1


@pytest.mark.parametrize("overrides, cls, expected", [
    (["optim.name=sgd", "optim.momentum=0"], torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    (["optim.name=sgd", "optim.nesterov=true"], torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    (["optim.name=adam", "optim.betas=[0.8, 0.99]", "optim.eps=1.0e-6"], torch.optim.Adam,
     {"betas": (0.8, 0.99), "eps": 1e-6}),
    (["optim.name=adamw", "optim.weight_decay=0.05"], torch.optim.AdamW, {"weight_decay": 0.05}),
    (["optim.name=rmsprop", "optim.alpha=0.9", "optim.momentum=0.5"], torch.optim.RMSprop,
     {"alpha": 0.9, "momentum": 0.5}),
    (["optim.name=adadelta", "optim.rho=0.95"], torch.optim.Adadelta, {"rho": 0.95}),
])
def test_build_optimizer(overrides, cls, expected):
    opt = build_optimizer(tiny_mlp(), load_recipe(None, [*overrides, "optim.lr=0.01"]).optim)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01
    for k, v in expected.items():
        assert group[k] == v, k


def test_our_sgd_step_equals_a_torch_sgd_step():
    """One trainer step with weight decay on all parameters = torch.optim.SGD on the same gradients."""
    task = toy_task()
    recipe = load_recipe(None, ["optim.lr=0.1", "optim.weight_decay=0.01", "optim.nesterov=true"])
    a, b = tiny_mlp(), tiny_mlp()
    trainer = _Trainer(a, task, recipe, run_dir=None, progress=False, log=None, on_epoch=None, meta=None)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    x, y = next(iter(task.train_loader.iter_epoch(0)))
    for _ in range(2):
        trainer._forward_backward(x, y, 1.0, "test", sync=True)
        trainer._optimizer_step()
        nn.functional.cross_entropy(b(x), y).backward()
        ref.step()
        ref.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert_close(pa, pb)


# --------------------------------------------------------------------------------------------------
# Loop pieces


def _trainer(overrides: list[str], model: nn.Module | None = None, **task_kw) -> _Trainer:
    return _Trainer(model or tiny_mlp(), toy_task(**task_kw), load_recipe(None, overrides), run_dir=None,
                    progress=False, log=None, on_epoch=None, meta=None)


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_gradient_clipping(mode):
    t = _trainer(["optim.lr=1.0", "optim.momentum=0", "train.grad_clip=0.01", f"train.grad_clip_mode={mode}"])
    before = [p.detach().clone() for p in t.raw_model.parameters()]
    grads = [torch.randn_like(p) * 10 for p in t.raw_model.parameters()]
    for p, g in zip(t.raw_model.parameters(), grads):
        p.grad = g.clone()
    t._optimizer_step()
    steps = [b - p.detach() for b, p in zip(before, t.raw_model.parameters())]  # = lr * clipped grad
    if mode == "norm":
        total = torch.sqrt(sum((s ** 2).sum() for s in steps))
        assert total.item() == pytest.approx(0.01, rel=1e-4)
        scale = 0.01 / torch.sqrt(sum((g ** 2).sum() for g in grads))
        for s, g in zip(steps, grads):  # direction kept
            assert_close(s, g * scale, rtol=1e-4, atol=1e-7)
    else:
        for s, g in zip(steps, grads):
            assert_close(s, g.clamp(-0.01, 0.01))


def test_gradient_accumulation_equals_one_large_batch():
    """2 micro-batches of 16 with accum_steps=2 give the same update as one batch of 32 (no BN)."""
    small = _trainer(["train.accum_steps=2", "optim.momentum=0"], tiny_mlp(), batch_size=16)
    large = _trainer(["optim.momentum=0"], tiny_mlp(), batch_size=32)
    batches16 = list(small.task.train_loader.iter_epoch(0))[:2]
    x32, y32 = next(iter(large.task.train_loader.iter_epoch(0)))
    assert torch.equal(torch.cat([batches16[0][1], batches16[1][1]]), y32)  # same samples
    for x, y in batches16:
        small._forward_backward(x, y, 0.5, "test", sync=True)
    small._optimizer_step()
    large._forward_backward(x32, y32, 1.0, "test", sync=True)
    large._optimizer_step()
    for a, b in zip(small.raw_model.parameters(), large.raw_model.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_cross_entropy_loss(eps):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    ref = nn.CrossEntropyLoss(label_smoothing=eps)(logits, y)
    assert_close(classification_loss(logits, y, label_smoothing=eps), ref)
    # The definition: cross-entropy against (1 - eps) one_hot + eps / K.
    target = (1 - eps) * nn.functional.one_hot(y, 5) + eps / 5
    assert_close(classification_loss(logits, y, label_smoothing=eps),
                 -(target * logits.log_softmax(1)).sum(1).mean())


# --------------------------------------------------------------------------------------------------
# EMA


def test_ema_matches_averaged_model_without_warmup():
    model = tiny_cnn()
    ours = ModelEma(model, decay=0.9, warmup=False)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ref.update_parameters(model)  # the reference's first update copies the weights, like our deepcopy
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
            model(torch.randn(4, 1, 8, 8, generator=g))  # BN buffers move too (train mode)
        ours.update(model)
        ref.update_parameters(model)
    for (name, a), b in zip(ours.module.state_dict().items(), ref.module.state_dict().values()):
        if a.dtype.is_floating_point:  # integer buffers (num_batches_tracked) are copied, not averaged
            assert_close(a, b, msg=name)
        else:
            assert torch.equal(a, model.state_dict()[name])


def test_ema_warmup_decay():
    ema = ModelEma(tiny_mlp(), decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(tiny_mlp())
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert ModelEma(tiny_mlp(), decay=0.999).current_decay() == pytest.approx(0.1)  # warm-up is the default


def test_ema_pairs_tensors_once_per_model_and_follows_another_model():
    a, b = tiny_mlp(), tiny_mlp()
    ema = ModelEma(a, decay=0.5, warmup=False)
    first, again = ema._tensor_pairs(a), ema._tensor_pairs(a)
    assert all(x is y for x, y in zip(first, again))  # computed once per model, not at every step
    ema.update(b)  # another model object: its tensors, not the cached ones of `a`
    for (name, e), ta, tb in zip(ema.state_dict().items(), a.state_dict().values(), b.state_dict().values()):
        assert_close(e, 0.5 * ta + 0.5 * tb, msg=name)


# --------------------------------------------------------------------------------------------------
# Device, precision, determinism


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert not resolve_precision(False, "auto", cpu).enabled
    p = resolve_precision(True, "auto", cpu)
    assert p.enabled and p.dtype == torch.bfloat16 and not p.needs_scaler
    assert resolve_precision(True, "auto", torch.device("cuda", 0)).dtype == torch.float16
    assert resolve_precision(True, "float16", cpu).needs_scaler
    with resolve_precision(True, "auto", cpu).autocast():
        out = nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


def test_channels_last_auto_follows_the_model():
    assert resolve_channels_last("auto", tiny_cnn()) is True
    assert resolve_channels_last("auto", tiny_mlp()) is False
    assert resolve_channels_last(False, tiny_cnn()) is False and resolve_channels_last(True, tiny_mlp()) is True
    assert load_recipe(None).train.channels_last == "auto"
    assert load_recipe(None, ["train.channels_last=false"]).train.channels_last is False
    with pytest.raises(ConfigError, match="channels_last"):
        load_recipe(None, ["train.channels_last=sometimes"])


def test_trainer_puts_a_cnn_in_channels_last_by_default():
    from dltricks.train import fit

    model = tiny_cnn()
    fit(model, toy_task(), {"train": {"epochs": 1, "device": "cpu"}}, progress=False)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_deterministic_mode_restores_flags():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_schedule_total_steps_and_warmup_rounding():
    s = LRSchedule(load_recipe(None, ["schedule.warmup_epochs=0.5"]).schedule, 7, 3)
    assert s.total_steps == 21 and s.warmup_steps == 4 and math.isclose(s(3), 1.0)


# ------------------------------------------------------------------ gaps found by mutation testing (issue 23)

class _Named(nn.Module):
    """A stem, two stages and a head, with a 2-D parameter named by no_weight_decay() and one flagged."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.stages = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.pos_embed = nn.Parameter(torch.zeros(2, 4))
        self.stages[0].weight._no_weight_decay = True

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_no_weight_decay_takes_vectors_flagged_and_listed_parameters() -> None:
    from dltricks.train.optim import no_weight_decay

    assert no_weight_decay(_Named()) == {"pos_embed", "stages.0.weight", "stem.bias", "stages.0.bias",
                                         "stages.1.weight", "stages.1.bias", "head.bias"}
    plain = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    plain[0].weight._no_weight_decay = False
    assert no_weight_decay(plain) == {"0.bias", "1.weight", "1.bias"}


def test_param_groups_order_decay_multipliers_frozen_and_layer_groups() -> None:
    from dltricks.train.recipe import FinetuneConfig

    model = _Named()
    names = {id(p): n for n, p in model.named_parameters()}
    one = param_groups(model, weight_decay=0.1, skip_norm_bias=False)
    assert len(one) == 1 and one[0]["weight_decay"] == 0.1 and set(one[0]) == {"params", "weight_decay"}
    two = param_groups(model, weight_decay=0.1, skip_norm_bias=True)
    assert [g["weight_decay"] for g in two] == [0.1, 0.0] and all("lr_mult" not in g for g in two)
    assert {names[id(p)] for p in two[0]["params"]} == {"stem.weight", "head.weight"}
    scaled = param_groups(model, weight_decay=0.1, skip_norm_bias=True, no_decay_lr_mult=64.0)
    assert "lr_mult" not in scaled[0] and scaled[1]["lr_mult"] == 64.0
    model.head.weight.requires_grad_(False)  # frozen without a finetune section: left out
    assert {names[id(p)] for g in param_groups(model, weight_decay=0.1, skip_norm_bias=True)
            for p in g["params"]} == set(names.values()) - {"head.weight"}
    finetune = FinetuneConfig(lr_mult={"head": 10.0, "stem": 0.5})
    groups = param_groups(model, weight_decay=0.1, skip_norm_bias=True, finetune=finetune, no_decay_lr_mult=2.0)
    summary = [(g["layer_group"], g["weight_decay"], g["lr_mult"], sorted(names[id(p)] for p in g["params"]))
               for g in groups]
    assert summary == [("stem", 0.1, 0.5, ["stem.weight"]),
                       ("stem", 0.0, 1.0, ["pos_embed", "stem.bias"]),
                       ("stages.0", 0.0, 2.0, ["stages.0.bias", "stages.0.weight"]),
                       ("stages.1", 0.0, 2.0, ["stages.1.bias", "stages.1.weight"]),
                       ("head", 0.1, 10.0, ["head.weight"]),  # frozen, but kept: gradual unfreezing may thaw it
                       ("head", 0.0, 20.0, ["head.bias"])]


@pytest.mark.parametrize("name, expected", [
    ("sgd", {"momentum": 0.8, "nesterov": True}),
    ("adam", {"betas": (0.8, 0.9), "eps": 1e-5}),
    ("adamw", {"betas": (0.8, 0.9), "eps": 1e-5}),
    ("rmsprop", {"alpha": 0.95, "eps": 1e-5, "momentum": 0.8}),
    ("adadelta", {"rho": 0.8, "eps": 1e-5})])  # eps 1e-5: no optimizer's default
def test_build_optimizer_passes_every_setting(name, expected) -> None:
    from dltricks.train.lookahead import Lookahead

    recipe = load_recipe({"optim": {"name": name, "lr": 0.2, "momentum": 0.8, "nesterov": name == "sgd",
                                    "betas": [0.8, 0.9], "eps": 1e-5, "alpha": 0.95, "rho": 0.8, "weight_decay": 0.01,
                                    "skip_norm_bias": True, "no_decay_lr_mult": 3.0}})
    optimizer = build_optimizer(_Named(), recipe.optim)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.6])
    assert optimizer.defaults["lr"] == 0.2
    for key, value in expected.items():
        assert optimizer.defaults[key] == value, key
    with_lookahead = build_optimizer(_Named(), load_recipe({"optim": {"name": name, "lookahead_steps": 7,
                                                                      "lookahead_alpha": 0.3}}).optim)
    assert isinstance(with_lookahead, Lookahead) and (with_lookahead.k, with_lookahead.alpha) == (7, 0.3)
    # A finetune section's multipliers reach the learning rates (head x10; its no-decay group x10 x3).
    from dltricks.train.recipe import FinetuneConfig

    tuned = build_optimizer(_Named(), recipe.optim, finetune=FinetuneConfig(lr_mult={"head": 10.0}))
    assert [g["lr"] for g in tuned.param_groups if g["layer_group"] == "head"] == pytest.approx([2.0, 6.0])
    frozen = _Named().requires_grad_(False)
    with pytest.raises(ConfigError) as err:
        build_optimizer(frozen, recipe.optim)
    assert str(err.value) == "the model has no trainable parameters"

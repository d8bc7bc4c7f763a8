"""Knowledge distillation: the soft-target loss against a hand computation, and fit's distill option
(teacher frozen, the optimised objective equal to the hand-computed mixture, a teacher from a run directory)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dltricks.errors import CheckpointError, ConfigError
from dltricks.train import fit, load_recipe, save_weights
from dltricks.train.distill import distillation_loss, soft_target_loss
from train_helpers import TOY, tiny_cnn, tiny_mlp, toy_task


def _hand_soft(zs: torch.Tensor, zt: torch.Tensor, T: float) -> torch.Tensor:
    p_t = torch.exp(zt / T) / torch.exp(zt / T).sum(1, keepdim=True)
    p_s = torch.exp(zs / T) / torch.exp(zs / T).sum(1, keepdim=True)
    return T * T * (p_t * (p_t.log() - p_s.log())).sum(1).mean()


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_soft_target_loss_matches_hand_computation(T):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(soft_target_loss(zs, zt, T).double(), _hand_soft(zs, zt, T), rtol=1e-5, atol=1e-6)


def test_soft_target_gradient_is_scaled_by_t():
    # d/dz_s [T^2 KL] = T (softmax(z_s/T) - softmax(z_t/T)) / B: the T^2 factor keeps the scale of the soft term.
    T = 4.0
    zs = torch.randn(3, 5, requires_grad=True)
    zt = torch.randn(3, 5)
    soft_target_loss(zs, zt, T).backward()
    expected = T * ((zs.detach() / T).softmax(1) - (zt / T).softmax(1)) / 3
    torch.testing.assert_close(zs.grad, expected, rtol=1e-4, atol=1e-6)


def test_identical_logits_give_zero_soft_loss_and_alpha_mixes():
    z = torch.randn(4, 3)
    assert float(soft_target_loss(z, z, 2.0)) == pytest.approx(0.0, abs=1e-6)
    hard = torch.tensor(1.5)
    assert float(distillation_loss(z, z, hard, temperature=2.0, alpha=0.25)) == pytest.approx(0.75 * 1.5, rel=1e-5)


def _recipe(*overrides):
    return load_recipe(None, ["train.epochs=1", "optim.lr=0.05", *TOY, *overrides])


def _one_batch_task():
    return toy_task(n_train=16)  # one training batch: the epoch's train_loss is that batch's objective


def test_fit_optimises_the_hand_computed_mixture_and_freezes_the_teacher():
    task = _one_batch_task()
    teacher, student = tiny_cnn(seed=1), tiny_mlp(seed=2)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_copy = copy.deepcopy(student)
    T, alpha = 3.0, 0.7
    result = fit(student, task, _recipe(f"distill.temperature={T}", f"distill.alpha={alpha}"), teacher=teacher,
                 progress=False)
    # The first training batch, by hand: alpha * T^2 KL + (1 - alpha) CE.
    x, y = next(iter(task.train_loader.iter_epoch(0)))
    with torch.no_grad():
        zt, zs = teacher(x), student_copy(x)
        expected = alpha * _hand_soft(zs, zt, T) + (1 - alpha) * F.cross_entropy(zs, y)
    assert result.history[0]["train_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # BN running statistics untouched: the teacher ran in eval mode
        torch.testing.assert_close(v, teacher_before[k])


def test_alpha_zero_is_plain_training():
    task = _one_batch_task()
    plain = fit(tiny_mlp(seed=2), task, _recipe(), progress=False)
    distilled = fit(tiny_mlp(seed=2), task, _recipe("distill.alpha=0"), teacher=tiny_cnn(seed=1), progress=False)
    assert distilled.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-6)


def test_teacher_from_a_run_directory(tmp_path):
    teacher = tiny_cnn(seed=1)
    save_weights(tmp_path / "model.safetensors", teacher,
                 {"model": "small_cnn", "model_kwargs": {"num_classes": 4, "in_chans": 1, "widths": [4, 8]}})
    by_path = fit(tiny_mlp(seed=2), _one_batch_task(), _recipe(f"distill.teacher={tmp_path}"), progress=False)
    by_module = fit(tiny_mlp(seed=2), _one_batch_task(), _recipe(), teacher=teacher, progress=False)
    assert by_path.history[0]["train_loss"] == pytest.approx(by_module.history[0]["train_loss"], rel=1e-6)


def test_a_teacher_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        fit(tiny_mlp(), _one_batch_task(), _recipe(f"distill.teacher={tmp_path}"), progress=False)


# ------------------------------------------------------------------------------ FitNets hints (Romero et al. 2015)
def _hint_recipe(*overrides):
    return _recipe("distill.hint_weight=0.5", *overrides)


def test_hint_loss_of_a_conv_regressor_matches_a_hand_computation():
    from dltricks.train.distill import FeatureHint

    teacher, student = tiny_cnn(seed=1).eval(), tiny_cnn(seed=2).eval()
    x = torch.randn(3, 1, 8, 8)
    hint = FeatureHint(student, teacher, guided_layer="features.1", hint_layer="features.5", weight=0.5, example=x)
    # Student map (4, 8, 8) onto the teacher's (8, 4, 4): a valid convolution of kernel 8 - 4 + 1 = 5.
    assert hint.regressor.weight.shape == (8, 4, 5, 5)
    student(x), teacher(x)
    loss = hint.loss()
    with torch.no_grad():
        u_s = student.features[:2](x)  # (3, 4, 8, 8)
        u_t = teacher.features[:6](x)  # (3, 8, 4, 4)
        patches = F.unfold(u_s, kernel_size=5)  # (3, 4 * 25, 16): one column per output position
        w, b = hint.regressor.weight.reshape(8, -1), hint.regressor.bias
        predicted = (torch.einsum("ok,bkl->bol", w, patches) + b[None, :, None]).reshape(3, 8, 4, 4)
        expected = 0.5 * ((predicted - u_t) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    hint.close()
    assert not student.features[1]._forward_hooks and not teacher.features[5]._forward_hooks


def test_hint_loss_of_a_linear_regressor_matches_a_hand_computation():
    from dltricks import create_model
    from dltricks.train.distill import FeatureHint

    torch.manual_seed(1)
    teacher = create_model("mlp", num_classes=4, in_chans=1, img_size=8, hidden=(8,)).eval()
    student = tiny_mlp(seed=2).eval()
    x = torch.randn(4, 1, 8, 8)
    hint = FeatureHint(student, teacher, guided_layer="features.1", hint_layer="features.1", weight=2.0, example=x)
    assert isinstance(hint.regressor, torch.nn.Linear) and hint.regressor.weight.shape == (8, 16)
    student(x), teacher(x)
    loss = hint.loss()
    with torch.no_grad():
        u_s = student.features[:2](x.flatten(1))  # (4, 16)
        u_t = teacher.features[:2](x.flatten(1))  # (4, 8)
        predicted = u_s @ hint.regressor.weight.T + hint.regressor.bias  # (4, 8)
        expected = 2.0 * ((predicted - u_t) ** 2).sum() / predicted.numel()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    hint.close()


def test_shapes_that_no_regressor_joins_are_one_clear_error():
    from dltricks.train.distill import hint_regressor

    with pytest.raises(ConfigError, match=r"distill.guided_layer: cannot regress .* \(16,\) onto .* \(8, 1, 1\)"):
        hint_regressor((16,), (8, 1, 1))
    with pytest.raises(ConfigError, match=r"distill.guided_layer: the student's map \(4, 2, 2\) is smaller"):
        hint_regressor((4, 2, 2), (8, 4, 4))


def test_a_wrong_layer_name_is_one_clear_error_naming_the_key():
    task = _one_batch_task()
    with pytest.raises(ConfigError, match=r"distill.guided_layer: 'feature.1' is not a module of the student .*"
                                          r"Did you mean: features.1"):
        fit(tiny_cnn(seed=2), task, _hint_recipe("distill.guided_layer=feature.1", "distill.hint_layer=features.5"),
            teacher=tiny_cnn(seed=1), progress=False)
    with pytest.raises(ConfigError, match=r"distill.hint_layer: 'head2' is not a module of the teacher"):
        fit(tiny_cnn(seed=2), task, _hint_recipe("distill.guided_layer=features.1", "distill.hint_layer=head2"),
            teacher=tiny_cnn(seed=1), progress=False)
    with pytest.raises(ConfigError, match=r"distill.guided_layer: distill.hint_weight=0.5 needs both"):
        _hint_recipe("distill.hint_layer=features.5")
    with pytest.raises(ConfigError, match=r"distill.hint_layer: set, but distill.hint_weight is 0"):
        _recipe("distill.hint_layer=features.5")
    with pytest.raises(ConfigError, match=r"distill.hint_weight: there is no teacher"):
        fit(tiny_cnn(seed=2), task, _hint_recipe("distill.guided_layer=features.1", "distill.hint_layer=features.5"),
            progress=False)


def test_training_with_a_hint_lowers_the_hint_loss_and_leaves_the_student_clean(tmp_path):
    from dltricks.train.checkpoint import read_tensors

    task = toy_task()
    student = tiny_cnn(seed=2)
    keys = set(student.state_dict())
    recipe = _hint_recipe("train.epochs=4", "distill.alpha=0.5", "distill.guided_layer=features.1",
                          "distill.hint_layer=features.5")
    result = fit(student, task, recipe, teacher=tiny_cnn(seed=1), progress=False, run_dir=tmp_path / "run")
    hint_losses = [record["train_hint_loss"] for record in result.history]
    assert hint_losses[-1] < 0.8 * hint_losses[0], hint_losses
    # The regressor is not part of the student (nor of its weights file), and the hooks are gone.
    assert set(result.model.state_dict()) == keys
    assert set(read_tensors(tmp_path / "run" / "model.safetensors")[0]) == keys
    assert all(not m._forward_hooks for m in result.model.modules())
    with pytest.raises(ConfigError, match="distill.hint_weight: a run with a FitNets hint cannot be resumed"):
        fit(tiny_cnn(seed=2), task, recipe, teacher=tiny_cnn(seed=1), progress=False, run_dir=tmp_path / "run",
            resume=True)


def test_the_hint_is_part_of_the_first_batch_objective():
    task = _one_batch_task()
    plain = fit(tiny_cnn(seed=2), task, _recipe("distill.alpha=0.5"), teacher=tiny_cnn(seed=1), progress=False)
    hinted = fit(tiny_cnn(seed=2), task, _hint_recipe("distill.alpha=0.5", "distill.guided_layer=features.1",
                                                      "distill.hint_layer=features.5"),
                 teacher=tiny_cnn(seed=1), progress=False)
    record = hinted.history[0]
    assert record["train_loss"] == pytest.approx(plain.history[0]["train_loss"] + record["train_hint_loss"], rel=1e-5)


# ------------------------------------------------------------------------------ cached teacher logits
class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_cached_teacher_logits_give_the_same_losses_with_one_teacher_pass():
    task = toy_task()  # 12 training batches per epoch, shuffled anew every epoch
    uncached_teacher, cached_teacher = _Counting(tiny_cnn(seed=1)), _Counting(tiny_cnn(seed=1))
    recipe = ["train.epochs=3", "distill.temperature=2"]
    uncached = fit(tiny_mlp(seed=2), task, _recipe(*recipe), teacher=uncached_teacher, progress=False)
    cached = fit(tiny_mlp(seed=2), task, _recipe(*recipe, "distill.cache_teacher=true"), teacher=cached_teacher,
                 progress=False)
    assert [r["train_loss"] for r in cached.history] == pytest.approx([r["train_loss"] for r in uncached.history],
                                                                        rel=1e-6)
    assert cached.final["val_loss"] == pytest.approx(uncached.final["val_loss"], rel=1e-6)
    batches = len(task.train_loader)
    # One call in fit's compatibility check, then one per batch of the first epoch only.
    assert uncached_teacher.calls == 1 + 3 * batches
    assert cached_teacher.calls == 1 + batches


def test_the_cache_is_refused_with_augmentation_and_with_a_hint():
    with pytest.raises(ConfigError, match=r"distill.cache_teacher: augmentation is on \(hflip\)"):
        _recipe("distill.cache_teacher=true", "augment.hflip=true")
    with pytest.raises(ConfigError, match=r"distill.cache_teacher: not with distill.hint_weight > 0"):
        _hint_recipe("distill.cache_teacher=true", "distill.guided_layer=features.1", "distill.hint_layer=features.5")
    # Without a teacher the cache does nothing, like distill.temperature and distill.alpha.
    plain = fit(tiny_mlp(seed=2), _one_batch_task(), _recipe(), progress=False)
    cached = fit(tiny_mlp(seed=2), _one_batch_task(), _recipe("distill.cache_teacher=true"), progress=False)
    assert cached.history[0]["train_loss"] == plain.history[0]["train_loss"]

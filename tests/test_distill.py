"""Knowledge distillation: the soft-target loss against a hand computation, and fit's distill option
(teacher frozen, the optimised objective equal to the hand-computed mixture, a teacher from a run directory)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dltricks.errors import CheckpointError
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

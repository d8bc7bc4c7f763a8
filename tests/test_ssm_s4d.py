"""S4D: convolution mode == recurrent mode, zero-order hold against the matrix exponential, causality."""

from __future__ import annotations

import math

import pytest
import torch

from dltricks.layers.ssm.s4d import S4D, S4DKernel, S4DMixer, s4d_init_A


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
@pytest.mark.parametrize("length", [1, 17, 128])
def test_convolution_mode_equals_recurrent_mode(init: str, length: int) -> None:
    torch.manual_seed(0)
    layer = S4D(6, 8, init=init)
    u = torch.randn(3, 6, length)
    conv = layer(u, mode="conv")
    rec = layer(u, mode="recurrent")
    torch.testing.assert_close(conv, rec, rtol=1e-4, atol=1e-4)


def test_kernel_is_the_vandermonde_sum_in_float64() -> None:
    """K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l), evaluated term by term in complex128."""
    torch.manual_seed(1)
    kernel = S4DKernel(3, 6, init="lin")
    A_bar, B_bar, C, scale = (t.detach().to(torch.complex128) if isinstance(t, torch.Tensor) else t
                              for t in kernel.discretize())
    L = 20
    ref = torch.stack([scale * (C * B_bar * A_bar ** ell).sum(-1).real for ell in range(L)], dim=-1)
    torch.testing.assert_close(kernel.kernel(L).double(), ref, rtol=1e-4, atol=1e-5)


def test_zero_order_hold_matches_the_matrix_exponential() -> None:
    """Van Loan: exp(Δ [[A, B], [0, 0]]) = [[Ā, B̄], [0, 1]] for the ZOH pair (Ā, B̄)."""
    torch.manual_seed(2)
    kernel = S4DKernel(2, 4, init="inv")
    A_bar, B_bar, _, _ = kernel.discretize()
    A = torch.complex(-torch.exp(kernel.log_A_real), kernel.A_imag).detach().to(torch.complex128)
    dt = torch.exp(kernel.log_dt).detach().to(torch.float64)
    for h in range(2):
        for n in range(A.shape[1]):
            M = torch.zeros(2, 2, dtype=torch.complex128)
            M[0, 0], M[0, 1] = A[h, n], 1.0  # B = 1
            E = torch.linalg.matrix_exp(dt[h] * M)
            torch.testing.assert_close(E[0, 0], A_bar[h, n].detach().to(torch.complex128), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(E[0, 1], B_bar[h, n].detach().to(torch.complex128), rtol=1e-5, atol=1e-6)


def test_initialisations() -> None:
    lin = s4d_init_A(8, "lin")
    torch.testing.assert_close(lin, torch.complex(torch.full((4,), -0.5, dtype=torch.float64),
                                                  math.pi * torch.arange(4, dtype=torch.float64)))
    inv = s4d_init_A(8, "inv")
    n = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(inv.imag, (8 / math.pi) * (8 / (2 * n + 1) - 1))
    torch.testing.assert_close(s4d_init_A(5, "real"), -torch.arange(1, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="even"):
        s4d_init_A(5, "lin")
    # Δ log-uniform in [1e-3, 1e-1]
    dt = torch.exp(S4DKernel(1000, 4).log_dt)
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1


@pytest.mark.parametrize("module", ["s4d", "mixer"])
def test_causal(module: str) -> None:
    torch.manual_seed(3)
    if module == "s4d":
        layer, shape, t_axis = S4D(4, 8), (2, 4, 40), -1
    else:
        layer, shape, t_axis = S4DMixer(4, 8), (2, 40, 4), 1
    x = torch.randn(*shape)
    y = layer(x)
    for t in (0, 13, 39):
        x2 = x.clone()
        future = x2.narrow(t_axis, t + 1, shape[t_axis] - t - 1)  # a view: adding to it changes x2
        future.add_(torch.randn_like(future))
        y2 = layer(x2)
        torch.testing.assert_close(y2.narrow(t_axis, 0, t + 1), y.narrow(t_axis, 0, t + 1), rtol=1e-5, atol=1e-5)
        if t < 39:
            assert not torch.allclose(y2, y)


def test_gradients_reach_every_parameter() -> None:
    layer = S4DMixer(4, 8)
    layer(torch.randn(2, 16, 4)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())

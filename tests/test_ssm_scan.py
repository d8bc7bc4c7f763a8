"""The selective scan: fast chunked scan and Blelloch scan against the sequential reference.

Outputs, final state and the gradients w.r.t. every input are compared at rtol 6e-4 / atol 2e-3
(float32) for lengths 1, 7, 300 and 1024; the one-step update reproduces the full scan.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dltricks.layers.ssm.selective_scan import (blelloch_scan, cuda_selective_scan_available, selective_scan,
                                                selective_scan_blelloch, selective_scan_chunked, selective_scan_ref,
                                                selective_state_update)

RTOL, ATOL = 6e-4, 2e-3
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch: int, dim: int, length: int, state: int, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                strong_decay: bool = False) -> dict[str, torch.Tensor]:
    """Inputs like a Mamba block's at initialisation: Δ = softplus(raw + bias) around 1e-3..1e-1, A = -(1..N)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    inputs = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g) + (4.0 if strong_decay else 0.0),
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1) * (0.5 + torch.rand(dim, 1, generator=g)),
        "B": torch.randn(batch, state, length, generator=g),
        "C": torch.randn(batch, state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
        "initial_state": 0.1 * torch.randn(batch, dim, state, generator=g),
    }
    return {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}


def run(fn, inputs: dict[str, torch.Tensor], *, seed: int = 1, **kwargs) -> list[torch.Tensor]:
    """Output, final state and all input gradients for a random linear loss of (out, h_L)."""
    for t in inputs.values():
        t.grad = None
    out, h = fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                inputs["delta_bias"], True, True, inputs["initial_state"], **kwargs)
    g = torch.Generator().manual_seed(seed)
    weights_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    weights_h = torch.randn(h.shape, generator=g, dtype=h.dtype)
    ((out * weights_out).sum() + (h * weights_h).sum()).backward()
    return [out.detach(), h.detach()] + [inputs[n].grad.clone() for n in NAMES]


@pytest.mark.parametrize("length", [1, 7, 300, 1024])
def test_chunked_scan_matches_reference(length: int) -> None:
    inputs = make_inputs(2, 3, length, 4, seed=length)
    ref = run(selective_scan_ref, inputs)
    fast = run(selective_scan_chunked, inputs, chunk_size=64)
    for name, a, b in zip(("out", "h_L") + NAMES, fast, ref):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("length", [1, 7, 300, 1024])
def test_blelloch_scan_matches_reference(length: int) -> None:
    inputs = make_inputs(2, 3, length, 4, seed=100 + length)
    ref = run(selective_scan_ref, inputs)
    fast = run(selective_scan_blelloch, inputs)
    for name, a, b in zip(("out", "h_L") + NAMES, fast, ref):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 8, 50])
def test_chunk_boundaries_do_not_matter(chunk_size: int) -> None:
    inputs = make_inputs(2, 3, 23, 5, seed=7)
    ref = run(selective_scan_ref, inputs)
    fast = run(selective_scan_chunked, inputs, chunk_size=chunk_size)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_chunked_backward_gradcheck_float64() -> None:
    """The hand-written backward against finite differences, in float64."""
    inputs = make_inputs(1, 2, 5, 3, seed=3, dtype=torch.float64)
    names = ("u", "delta", "A", "B", "C", "initial_state")

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, delta, A, B, C, h0 = args
        return selective_scan_chunked(u, delta, A, B, C, inputs["D"], inputs["z"], inputs["delta_bias"], True,
                                      True, h0, chunk_size=2)

    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names), eps=1e-6, atol=1e-5)


def test_optional_inputs_and_no_softplus() -> None:
    """No D, no z, no bias, raw Δ: the plain recurrence."""
    x = make_inputs(2, 3, 40, 4, seed=11)
    delta = F.softplus(x["delta"].detach()).requires_grad_()
    ref = selective_scan_ref(x["u"], delta, x["A"], x["B"], x["C"])
    fast = selective_scan_chunked(x["u"], delta, x["A"], x["B"], x["C"], chunk_size=16)
    torch.testing.assert_close(fast, ref, rtol=RTOL, atol=ATOL)
    g_ref = torch.autograd.grad(ref.square().sum(), [x["u"], delta, x["A"]])
    g_fast = torch.autograd.grad(fast.square().sum(), [x["u"], delta, x["A"]])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_strong_decay_stays_finite_and_exact() -> None:
    """Δ·A far below −80: the clamp that avoids denormals must not change results."""
    inputs = make_inputs(2, 3, 64, 16, seed=5, strong_decay=True)
    ref = run(selective_scan_ref, inputs)
    fast = run(selective_scan_chunked, inputs, chunk_size=16)
    for a, b in zip(fast, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_bld_layout_matches_bdl() -> None:
    x = make_inputs(2, 3, 30, 4, seed=9)
    ref = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    for impl in ("chunked", "ref"):
        out = selective_scan(x["u"].transpose(1, 2), x["delta"].transpose(1, 2), x["A"], x["B"].transpose(1, 2),
                             x["C"].transpose(1, 2), x["D"], x["z"].transpose(1, 2), x["delta_bias"], True,
                             impl=impl, layout="bld")
        torch.testing.assert_close(out.transpose(1, 2), ref, rtol=RTOL, atol=ATOL)


def test_state_update_reproduces_the_scan() -> None:
    """Recurrent step mode == full scan, token by token, from an initial state."""
    x = {k: v.detach() for k, v in make_inputs(2, 3, 25, 4, seed=13).items()}
    full, h_full = selective_scan_chunked(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                          x["delta_bias"], True, True, x["initial_state"])
    state = x["initial_state"].clone()
    steps = [selective_state_update(state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
                                    x["D"], x["z"][..., t], x["delta_bias"], True) for t in range(25)]
    torch.testing.assert_close(torch.stack(steps, dim=-1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, h_full, rtol=1e-5, atol=1e-5)


def test_blelloch_scan_is_an_inclusive_linear_recurrence() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(13, 4, generator=g), torch.randn(13, 4, generator=g)
    prod, h = blelloch_scan(a, b)
    h_ref, running, p_ref = torch.zeros(4), torch.ones(4), []
    hs = []
    for t in range(13):
        h_ref = a[t] * h_ref + b[t]
        running = running * a[t]
        hs.append(h_ref)
        p_ref.append(running)
    torch.testing.assert_close(h, torch.stack(hs))
    torch.testing.assert_close(prod, torch.stack(p_ref))


def test_shape_errors_are_clear() -> None:
    x = make_inputs(2, 3, 10, 4)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_chunked(x["u"], x["delta"], x["A"][:2], x["B"], x["C"])
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_chunked(x["u"], x["delta"], x["A"], x["B"][..., :5], x["C"])
    with pytest.raises(ValueError, match="unknown selective scan implementation"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="fft")


def test_cuda_kernel_is_optional() -> None:
    """Without mamba_ssm or a GPU, 'auto' falls back to the chunked scan; forcing 'cuda' explains why it fails."""
    x = {k: v.detach() for k, v in make_inputs(1, 2, 6, 3).items()}
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(out, selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"]),
                               rtol=RTOL, atol=ATOL)
    if not cuda_selective_scan_available():
        with pytest.raises(RuntimeError, match="mamba_ssm"):
            selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="cuda")


# ------------------------------------------------------------------ gaps found by mutation testing (issue 23)

def _plain(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in inputs.items()}


def test_dispatch_passes_the_state_through_and_names_bad_choices() -> None:
    x = _plain(make_inputs(2, 3, 9, 4, seed=5))
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    ref_y, ref_h = selective_scan_ref(*args, return_last_state=True, initial_state=x["initial_state"])
    for impl in ("auto", "chunked", "ref", "blelloch"):
        y, h = selective_scan(*args, return_last_state=True, initial_state=x["initial_state"], impl=impl)
        torch.testing.assert_close(y, ref_y, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(h, ref_h, rtol=RTOL, atol=ATOL)
        plain = selective_scan(*args, impl=impl)  # no state asked for: a tensor, from zeros
        assert isinstance(plain, torch.Tensor)
        torch.testing.assert_close(plain, selective_scan_ref(*args), rtol=RTOL, atol=ATOL)
        bld = [t.transpose(1, 2) for t in (x["u"], x["delta"], x["B"], x["C"], x["z"])]
        y2, h2 = selective_scan(bld[0], bld[1], x["A"], bld[2], bld[3], x["D"], bld[4], x["delta_bias"], True,
                                True, x["initial_state"], impl=impl, layout="bld")
        torch.testing.assert_close(y2.transpose(1, 2), ref_y, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(h2, ref_h, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError) as err:
        selective_scan(*args, layout="lbd")
    assert str(err.value) == "layout must be 'bdl' or 'bld', got 'lbd'"
    with pytest.raises(ValueError) as err:
        selective_scan(*args, impl="fast")
    assert str(err.value) == ("unknown selective scan implementation 'fast'; choose from auto, cuda, ref, chunked, "
                              "blelloch")


def test_the_cuda_kernel_is_called_only_when_asked_for_or_on_cuda_tensors(monkeypatch) -> None:
    import importlib

    scan = importlib.import_module("dltricks.layers.ssm.selective_scan")  # the module, not the function

    x = _plain(make_inputs(1, 2, 5, 3, seed=6))
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    calls: list[int] = []

    def kernel(*a):  # mamba_ssm's selective_scan_fn takes no initial state: 10 arguments
        calls.append(len(a))
        return selective_scan_ref(*a)

    monkeypatch.setattr(scan, "_cuda_kernel", lambda: kernel)
    selective_scan(*args)  # CPU tensors: the chunked scan, never the kernel
    selective_scan(*args, initial_state=x["initial_state"])
    assert calls == []
    y = selective_scan(*args, impl="cuda")
    assert calls == [10]
    torch.testing.assert_close(y, selective_scan_ref(*args))
    with pytest.raises(ValueError) as err:
        selective_scan(*args, initial_state=x["initial_state"], impl="cuda")
    assert str(err.value) == "the mamba_ssm CUDA kernel does not take an initial state; use impl='chunked'"
    monkeypatch.setattr(scan, "_cuda_kernel", lambda: None)
    with pytest.raises(RuntimeError) as err:
        selective_scan(*args, impl="cuda")
    assert str(err.value) == "impl='cuda' needs the mamba_ssm package (pip install mamba-ssm) and a CUDA GPU"


def test_state_update_checks_every_shape_and_computes_in_float32_for_bfloat16() -> None:
    g = torch.Generator().manual_seed(7)
    b, d, n = 2, 3, 4
    state = torch.randn(b, d, n, generator=g)
    x, dt, z = (torch.randn(b, d, generator=g) for _ in range(3))
    A, B, C = -torch.rand(d, n, generator=g), torch.randn(b, n, generator=g), torch.randn(b, n, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    for bad_state, bad_x, bad_B in ((state[0], x, B), (state, x[:, :2], B), (state, x, B[:, :3])):
        with pytest.raises(ValueError) as err:
            selective_state_update(bad_state.clone(), bad_x, dt, A, bad_B, C)
        assert str(err.value) == (f"selective_state_update: expected state (B, D, N), x/dt (B, D), B/C (B, N); got "
                                  f"state {tuple(bad_state.shape)}, x {tuple(bad_x.shape)}, B {tuple(bad_B.shape)}")
    # No softplus unless asked for: the default equals dt_softplus=False.
    s1, s2 = state.clone(), state.clone()
    torch.testing.assert_close(selective_state_update(s1, x, dt, A, B, C),
                               selective_state_update(s2, x, dt, A, B, C, dt_softplus=False), rtol=0, atol=0)
    # bfloat16 inputs: the step is computed in float32 and rounded once, to x's dtype.
    bf = [t.to(torch.bfloat16) for t in (state, x, dt, A, B, C, D, z, bias)]
    f32 = [t.float() for t in bf]
    state_bf, state_f32 = bf[0].clone(), f32[0].clone()
    out_bf = selective_state_update(state_bf, *bf[1:6], D=bf[6], z=bf[7], dt_bias=bf[8], dt_softplus=True)
    out_f32 = selective_state_update(state_f32, *f32[1:6], D=f32[6], z=f32[7], dt_bias=f32[8], dt_softplus=True)
    assert out_bf.dtype == torch.bfloat16 and state_bf.dtype == torch.bfloat16
    assert torch.equal(out_bf, out_f32.to(torch.bfloat16)) and torch.equal(state_bf, state_f32.to(torch.bfloat16))


def test_every_shape_error_names_what_was_expected() -> None:
    x = _plain(make_inputs(2, 3, 10, 4))
    u, dl, A, B, C, h0 = x["u"], x["delta"], x["A"], x["B"], x["C"], x["initial_state"]
    cases = [
        ((u[0], dl[0], A, B, C, None), "selective scan: u must be (B, D, L), got shape (3, 10)"),
        ((u, dl[:, :, :9], A, B, C, None), "selective scan: delta must have the shape of u (2, 3, 10), got (2, 3, 9)"),
        ((u, dl, A[:2], B, C, None), "selective scan: A must be (D, N) = (3, N), got (2, 4)"),
        ((u, dl, A, B[..., :5], C, None), "selective scan: B must be (B, N, L) = (2, 4, 10), got (2, 4, 5)"),
        ((u, dl, A, B, C[:, :3], None), "selective scan: C must be (B, N, L) = (2, 4, 10), got (2, 3, 10)"),
        ((u, dl, A, B, C, h0[:, :2]), "selective scan: initial_state must be (B, D, N) = (2, 3, 4), got (2, 2, 4)"),
    ]
    for (u_, dl_, A_, B_, C_, h_), message in cases:
        for fn in (selective_scan_ref, selective_scan_chunked, selective_scan_blelloch):
            with pytest.raises(ValueError) as err:
                fn(u_, dl_, A_, B_, C_, initial_state=h_)
            assert str(err.value) == message, fn.__name__
        if u_.dim() == 3 and dl_.shape == u_.shape:  # the (B, L, D) layout checks the same shapes
            with pytest.raises(ValueError) as err:
                selective_scan_chunked(u_.transpose(1, 2), dl_.transpose(1, 2), A_, B_.transpose(1, 2),
                                       C_.transpose(1, 2), initial_state=h_, layout="bld")
            assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        selective_scan_chunked(u[..., :0], dl[..., :0], A, B[..., :0], C[..., :0])
    assert str(err.value) == "selective scan: the sequence is empty (L = 0)"
    with pytest.raises(ValueError) as err:
        selective_scan_chunked(u, dl, A, B, C, layout="dbl")
    assert str(err.value) == "layout must be 'bdl' or 'bld', got 'dbl'"


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked, selective_scan_blelloch])
def test_bfloat16_inputs_are_scanned_in_float32_and_returned_in_bfloat16(fn) -> None:
    x = {k: v.to(torch.bfloat16) for k, v in _plain(make_inputs(2, 3, 12, 4, seed=9)).items()}
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y, h = fn(*args, True, True, x["initial_state"])
    y32, h32 = fn(*[a.float() for a in args], True, True, x["initial_state"].float())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y32.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(h.float(), h32, rtol=1e-6, atol=1e-6)


def test_defaults_chunk_sizes_and_strides() -> None:
    import importlib

    scan = importlib.import_module("dltricks.layers.ssm.selective_scan")
    x = _plain(make_inputs(2, 3, 9, 4, seed=11))
    out = selective_scan_blelloch(x["u"], x["delta"], x["A"], x["B"], x["C"])  # no softplus, no state returned
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"]),
                               rtol=RTOL, atol=ATOL)
    assert scan._auto_chunk(1, 1) == 1 and scan._auto_chunk(10**9, 100) == 8
    assert scan._auto_chunk(1, 10**9) == scan._CHUNK_ELEMENTS and scan._auto_chunk(0, 10**9) == scan._CHUNK_ELEMENTS
    assert scan._auto_chunk(1024, 10**6) == scan._CHUNK_ELEMENTS // 1024
    assert isinstance(scan._auto_chunk(3, 10**6), int)
    t = torch.randn(4, 5)
    assert scan._last_dim_contiguous(t) is t
    strided = t.t()  # stride (1, 5): the last dimension is not contiguous
    fixed = scan._last_dim_contiguous(strided)
    assert fixed.stride(-1) == 1 and torch.equal(fixed, strided)
    column = t[:, :1]  # (4, 1): last stride 1 though not contiguous as a whole: kept as it is
    assert scan._last_dim_contiguous(column) is column
    t3 = torch.randn(2, 3, 4).transpose(1, 2)  # (2, 4, 3) with strides (12, 1, 4): the middle one is 1
    assert scan._last_dim_contiguous(t3).stride(-1) == 1
    # The (B, L, D) layout without a gate z, through the reference-layout implementations.
    bld = [t.transpose(1, 2) for t in (x["u"], x["delta"], x["B"], x["C"])]
    for impl in ("ref", "blelloch"):
        y = selective_scan(bld[0], bld[1], x["A"], bld[2], bld[3], impl=impl, layout="bld")
        torch.testing.assert_close(y.transpose(1, 2), selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"]),
                                   rtol=RTOL, atol=ATOL)


def test_chunked_scan_allocates_its_buffers_at_their_final_shapes() -> None:
    import warnings

    x = make_inputs(2, 3, 21, 4, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an out= buffer of the wrong shape is resized with a warning
        y, h = selective_scan_chunked(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                      x["delta_bias"], True, True, x["initial_state"], chunk_size=8)
        (y.square().sum() + h.square().sum()).backward()

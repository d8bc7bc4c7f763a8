"""The selective scan (S6) of Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", Algorithm 2 and eq. 2a-2b), five ways.

For every batch element b and channel d the scan runs an N-dimensional diagonal linear recurrence
whose parameters depend on the input (that is what "selective" means):

    Δ_t   = softplus(Δ_t + Δ_bias)                (optional bias and softplus)
    Ā_t   = exp(Δ_t · A)                          zero-order hold of A                (B, D, N)
    B̄u_t  = Δ_t · B_t · u_t                       Euler step for B, as the reference does
    h_t   = Ā_t ⊙ h_{t-1} + B̄u_t                  the recurrence                       (B, D, N)
    y_t   = ⟨C_t, h_t⟩ + D · u_t                  read-out plus skip
    out_t = y_t · SiLU(z_t)                       optional gate

Shapes follow the reference implementation (``mamba_ssm.ops.selective_scan_interface``): ``u``, ``Δ``
and ``z`` are (B, D, L); ``A`` is (D, N); the input-dependent ``B`` and ``C`` are (B, N, L); ``D`` and
``Δ_bias`` are (D,). Every implementation returns ``out`` (B, D, L) and, on request, the last state
h_L (B, D, N); all take an optional ``initial_state`` h_0 (B, D, N).

Implementations:

* :func:`selective_scan_ref` - the specification: a Python loop over time that iterates with
  ``unbind`` (one ``UnbindBackward`` node; indexing ``x[:, :, t]`` instead would give every step a
  backward that writes into a full-size zero tensor, quadratic in L). Autograd stores every state.
* :func:`selective_scan_chunked` - the fast CPU path. The sequence is cut into chunks of T steps; a
  chunk's Ā and B̄u are formed in a time-major (T, B, D, N) buffer, the recurrence runs in place with
  one fused multiply-add per step over the whole (B, D, N) slab, and y comes from one batched
  reduction over N. With ``layout="bld"`` it reads and writes the (B, L, D) tensors of a Mamba block
  directly (strided per-chunk views, no whole-tensor transposes). A custom
  :class:`torch.autograd.Function` keeps only the state entering each chunk (L/T · B·D·N numbers instead
  of L · B·D·N) and the backward pass recomputes a chunk's states from its checkpoint, then runs the
  adjoint recurrence backwards in time:

      G_t = C_t ⊗ ∂y_t + Ā_{t+1} ⊙ G_{t+1}          (∂L/∂h_t, the reversed scan)
      ∂B̄u_t = G_t,   ∂(Δ_t A) = G_t ⊙ h_{t-1} ⊙ Ā_t,   ∂C_t = Σ_d h_t ∂y_t

  Working memory is O(T · B·D·N) for any L. (Why not a parallel prefix scan per chunk? On a CPU the
  recurrence is memory-bound: a step touches each state once, while the log-depth scans touch it
  log L times or, in the factorised exp-cumsum form, overflow for strong decay. The benchmark in
  ``benchmarks/selective_scan.py`` measures the trade-off.)
* :func:`selective_scan_blelloch` - Blelloch's work-efficient parallel scan (Blelloch 1990, "Prefix
  sums and their applications"): an up-sweep builds the reduction tree of the associative operator
  (a₁, b₁) ∘ (a₂, b₂) = (a₁a₂, a₂b₁ + b₂) over the pairs (Ā_t, B̄u_t) in log₂ L levels, a down-sweep
  turns it into exclusive prefixes, and one more step makes them inclusive; 2(L-1) operator
  applications in total, all vectorised over (B, D, N), differentiated by plain autograd.
* :func:`selective_state_update` - one recurrent step for generation with a cached state.
* The CUDA kernel of the ``mamba_ssm`` package, used by :func:`selective_scan` automatically when it
  is importable and the tensors are on a GPU (it is never required).

Measured (``tests/test_ssm_scan.py``): the chunked and Blelloch scans match the reference in outputs,
final state and the gradients w.r.t. u, Δ, A, B, C, D, z and Δ_bias at rtol 6e-4 / atol 2e-3 (fp32) for
L = 1, 7, 300 and 1024; the step function reproduces the full scan. Speed and peak memory against the
reference and Blelloch at B=8, L=1024, D=256, N=16 are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "selective_scan_blelloch", "blelloch_scan",
           "selective_state_update", "cuda_selective_scan_available", "SCAN_IMPLEMENTATIONS"]

# Elements of one chunk's (T, B, D, N) buffer we aim for: ~1 MiB of fp32 keeps the chunk in a core's L2.
_CHUNK_ELEMENTS = 1 << 18
# exp(Δ·A) is clamped below at exp(-80) ≈ 2e-35: the true value is smaller still, so this changes h by less
# than 1e-34·|h|, but it keeps the decay out of the denormal range, where x86 arithmetic is ~50x slower.
_MIN_LOG_DECAY = -80.0


# ----------------------------------------------------------------------------------------------------------
# Shared pre- and post-processing
# ----------------------------------------------------------------------------------------------------------

def _check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  initial_state: torch.Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective scan: delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective scan: A must be (D, N) = ({dim}, N), got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, state, length):
            raise ValueError(f"selective scan: {name} must be (B, N, L) = {(batch, state, length)}, "
                             f"got {tuple(t.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, state):
        raise ValueError(f"selective scan: initial_state must be (B, D, N) = {(batch, dim, state)}, "
                         f"got {tuple(initial_state.shape)}")


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Δ ← softplus(Δ + bias), in float32 or wider."""
    delta = delta.to(torch.promote_types(delta.dtype, torch.float32))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]  # (B, D, L) + (D, 1)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
            out_dtype: torch.dtype) -> torch.Tensor:
    """out = (y + D·u) · SiLU(z)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]  # (B, D, L) + (B, D, L) * (D, 1)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# 1. The sequential reference
# ----------------------------------------------------------------------------------------------------------

def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: torch.Tensor | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The specification: a step-by-step loop (see the module docstring for the equations)."""
    _check_shapes(u, delta, A, B, C, initial_state)
    out_dtype = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    dtype = delta.dtype
    u_, B_, C_ = u.to(dtype), B.to(dtype), C.to(dtype)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.to(dtype)))  # Ā: (B, D, L, N)
    drive = torch.einsum("bdl,bnl,bdl->bdln", delta, B_, u_)  # B̄u: (B, D, L, N)
    h = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    for a_t, b_t, c_t in zip(decay.unbind(2), drive.unbind(2), C_.unbind(2)):
        h = a_t * h + b_t  # (B, D, N)
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    y = torch.stack(ys, dim=2)  # (B, D, L)
    out = _finish(y, u_, D, z, out_dtype)
    return (out, h) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------
# 2. Chunked scan with recomputation in the backward pass
# ----------------------------------------------------------------------------------------------------------

def _auto_chunk(slab: int, length: int) -> int:
    """Steps per chunk: about ``_CHUNK_ELEMENTS`` states per buffer, at least 8 steps, at most L."""
    return max(1, min(length, max(8, _CHUNK_ELEMENTS // max(slab, 1))))


class _ChunkedScan(torch.autograd.Function):
    """y_t = ⟨C_t, h_t⟩ with h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t, chunk by chunk.

    Inputs in the "channels-last" layout of a Mamba block: ``u`` and ``delta`` (B, L, D), ``A`` (D, N),
    ``B`` and ``C`` (B, L, N), ``h0`` (B, D, N), one floating dtype, the last dimension contiguous;
    ``chunk`` steps per chunk. Outputs ``y`` (B, L, D) and h_L (B, D, N). Inside a chunk the buffers are
    time-major (T, B, D, N), so one step of the recurrence is one fused multiply-add over a contiguous
    (B, D, N) slab; a chunk's inputs are read as strided (T, B, ·) views, never transposed as a whole.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, h0: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        Bsz, L, Dm = u.shape
        N = A.shape[1]
        n_chunks = math.ceil(L / chunk)
        y = u.new_empty(Bsz, L, Dm)
        checkpoints = u.new_empty(n_chunks, Bsz, Dm, N)  # the state entering each chunk
        decay = u.new_empty(chunk, Bsz, Dm, N)
        states = u.new_empty(chunk + 1, Bsz, Dm, N)  # states[0] = h_{s-1}, states[k] = h_{s+k-1}
        states[0].copy_(h0)
        for c in range(n_chunks):
            s, e = c * chunk, min(L, (c + 1) * chunk)
            T = e - s
            checkpoints[c].copy_(states[0])
            _chunk_states(_tm(delta, s, e), _tm(u, s, e), A, _tm(B, s, e), decay[:T], states[:T + 1])
            # y_t = Σ_n h_t[n] C_t[n]:  (T, B, D, N)·(T, B, 1, N) -> (T, B, D), written into y[:, s:e]
            torch.linalg.vecdot(states[1:T + 1], _tm(C, s, e).unsqueeze(2), out=_tm(y, s, e))
            states[0].copy_(states[T])
        ctx.save_for_backward(u, delta, A, B, C, checkpoints)
        ctx.chunk = chunk
        return y, states[0].clone()

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor | None, grad_h: torch.Tensor | None):  # type: ignore[override]
        u, delta, A, B, C, checkpoints = ctx.saved_tensors
        chunk = ctx.chunk
        Bsz, L, Dm = u.shape
        N = A.shape[1]
        n_chunks = checkpoints.shape[0]
        g_u, g_delta = u.new_empty(Bsz, L, Dm), u.new_empty(Bsz, L, Dm)
        g_B, g_C = u.new_empty(Bsz, L, N), u.new_empty(Bsz, L, N)
        g_A = A.new_zeros(Dm, N)
        # ∂L/∂h at the end of the current chunk coming from later steps (and from h_L itself).
        carry = u.new_zeros(Bsz, Dm, N) if grad_h is None else grad_h.to(u.dtype).clone()
        decay = u.new_empty(chunk, Bsz, Dm, N)
        states = u.new_empty(chunk + 1, Bsz, Dm, N)
        adjoint = u.new_empty(chunk, Bsz, Dm, N)
        for c in reversed(range(n_chunks)):
            s, e = c * chunk, min(L, (c + 1) * chunk)
            T = e - s
            dec, hs, G = decay[:T], states[:T + 1], adjoint[:T]
            hs[0].copy_(checkpoints[c])
            dl, uu, Bt, Ct = _tm(delta, s, e), _tm(u, s, e), _tm(B, s, e), _tm(C, s, e)  # (T, B, ·)
            _chunk_states(dl, uu, A, Bt, dec, hs)
            gy = (torch.zeros_like(dl) if grad_y is None else _tm(grad_y, s, e)).contiguous()  # (T, B, D)
            # ∂C_t[n] = Σ_d h_t[d, n] ∂y_t[d]:  (T·B, 1, D) @ (T·B, D, N)
            _tm(g_C, s, e).copy_(torch.bmm(gy.view(T * Bsz, 1, Dm), hs[1:].view(T * Bsz, Dm, N)).view(T, Bsz, N))
            # Adjoint recurrence G_t = ∂y_t C_t + Ā_{t+1} ⊙ G_{t+1}; the chunk's last step also gets `carry`.
            torch.mul(gy.unsqueeze(-1), Ct.unsqueeze(2), out=G)  # (T, B, D, 1) * (T, B, 1, N)
            G[T - 1].add_(carry)
            g_k, a_k = G.unbind(0), dec.unbind(0)
            for k in range(T - 2, -1, -1):
                g_k[k].addcmul_(g_k[k + 1], a_k[k + 1])
            torch.mul(G[0], dec[0], out=carry)  # ∂L/∂h_{s-1}, handed to the previous chunk
            # B̄u_t = (Δ_t u_t) B_t:  ∂(Δu)_t[d] = Σ_n G_t[d, n] B_t[n];  ∂B_t[n] = Σ_d G_t[d, n] (Δu)_t[d]
            g_du = torch.linalg.vecdot(G, Bt.unsqueeze(2))  # (T, B, D)
            du = (dl * uu).contiguous()
            _tm(g_B, s, e).copy_(torch.bmm(du.view(T * Bsz, 1, Dm), G.view(T * Bsz, Dm, N)).view(T, Bsz, N))
            torch.mul(g_du, dl, out=_tm(g_u, s, e))
            # Ā_t = exp(Δ_t A):  ∂(Δ_t A) = G_t ⊙ h_{t-1} ⊙ Ā_t  (in G's buffer), then
            # ∂Δ_t[d] = Σ_n ∂(ΔA)[d, n] A[d, n] + ∂(Δu)_t[d] u_t[d]  and  ∂A[d, n] = Σ_{t,b} ∂(ΔA)_t[b, d, n] Δ_t[b, d]
            G.mul_(hs[:T]).mul_(dec)
            gd = _tm(g_delta, s, e)
            torch.linalg.vecdot(G, A, out=gd)
            gd.addcmul_(g_du, uu)
            G.mul_(dl.unsqueeze(-1))
            g_A.add_(G.view(T * Bsz, Dm * N).sum(0).view(Dm, N))
        return g_u, g_delta, g_A, g_B, g_C, carry, None


def _tm(x: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Time-major view (T, B, ·) of steps s..e-1 of a (B, L, ·) tensor."""
    return x[:, s:e].transpose(0, 1)


def _chunk_states(delta: torch.Tensor, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  decay: torch.Tensor, states: torch.Tensor) -> None:
    """Fill ``decay`` (T, B, D, N) with Ā and ``states[1:]`` with h_s..h_e, given ``states[0]`` = h_{s-1}.

    ``delta`` and ``u`` are (T, B, D) and ``B`` (T, B, N) views.
    """
    T = delta.shape[0]
    torch.mul(delta.unsqueeze(-1), A, out=decay)  # (T, B, D, 1) * (D, N) -> (T, B, D, N)
    decay.clamp_(min=_MIN_LOG_DECAY).exp_()
    torch.mul((delta * u).unsqueeze(-1), B.unsqueeze(2), out=states[1:])  # B̄u: (T, B, D, 1) * (T, B, 1, N)
    h, a = states.unbind(0), decay.unbind(0)
    for k in range(T):
        h[k + 1].addcmul_(a[k], h[k])  # h_t = B̄u_t + Ā_t ⊙ h_{t-1}


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def selective_scan_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                           return_last_state: bool = False, initial_state: torch.Tensor | None = None, *,
                           chunk_size: int | None = None, layout: str = "bdl"
                           ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fast scan on any device: chunked recurrence, backward by recomputation (module docstring).

    ``chunk_size`` (steps per chunk) defaults to about 2^18 / (B·D·N), at least 8. ``layout="bld"`` takes
    and returns u, Δ, z, out as (B, L, D) and B, C as (B, L, N) - the layout of a Mamba block, which
    avoids transposing (B, D, L) tensors.
    """
    if layout == "bdl":
        _check_shapes(u, delta, A, B, C, initial_state)
        u, delta, B, C = u.transpose(1, 2), delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)
        z = None if z is None else z.transpose(1, 2)
    elif layout == "bld":
        _check_shapes(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), initial_state)
    else:
        raise ValueError(f"layout must be 'bdl' or 'bld', got {layout!r}")
    out_dtype = u.dtype
    batch, length, dim = u.shape
    state = A.shape[1]
    if length == 0:
        raise ValueError("selective scan: the sequence is empty (L = 0)")
    delta = delta.to(torch.promote_types(delta.dtype, torch.float32))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)  # (B, L, D) + (D,)
    if delta_softplus:
        delta = F.softplus(delta)
    dtype = delta.dtype
    u_ = _last_dim_contiguous(u.to(dtype))
    chunk = chunk_size or _auto_chunk(batch * dim * state, length)
    h0 = u_.new_zeros(batch, dim, state) if initial_state is None else initial_state.to(dtype).contiguous()
    y, h_last = _ChunkedScan.apply(u_, _last_dim_contiguous(delta), A.to(dtype).contiguous(),
                                   _last_dim_contiguous(B.to(dtype)), _last_dim_contiguous(C.to(dtype)), h0, chunk)
    if D is not None:
        y = y + u_ * D.to(dtype)  # (B, L, D) + (B, L, D) * (D,)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(out_dtype)
    if layout == "bdl":
        y = y.transpose(1, 2).contiguous()  # (B, D, L)
    return (y, h_last) if return_last_state else y


# ----------------------------------------------------------------------------------------------------------
# 3. Blelloch's work-efficient parallel scan
# ----------------------------------------------------------------------------------------------------------

def _combine(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor,
             b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a₁, b₁) then (a₂, b₂): h ↦ a₂(a₁h + b₁) + b₂ = (a₁a₂)h + (a₂b₁ + b₂). Associative, not commutative."""
    return a1 * a2, torch.addcmul(b2, a2, b1)


def blelloch_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + b_t along dim 0 with Blelloch's up-sweep / down-sweep.

    ``a`` and ``b`` are (L, ...). Returns (P, H), both (L, ...): P_t = a_1⋯a_t and H_t = h_t for h_0 = 0,
    so that h_t = P_t h_0 + H_t for any initial state.
    """
    length = a.shape[0]
    size = 1 << max(0, (length - 1).bit_length())  # next power of two
    if size != length:  # pad with the identity element (1, 0)
        pad = (size - length,) + tuple(a.shape[1:])
        a = torch.cat([a, a.new_ones(pad)])
        b = torch.cat([b, b.new_zeros(pad)])
    # Up-sweep: level k holds the reductions of blocks of 2^k consecutive elements.
    levels: list[tuple[torch.Tensor, torch.Tensor]] = []
    la, lb = a, b
    while la.shape[0] > 1:
        levels.append((la, lb))
        la, lb = _combine(la[0::2], lb[0::2], la[1::2], lb[1::2])  # left block then right block
    # Down-sweep: the root's exclusive prefix is the identity; a left child inherits its parent's prefix,
    # a right child gets (parent's prefix) ∘ (left sibling's reduction).
    pa, pb = torch.ones_like(la), torch.zeros_like(lb)
    for la, lb in reversed(levels):
        ra, rb = _combine(pa, pb, la[0::2], lb[0::2])
        pa = torch.stack([pa, ra], dim=1).flatten(0, 1)  # interleave left/right children: (2n, ...)
        pb = torch.stack([pb, rb], dim=1).flatten(0, 1)
    # Inclusive = exclusive ∘ element.
    inc_a, inc_b = _combine(pa, pb, a, b)
    return inc_a[:length], inc_b[:length]


def selective_scan_blelloch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                            D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                            delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                            return_last_state: bool = False, initial_state: torch.Tensor | None = None
                            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan through :func:`blelloch_scan` (log-depth, autograd backward)."""
    _check_shapes(u, delta, A, B, C, initial_state)
    out_dtype = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    dtype = delta.dtype
    u_ = u.to(dtype)
    delta_t = delta.permute(2, 0, 1)  # (L, B, D)
    decay = torch.exp(delta_t.unsqueeze(-1) * A.to(dtype))  # Ā: (L, B, D, N)
    drive = (delta_t * u_.permute(2, 0, 1)).unsqueeze(-1) * B.to(dtype).permute(2, 0, 1).unsqueeze(2)  # (L, B, D, N)
    prod, h = blelloch_scan(decay, drive)  # (L, B, D, N) each
    if initial_state is not None:
        h = h + prod * initial_state.to(dtype)  # h_t = (a_1⋯a_t) h_0 + h_t|h_0=0
    y = torch.einsum("lbdn,bnl->bdl", h, C.to(dtype))  # (B, D, L)
    out = _finish(y, u_, D, z, out_dtype)
    return (out, h[-1]) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------
# 4. One recurrent step (generation)
# ----------------------------------------------------------------------------------------------------------

def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = False) -> torch.Tensor:
    """Advance the cached state by one token, in place, and return that token's output.

    Args:
        state: h_{t-1} (B, D, N), overwritten with h_t.
        x, dt, z: (B, D) - this step's u, Δ and gate.
        A: (D, N); B, C: (B, N); D, dt_bias: (D,).

    Returns:
        out_t (B, D), equal to column t of the full scan's output.
    """
    if state.dim() != 3 or x.shape != state.shape[:2] or B.shape != (state.shape[0], state.shape[2]):
        raise ValueError(f"selective_state_update: expected state (B, D, N), x/dt (B, D), B/C (B, N); got state "
                         f"{tuple(state.shape)}, x {tuple(x.shape)}, B {tuple(B.shape)}")
    dtype = torch.promote_types(state.dtype, torch.float32)
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    x_ = x.to(dtype)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(dtype))  # (B, D, N)
    drive = (dt * x_).unsqueeze(-1) * B.to(dtype).unsqueeze(1)  # (B, D, 1) * (B, 1, N)
    h = decay * state.to(dtype) + drive
    state.copy_(h)
    y = torch.einsum("bdn,bn->bd", h, C.to(dtype))  # (B, D)
    if D is not None:
        y = y + x_ * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# 5. Dispatch, including the optional CUDA kernel
# ----------------------------------------------------------------------------------------------------------

@functools.cache
def _cuda_kernel() -> Callable[..., Any] | None:
    """``mamba_ssm``'s fused CUDA scan, or None when the package (or its compiled extension) is absent."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA extension build
        return None
    return selective_scan_fn


def cuda_selective_scan_available() -> bool:
    """Whether the ``mamba_ssm`` CUDA kernel can be used (package importable and a GPU present)."""
    return torch.cuda.is_available() and _cuda_kernel() is not None


SCAN_IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "ref": selective_scan_ref,
    "chunked": selective_scan_chunked,
    "blelloch": selective_scan_blelloch,
}


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = False, return_last_state: bool = False,
                   initial_state: torch.Tensor | None = None, *, impl: str = "auto", layout: str = "bdl"
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The selective scan, choosing the implementation.

    ``impl="auto"`` uses the ``mamba_ssm`` CUDA kernel for CUDA tensors when it is installed (and no
    ``initial_state`` is given, which the kernel does not take), otherwise :func:`selective_scan_chunked`.
    ``"ref"``, ``"chunked"``, ``"blelloch"`` and ``"cuda"`` force one. ``layout="bld"``: u, Δ, z and the
    output are (B, L, D), B and C (B, L, N) (native for the chunked scan, transposed for the others).
    """
    if layout not in ("bdl", "bld"):
        raise ValueError(f"layout must be 'bdl' or 'bld', got {layout!r}")
    if impl == "auto":
        impl = "cuda" if (u.is_cuda and initial_state is None and _cuda_kernel() is not None) else "chunked"
    if impl == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                      initial_state, layout=layout)
    if impl == "cuda":
        kernel = _cuda_kernel()
        if kernel is None:
            raise RuntimeError("impl='cuda' needs the mamba_ssm package (pip install mamba-ssm) and a CUDA GPU")
        if initial_state is not None:
            raise ValueError("the mamba_ssm CUDA kernel does not take an initial state; use impl='chunked'")
        fn: Callable[..., Any] = lambda *a: kernel(*a[:10])  # noqa: E731  (no initial_state argument)
    elif impl in SCAN_IMPLEMENTATIONS:
        fn = SCAN_IMPLEMENTATIONS[impl]
    else:
        raise ValueError(f"unknown selective scan implementation {impl!r}; choose from auto, cuda, "
                         f"{', '.join(SCAN_IMPLEMENTATIONS)}")
    if layout == "bld":  # (B, L, ·) -> (B, ·, L) for the reference-layout implementations
        u, delta, B, C = (t.transpose(1, 2) for t in (u, delta, B, C))
        z = None if z is None else z.transpose(1, 2)
    out = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)
    if layout == "bld":
        if return_last_state:
            return out[0].transpose(1, 2), out[1]
        return out.transpose(1, 2)
    return out

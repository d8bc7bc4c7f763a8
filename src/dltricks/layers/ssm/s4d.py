"""S4D: the diagonal structured state space (Gu, Gupta, Goel & Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models", NeurIPS; S4 itself is Gu, Goel & Ré, ICLR 2022).

Every channel h of the input runs its own linear time-invariant SSM with a diagonal state matrix:

    x'(t) = A x(t) + B u(t),   y(t) = Re(C x(t)) + D u(t),    A = diag(a_1 .. a_N) ∈ ℂ^N, Re(a_n) < 0.

Discretisation with step Δ_h by zero-order hold (eq. 4 of the S4D paper):

    Ā = exp(ΔA),   B̄ = (ΔA)⁻¹ (exp(ΔA) − I) · ΔB = (exp(ΔA) − 1) / A · B   (elementwise, A diagonal)

which gives two equivalent ways to compute the output (both implemented here and tested equal):

* **recurrent**:  x_k = Ā x_{k-1} + B̄ u_k,  y_k = Re(C x_k) + D u_k  (O(N) per step: generation);
* **convolution**: y = K ∗ u + D u with the kernel K_l = Re(C Ā^l B̄) = Re(Σ_n C_n B̄_n Ā_n^l)
  (a Vandermonde product), applied with an FFT of length 2L so that the circular convolution of
  the FFT equals the causal linear one (O(L log L): training).

Complex states come in conjugate pairs for a real input, so only N/2 of them are kept and the
real part is doubled. Initialisations of A (S4D paper sec. 4):

* ``"lin"``  (S4D-Lin): a_n = −1/2 + iπn, the diagonal approximation of S4's HiPPO-LegS spectrum;
* ``"inv"``  (S4D-Inv): a_n = −1/2 + i(N/π)(N/(2n+1) − 1);
* ``"real"`` (S4D-Real): a_n = −(n+1), real states (all N kept, no doubling).

Δ is learned per channel, log-uniform in [dt_min, dt_max] = [1e-3, 1e-1] at initialisation; C is
complex standard normal (variance 1/2 per part); B is fixed to 1 (any B_n can be folded into C_n,
as in the paper's minimal S4D). A is stored as log(−Re a) and Im a so that Re a stays negative.

Measured (``tests/test_ssm_s4d.py``): convolution and recurrent modes agree to 1e-5 for all three
initialisations; the layer is causal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["S4DKernel", "S4D", "S4DMixer", "S4D_INITS", "s4d_init_A"]

S4D_INITS = ("lin", "inv", "real")


def s4d_init_A(d_state: int, init: str = "lin") -> torch.Tensor:
    """The initial diagonal A: complex (N/2,) for "lin"/"inv", real (N,) for "real"."""
    if init == "real":
        return -(torch.arange(d_state, dtype=torch.float64) + 1.0)
    if d_state % 2:
        raise ValueError(f"S4D-{init.capitalize()} keeps N/2 conjugate pairs and needs an even d_state, got {d_state}")
    n = torch.arange(d_state // 2, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    elif init == "inv":
        imag = (d_state / math.pi) * (d_state / (2 * n + 1) - 1)
    else:
        raise ValueError(f"unknown S4D initialisation {init!r}; choose from {', '.join(S4D_INITS)}")
    return torch.complex(torch.full_like(n, -0.5), imag)


class S4DKernel(nn.Module):
    """The discretised diagonal SSM of ``channels`` independent channels with ``d_state`` states each.

    ``kernel(L)`` returns K (H, L); ``discretize()`` returns (Ā, B̄·C, scale) for the recurrence.
    """

    def __init__(self, channels: int, d_state: int = 64, *, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 1e-1) -> None:
        super().__init__()
        if init not in S4D_INITS:
            raise ValueError(f"unknown S4D initialisation {init!r}; choose from {', '.join(S4D_INITS)}")
        self.channels, self.d_state, self.init = channels, d_state, init
        self.is_complex = init != "real"
        A = s4d_init_A(d_state, init)  # (N',)
        n_modes = A.shape[0]
        # log Δ ~ U[log dt_min, log dt_max] per channel
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.log_A_real = nn.Parameter(torch.log(-A.real).float().repeat(channels, 1))  # (H, N')
        if self.is_complex:
            self.A_imag = nn.Parameter(A.imag.float().repeat(channels, 1))  # (H, N')
            # C ~ CN(0, 1): real and imaginary parts with variance 1/2 each
            self.C = nn.Parameter(torch.randn(channels, n_modes, 2) * math.sqrt(0.5))  # (H, N', 2) = (re, im)
        else:
            self.register_parameter("A_imag", None)
            self.C = nn.Parameter(torch.randn(channels, n_modes))  # (H, N)

    @property
    def n_modes(self) -> int:
        return self.log_A_real.shape[1]

    def _A_and_C(self) -> tuple[torch.Tensor, torch.Tensor]:
        A_real = -torch.exp(self.log_A_real)  # (H, N'), negative: a stable system
        if not self.is_complex:
            return A_real, self.C
        return torch.complex(A_real, self.A_imag), torch.view_as_complex(self.C.contiguous())

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Zero-order hold: (Ā, B̄, C, scale) with Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A (B = 1), all (H, N');
        ``scale`` is 2 for conjugate pairs (y = 2 Re(C x)) and 1 for real states."""
        A, C = self._A_and_C()  # (H, N')
        dtA = torch.exp(self.log_dt)[:, None] * A  # ΔA: (H, N')
        A_bar = torch.exp(dtA)
        B_bar = (A_bar - 1.0) / A
        return A_bar, B_bar, C, 2.0 if self.is_complex else 1.0

    def kernel(self, length: int) -> torch.Tensor:
        """K_l = scale · Re(Σ_n C_n B̄_n Ā_n^l) for l = 0..L−1: (H, L)."""
        A, C = self._A_and_C()
        dtA = torch.exp(self.log_dt)[:, None] * A  # (H, N')
        CB_bar = C * (torch.exp(dtA) - 1.0) / A  # (H, N')
        steps = torch.arange(length, device=dtA.device, dtype=dtA.real.dtype)  # (L,)
        vandermonde = torch.exp(dtA.unsqueeze(-1) * steps)  # Ā_n^l = exp(l ΔA_n): (H, N', L)
        K = torch.einsum("hn,hnl->hl", CB_bar, vandermonde)  # (H, L)
        return (2.0 * K.real) if self.is_complex else K

    def extra_repr(self) -> str:
        return f"channels={self.channels}, d_state={self.d_state}, init={self.init!r}"


class S4D(nn.Module):
    """The S4D layer on channels-first sequences: y = K ∗ u + D ⊙ u, u and y of shape (B, H, L).

    ``forward(u, mode="conv")`` uses the FFT convolution, ``mode="recurrent"`` the step-by-step
    recurrence (same result); :meth:`step` advances a cached state by one token for generation.
    """

    def __init__(self, channels: int, d_state: int = 64, *, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 1e-1) -> None:
        super().__init__()
        self.kernel = S4DKernel(channels, d_state, init=init, dt_min=dt_min, dt_max=dt_max)
        self.D = nn.Parameter(torch.randn(channels))  # skip connection, as in the S4D reference code

    @property
    def channels(self) -> int:
        return self.kernel.channels

    def forward(self, u: torch.Tensor, *, mode: str = "conv") -> torch.Tensor:
        if u.dim() != 3 or u.shape[1] != self.channels:
            raise ValueError(f"S4D expects input (B, {self.channels}, L), got {tuple(u.shape)}")
        if mode == "conv":
            return self.forward_conv(u)
        if mode == "recurrent":
            state = self.allocate_state(u.shape[0], device=u.device)
            ys = []
            for u_t in u.unbind(-1):
                y_t, state = self.step(u_t, state)
                ys.append(y_t)
            return torch.stack(ys, dim=-1)  # (B, H, L)
        raise ValueError(f"unknown S4D mode {mode!r}; choose 'conv' or 'recurrent'")

    def forward_conv(self, u: torch.Tensor) -> torch.Tensor:
        L = u.shape[-1]
        K = self.kernel.kernel(L)  # (H, L)
        n_fft = 2 * L  # zero-padding to 2L turns the circular convolution into the causal linear one
        u_f = torch.fft.rfft(u.float(), n=n_fft)  # (B, H, L+1)
        K_f = torch.fft.rfft(K.float(), n=n_fft)  # (H, L+1)
        y = torch.fft.irfft(u_f * K_f, n=n_fft)[..., :L]  # (B, H, L)
        y = y + u.float() * self.D[:, None]
        return y.to(u.dtype)

    def allocate_state(self, batch_size: int, *, device: torch.device | None = None) -> torch.Tensor:
        """Zero recurrent state (B, H, N'), complex for S4D-Lin/Inv."""
        dtype = torch.complex64 if self.kernel.is_complex else torch.float32
        return torch.zeros(batch_size, self.channels, self.kernel.n_modes, dtype=dtype, device=device)

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: x_k = Ā x_{k-1} + B̄ u_k,  y_k = scale·Re(C x_k) + D u_k.

        ``u_t`` is (B, H) and ``state`` (B, H, N'); returns (y_k (B, H), x_k).
        """
        A_bar, B_bar, C, scale = self.kernel.discretize()  # (H, N') each
        state = A_bar * state + B_bar * u_t.unsqueeze(-1).to(A_bar.dtype)  # (B, H, N')
        y = torch.einsum("hn,bhn->bh", C, state)
        y = scale * y.real if self.kernel.is_complex else y
        return (y + self.D * u_t.float()).to(u_t.dtype), state


class S4DMixer(nn.Module):
    """The S4D block's token mixer on (B, L, d): S4D → GELU → dropout → Linear(d → 2d) → GLU.

    This is the layer of the S4/S4D reference models (norm and residual are added by the wrapper, e.g.
    :class:`~dltricks.layers.ssm.mamba.MambaBlock`).
    """

    def __init__(self, dim: int, d_state: int = 64, *, init: str = "lin", dropout: float = 0.0,
                 dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        self.dim = dim
        self.ssm = S4D(dim, d_state, init=init, dt_min=dt_min, dt_max=dt_max)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"S4DMixer expects input (B, L, {self.dim}), got {tuple(x.shape)}")
        y = self.ssm(x.transpose(1, 2)).transpose(1, 2)  # (B, L, d)
        return F.glu(self.out(self.drop(self.act(y))), dim=-1)  # (B, L, 2d) -> (B, L, d)

"""The Mamba block (Gu & Dao 2023, sec. 3.4 and Fig. 3), its residual wrapper, and the bidirectional
mixer of Vision Mamba (Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model", Algorithm 1).

Mamba mixer, for x of shape (B, L, d) and E = expand · d inner channels:

    [x', z] = in_proj(x)                              (B, L, 2E)   z is the gate branch
    x'      = SiLU(causal depthwise conv1d_k(x'))      k = 4
    [δ, B, C] = x_proj(x')                            δ of rank R = ⌈d/16⌉, B and C of size N
    Δ       = softplus(dt_proj(δ))                    (B, L, E)    bias initialised so Δ ~ logU[1e-3, 1e-1]
    y       = SelectiveScan(x', Δ, A, B, C, D) · SiLU(z)   A = −exp(A_log), A_log = log(1..N), D = 1
    out     = out_proj(y)                             (B, L, d)

``gate=False`` drops z (the "no gate" rows of the Mamba paper's Table 1) and ``selective=False``
replaces the selective scan by a time-invariant S4D layer (the "S4" rows): the two switches of the
paper's gate/selection ablation. The residual wrapper :class:`MambaBlock` computes
x + DropPath(mixer(Norm(x))) with RMSNorm or LayerNorm (pre-norm, as ``mamba_ssm``'s ``Block``).

Generation: :meth:`Mamba.allocate_state` returns a :class:`MambaState` holding the last k−1
inputs of the causal convolution and the SSM state h; ``forward(x, state=state)`` consumes x (any
number of tokens, e.g. a prompt and then one token at a time) starting from the cached state and
updates it in place. One token uses :func:`~dltricks.layers.ssm.selective_scan.selective_state_update`.

Vision Mamba's bidirectional mixer (:class:`BiMamba`, "bimamba v2" of the official code) shares
in_proj and out_proj between a forward branch and a backward branch that runs on the flipped
sequence; each branch has its own conv1d, x_proj, dt_proj, A and D, and the two outputs are averaged
before out_proj. With the two branches' parameters tied, reversing the input reverses the output
(``tests/test_ssm_mamba.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.drop import DropPath
from dltricks.layers.ssm.s4d import S4D
from dltricks.layers.ssm.selective_scan import selective_scan, selective_state_update

__all__ = ["Mamba", "MambaState", "MambaBlock", "BiMamba", "get_seq_norm", "dt_rank_for", "causal_depthwise_conv1d"]


def causal_depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            context: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise convolution on channels-last sequences: y_t = b + Σ_j w_j ⊙ x_{t-k+1+j}.

    ``x`` (B, L, E); ``weight`` (E, 1, k) as stored by ``nn.Conv1d(E, E, k, groups=E)``; ``context``
    (B, k−1, E) are the inputs before x (zeros when None). Equal to ``F.conv1d`` with k−1 steps of left
    padding, without transposing to (B, E, L); k fused multiply-adds.
    """
    k = weight.shape[-1]
    L = x.shape[1]
    if context is None:
        x_pad = F.pad(x, (0, 0, k - 1, 0))  # (B, k-1+L, E)
    else:
        x_pad = torch.cat([context.to(x.dtype), x], dim=1)
    w = weight[:, 0, :].t()  # (k, E)
    y = x_pad[:, k - 1:] * w[k - 1]
    if bias is not None:
        y = y + bias
    for j in range(k - 1):
        y = torch.addcmul(y, x_pad[:, j:j + L], w[j])  # (B, L, E)
    return y


def dt_rank_for(d_model: int) -> int:
    """The rank of Δ's projection in Mamba: ⌈d_model / 16⌉."""
    return math.ceil(d_model / 16)


def get_seq_norm(norm: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """Norm constructor for token sequences (B, L, d): ``"rms"`` (RMSNorm, eps 1e-5, as Mamba) or ``"layer"``."""
    if callable(norm):
        return norm
    if norm == "rms":
        return lambda dim: nn.RMSNorm(dim, eps=1e-5)
    if norm == "layer":
        return lambda dim: nn.LayerNorm(dim, eps=1e-5)
    raise ValueError(f"unknown sequence norm {norm!r}; choose 'rms' or 'layer'")


@dataclass
class MambaState:
    """Cache of one Mamba mixer for recurrent inference.

    Attributes:
        conv: the last k−1 inputs of the depthwise convolution, (B, k−1, E).
        ssm: the SSM state h, (B, E, N) (complex (B, E, N/2) for an S4D-Lin/Inv mixer).
    """

    conv: torch.Tensor
    ssm: torch.Tensor


class Mamba(nn.Module):
    """The Mamba mixer (module docstring). Input and output (B, L, d_model).

    Args:
        d_model: width d.
        d_state: N, states per channel (16).
        d_conv: kernel size of the causal depthwise convolution (4).
        expand: E = expand · d (2).
        dt_rank: rank R of Δ's projection; ``"auto"`` is ⌈d/16⌉.
        dt_min, dt_max: range of the initial Δ (log-uniform), dt_init_floor its lower clamp.
        dt_scale: scale of dt_proj's initial weights (uniform ±R^-0.5 · dt_scale).
        conv_bias, bias: biases of the convolution and of in/out projections.
        gate: multiply by SiLU(z) (False: "no gate" ablation).
        selective: use the selective scan S6 (False: an LTI S4D layer with ``s4d_init``).
        scan_impl: ``"auto"`` (CUDA kernel if available, else chunked), ``"chunked"``, ``"ref"``, ``"blelloch"``.
    """

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, conv_bias: bool = True, bias: bool = False, gate: bool = True,
                 selective: bool = True, s4d_init: str = "lin", scan_impl: str = "auto") -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = dt_rank_for(d_model) if dt_rank == "auto" else int(dt_rank)
        self.gate, self.selective, self.scan_impl = gate, selective, scan_impl
        E = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * E if gate else E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=conv_bias)  # causal padding is added in forward
        if selective:
            self.x_proj = nn.Linear(E, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
            _init_dt_proj(self.dt_proj, self.dt_rank, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                          dt_scale=dt_scale)
            # A = −exp(A_log) with A_log = log(1..N) in every channel (S4D-Real init); D = 1.
            self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1))
            self.D = nn.Parameter(torch.ones(E))
            self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
            self.D._no_weight_decay = True  # type: ignore[attr-defined]
        else:
            self.ssm = S4D(E, d_state, init=s4d_init, dt_min=dt_min, dt_max=dt_max)
        self.out_proj = nn.Linear(E, d_model, bias=bias)

    # --- full sequence ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, state: MambaState | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Mamba expects input (B, L, {self.d_model}), got {tuple(x.shape)}")
        if state is not None and x.shape[1] == 1 and self.selective:
            return self._step(x, state)
        xz = self.in_proj(x)  # (B, L, 2E) or (B, L, E)
        x_in, z = xz.chunk(2, dim=-1) if self.gate else (xz, None)  # (B, L, E) each
        x_conv = F.silu(self._causal_conv(x_in, state))  # (B, L, E)
        y = self._selective(x_conv, z, state) if self.selective else self._s4d(x_conv, z, state)  # (B, L, E)
        return self.out_proj(y)  # (B, L, d)

    def _causal_conv(self, x_in: torch.Tensor, state: MambaState | None) -> torch.Tensor:
        """Depthwise conv over the current and k−1 previous steps: zeros before the start, or the cache."""
        y = causal_depthwise_conv1d(x_in, self.conv1d.weight, self.conv1d.bias,
                                    None if state is None else state.conv)
        if state is not None:
            k = self.d_conv
            history = torch.cat([state.conv.to(x_in.dtype), x_in], dim=1)  # (B, k-1+L, E)
            state.conv.copy_(history[:, history.shape[1] - (k - 1):])
        return y

    def _selective(self, x_conv: torch.Tensor, z: torch.Tensor | None, state: MambaState | None) -> torch.Tensor:
        x_dbl = self.x_proj(x_conv)  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, E); the bias is added inside the scan
        A = -torch.exp(self.A_log.float())  # (E, N)
        out = selective_scan(x_conv, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), True,
                             return_last_state=state is not None,
                             initial_state=None if state is None else state.ssm, impl=self.scan_impl, layout="bld")
        if state is None:
            return out
        y, h = out
        state.ssm.copy_(h)
        return y

    def _s4d(self, x_conv: torch.Tensor, z: torch.Tensor | None, state: MambaState | None) -> torch.Tensor:
        u = x_conv.transpose(1, 2)  # (B, E, L)
        if state is None:
            y = self.ssm(u)  # FFT convolution
        else:
            ys, h = [], state.ssm
            for u_t in u.unbind(-1):
                y_t, h = self.ssm.step(u_t, h)
                ys.append(y_t)
            state.ssm.copy_(h)
            y = torch.stack(ys, dim=-1)  # (B, E, L)
        y = y.transpose(1, 2)  # (B, L, E)
        return y * F.silu(z) if z is not None else y

    # --- recurrent inference -------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, *, device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> MambaState:
        """Zero cache for ``batch_size`` sequences."""
        device = device if device is not None else self.in_proj.weight.device
        conv = torch.zeros(batch_size, self.d_conv - 1, self.d_inner, device=device, dtype=dtype)
        if self.selective:
            ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        else:
            ssm = self.ssm.allocate_state(batch_size, device=device)
        return MambaState(conv, ssm)

    def _step(self, x: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One token (B, 1, d) with the cached state (module docstring)."""
        xz = self.in_proj(x[:, 0])  # (B, 2E)
        x_in, z = xz.chunk(2, dim=-1) if self.gate else (xz, None)
        window = torch.cat([state.conv.to(x_in.dtype), x_in.unsqueeze(1)], dim=1)  # (B, k, E)
        state.conv.copy_(window[:, 1:])
        x_conv = (window * self.conv1d.weight[:, 0].t()).sum(1)  # the depthwise conv at one position: (B, E)
        if self.conv1d.bias is not None:
            x_conv = x_conv + self.conv1d.bias
        x_conv = F.silu(x_conv)
        dt, B, C = torch.split(self.x_proj(x_conv), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, E)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(state.ssm, x_conv, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), True)
        return self.out_proj(y).unsqueeze(1)  # (B, 1, d)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, gate={self.gate}, selective={self.selective}")


def _init_dt_proj(dt_proj: nn.Linear, dt_rank: int, *, dt_min: float, dt_max: float, dt_init_floor: float,
                  dt_scale: float) -> None:
    """Mamba's Δ initialisation: weights U(±R^-0.5·dt_scale); bias = softplus⁻¹(dt), dt ~ logU[dt_min, dt_max].

    softplus⁻¹(y) = y + log(1 − exp(−y)), so that softplus(bias) = dt exactly at initialisation.
    """
    std = dt_rank ** -0.5 * dt_scale
    nn.init.uniform_(dt_proj.weight, -std, std)
    E = dt_proj.out_features
    dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))
    with torch.no_grad():
        dt_proj.bias.copy_(inv_dt)
    dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]  # keep it when a model re-initialises biases


class MambaBlock(nn.Module):
    """Pre-norm residual wrapper: x + DropPath(mixer(Norm(x))).

    Args:
        dim: width d.
        mixer: the token mixer (default: a :class:`Mamba` built from ``mixer_kwargs``).
        norm: ``"rms"`` (Mamba's choice) or ``"layer"``, or a constructor.
        drop_path: stochastic depth rate.
    """

    def __init__(self, dim: int, mixer: nn.Module | None = None, *, norm: str | Callable[[int], nn.Module] = "rms",
                 drop_path: float = 0.0, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = get_seq_norm(norm)(dim)
        self.mixer = mixer if mixer is not None else Mamba(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, *, state: MambaState | None = None) -> torch.Tensor:
        y = self.mixer(self.norm(x)) if state is None else self.mixer(self.norm(x), state=state)
        return x + self.drop_path(y)

    def allocate_state(self, batch_size: int, **kwargs) -> MambaState | None:
        allocate = getattr(self.mixer, "allocate_state", None)
        return allocate(batch_size, **kwargs) if allocate is not None else None


class _Branch(nn.Module):
    """The per-direction parts of a :class:`BiMamba`: conv1d, x_proj, dt_proj, A_log, D."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, **dt_kwargs) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        _init_dt_proj(self.dt_proj, dt_rank, **dt_kwargs)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.d_state, self.dt_rank, self.d_conv = d_state, dt_rank, d_conv

    def forward(self, x_in: torch.Tensor, z: torch.Tensor, scan_impl: str) -> torch.Tensor:
        """x_in, z: (B, L, E) -> gated SSM output (B, L, E)."""
        x = F.silu(causal_depthwise_conv1d(x_in, self.conv1d.weight, self.conv1d.bias))
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, L, ·)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, E)
        A = -torch.exp(self.A_log.float())
        return selective_scan(x, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), True, impl=scan_impl,
                              layout="bld")


class BiMamba(nn.Module):
    """Vision Mamba's bidirectional mixer: shared in/out projections, forward and backward SSM branches.

    out = out_proj((y_fwd + flip(y_bwd(flip(x)))) / 2), where each branch is Mamba's conv → x_proj →
    selective scan → SiLU(z) gate. ``tie_directions()`` copies the forward branch into the backward one.
    """

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 bias: bool = False, scan_impl: str = "auto") -> None:
        super().__init__()
        self.d_model, self.d_inner = d_model, int(expand * d_model)
        rank = dt_rank_for(d_model) if dt_rank == "auto" else int(dt_rank)
        dt_kwargs = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, dt_scale=1.0)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.forward_branch = _Branch(self.d_inner, d_state, d_conv, rank, **dt_kwargs)
        self.backward_branch = _Branch(self.d_inner, d_state, d_conv, rank, **dt_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.scan_impl = scan_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"BiMamba expects input (B, L, {self.d_model}), got {tuple(x.shape)}")
        x_in, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        y_fwd = self.forward_branch(x_in, z, self.scan_impl)
        y_bwd = self.backward_branch(x_in.flip(1), z.flip(1), self.scan_impl).flip(1)  # on the reversed sequence
        return self.out_proj((y_fwd + y_bwd) / 2)  # (B, L, d)

    @torch.no_grad()
    def tie_directions(self) -> BiMamba:
        """Copy the forward branch's parameters into the backward branch (for the flip-equivariance test)."""
        self.backward_branch.load_state_dict(self.forward_branch.state_dict())
        return self

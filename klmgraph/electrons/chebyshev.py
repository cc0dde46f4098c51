"""Chebyshev expansions of the electronic energy functions (kernel polynomial method).

A function F(eps) on the spectral interval eps = scale * x + centre, x in [-1, 1], is expanded as

    F(scale * x + centre) ~ sum_{n < M} g_n c_n T_n(x),

with g_n = 1 (the truncated series) or the Jackson kernel g_n, which damps the Gibbs
oscillations at the price of a broadening (Weisse, Wellein, Alvermann, Fehske,
Rev. Mod. Phys. 78, 275 (2006), eq. 71). The energy functions are those of
:class:`~klmgraph.ExactDiagonalization`, measured from the chemical potential m:

* T = 0: the grand potential (eps - m) theta(m - eps) and the electron count theta(m - eps),
  with closed-form coefficients (a step evaluated by quadrature would make the count
  piecewise constant in m, and a canonical mu could then not be solved for);
* T > 0: -T log(1 + exp(-(eps - m) / T)) and the Fermi function, by Chebyshev-Gauss
  quadrature (computed with one FFT).
"""
from __future__ import annotations

import math

import torch

__all__ = ["jackson_kernel", "step_coefficients", "grand_potential_coefficients", "quadrature_coefficients"]


def jackson_kernel(order: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The Jackson damping factors g_n, n = 0 .. order - 1 (g_0 = 1).

    Shapes:
        -> (order,)
    """
    n = torch.arange(order, dtype=dtype, device=device)
    q = math.pi / (order + 1)
    return ((order - n + 1) * torch.cos(q * n) + torch.sin(q * n) / math.tan(q)) / (order + 1)


def _angle(x_m: torch.Tensor) -> torch.Tensor:
    # a chemical potential outside the interval fills all or no levels: clamping is exact there
    return torch.arccos(x_m.clamp(-1.0, 1.0))


def step_coefficients(x_m: torch.Tensor, order: int) -> torch.Tensor:
    """Chebyshev coefficients of theta(x_m - x) on [-1, 1] (the T = 0 occupation).

    Shapes:
        x_m: (B,) -> (B, order)
    """
    phi = _angle(x_m)[:, None]  # (B, 1)
    n = torch.arange(1, order, dtype=x_m.dtype, device=x_m.device)
    return torch.cat([1 - phi / math.pi, -2 * torch.sin(n * phi) / (n * math.pi)], dim=-1)


def grand_potential_coefficients(x_m: torch.Tensor, order: int) -> torch.Tensor:
    """Chebyshev coefficients of (x - x_m) theta(x_m - x) on [-1, 1] (the T = 0 grand potential
    in units of the half-width). Its derivative in x_m is exactly minus :func:`step_coefficients`,
    so the canonical energy built on it is stationary in the chemical potential.

    Shapes:
        x_m: (B,) -> (B, order)
    """
    phi = _angle(x_m)[:, None]  # (B, 1)
    dtype, device = x_m.dtype, x_m.device
    # c_n of x theta(x_m - x): (1/pi) int_phi^pi cos(t) cos(n t) dt, times 2 for n >= 1
    x_part = torch.empty(x_m.shape[0], order, dtype=dtype, device=device)
    x_part[:, :1] = -torch.sin(phi) / math.pi
    if order > 1:
        x_part[:, 1:2] = (math.pi - phi - torch.sin(2 * phi) / 2) / math.pi
    if order > 2:
        n = torch.arange(2, order, dtype=dtype, device=device)
        x_part[:, 2:] = -(torch.sin((n + 1) * phi) / (n + 1) + torch.sin((n - 1) * phi) / (n - 1)) / math.pi
    return x_part - x_m.clamp(-1.0, 1.0)[:, None] * step_coefficients(x_m, order) + \
        (x_m.clamp(-1.0, 1.0) - x_m)[:, None] * _filled(x_m, order)


def _filled(x_m: torch.Tensor, order: int) -> torch.Tensor:
    # (x - x_m) on a fully occupied interval differs from the clamped form by a constant shift
    c = torch.zeros(x_m.shape[0], order, dtype=x_m.dtype, device=x_m.device)
    c[:, 0] = (x_m > 1).to(x_m.dtype)
    return c


def quadrature_coefficients(values: torch.Tensor) -> torch.Tensor:
    """Chebyshev coefficients from a function's values on the K Chebyshev-Gauss nodes.

    c_n = (2 - delta_n0) / K sum_k F(x_k) cos(n theta_k), x_k = cos(theta_k),
    theta_k = pi (k + 1/2) / K; exact for polynomials of degree < K. Computed with one FFT.

    Shapes:
        values: (B, K) -> (B, K)
    """
    nodes = values.shape[-1]
    spectrum = torch.fft.fft(values.to(torch.complex128), n=2 * nodes, dim=-1)[..., :nodes]
    n = torch.arange(nodes, dtype=torch.float64, device=values.device)
    c = (torch.exp(-1j * math.pi * n / (2 * nodes)) * spectrum).real * (2.0 / nodes)
    c[..., 0] /= 2
    return c


def chebyshev_nodes(nodes: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The Chebyshev-Gauss nodes x_k = cos(pi (k + 1/2) / K), k = 0 .. K - 1.

    Shapes:
        -> (K,)
    """
    k = torch.arange(nodes, dtype=dtype, device=device)
    return torch.cos(math.pi * (k + 0.5) / nodes)

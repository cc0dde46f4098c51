"""Counter-based Gaussian noise: the same numbers for a seed on every device, with no state.

The thermal noise of the LLG integrator is a function of (seed, step, global site index,
component), not the output of a stateful generator. So a run continued from any step draws
the same noise as an uninterrupted one without storing a generator state, on a CPU, a GPU or
another GPU; and a lattice split into domains (a later distributed runner) draws the noise of
a site from its global index, whatever process owns it.

The integers come from Philox4x32-10 (J. K. Salmon, M. A. Moraes, R. O. Dror and D. E. Shaw,
"Parallel random numbers: as easy as 1, 2, 3", SC11 (2011)), the generator that cuRAND and
torch's CUDA backend use, written with int64 tensor operations whose every intermediate stays
below 2^63, so the 32-bit outputs are bit-identical on every device. Counter words:
(global site, step mod 2^32, step div 2^32, configuration in a batch); key words: the two
32-bit halves of the seed. Each counter gives four 32-bit words u; components 0, 1, 2 are
the Box-Muller transforms of the pairs (u0, u1) and (u2, u3) (the fourth normal is unused).
The Gaussians are computed in float64; ``log``, ``cos`` and ``sqrt`` of different math
libraries may differ in the last bit, so across devices they agree to float64 rounding, not
bit for bit. With 32-bit uniforms the largest |z| is sqrt(2 ln 2^33) = 6.8.

Shapes: ``gaussian(seed, step, (N, 3))`` -> (N, 3); ``(B, N, 3)`` -> (B, N, 3).
"""
from __future__ import annotations

import math

import torch

__all__ = ["philox4x32", "gaussian"]

_MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product a * b of 32-bit numbers, in int64.

    a is split into 16-bit halves so that no partial product reaches 2^63 (int64 has no
    unsigned 64-bit multiply on every device)."""
    p_lo = b * (a & 0xFFFF)  # < 2^48
    p_hi = b * (a >> 16)  # < 2^48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # the product's low 48 bits plus carries, < 2^49
    return ((t >> 32) + (p_hi >> 16)) & _MASK, t & _MASK


def philox4x32(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 of each counter.

    Args:
        counter: (..., 4) int64 words in [0, 2^32).
        key: two 32-bit key words.

    Returns:
        (..., 4) int64 words in [0, 2^32).
    """
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = int(key[0]) & _MASK, int(key[1]) & _MASK
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return torch.stack([c0, c1, c2, c3], -1)


def gaussian(seed: int, step: int, shape: tuple, dtype: torch.dtype = torch.float64,
             device: torch.device | str | None = None, site_offset: int = 0,
             sites: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal numbers for the spins of one step: a pure function of its arguments.

    Args:
        seed: any integer (its value modulo 2^64 is used).
        step: the LLG step, >= 0.
        shape: (N, 3) or (B, N, 3).
        dtype, device: of the result.
        site_offset: global index of local site 0 (a contiguous domain of a split lattice).
        sites: (N,) global index of each local site instead (any domain of a split lattice).

    Returns:
        tensor of ``shape``: entry [b, n, a] depends only on (seed, step, site_offset + n, b, a),
        or (seed, step, sites[n], b, a).
    """
    shape = tuple(int(x) for x in shape)
    if len(shape) not in (2, 3) or shape[-1] != 3:
        raise ValueError(f"noise is drawn for spins of shape (N, 3) or (B, N, 3), got {shape}")
    if int(step) < 0 or int(site_offset) < 0:
        raise ValueError(f"step and site_offset must be >= 0, got {step}, {site_offset}")
    batch = shape[0] if len(shape) == 3 else 1
    n = shape[-2]
    seed = int(seed) % 2 ** 64
    if sites is None:
        sites = torch.arange(int(site_offset), int(site_offset) + n, dtype=torch.int64, device=device)
    else:
        sites = torch.as_tensor(sites, dtype=torch.int64, device=device)
        if sites.shape != (n,):
            raise ValueError(f"sites must hold one global index per site, shape ({n},), got {tuple(sites.shape)}")
    configs = torch.arange(batch, dtype=torch.int64, device=device)
    counter = torch.stack(torch.broadcast_tensors(
        sites[None, :], torch.full((), int(step) & _MASK, dtype=torch.int64, device=device).expand(batch, n),
        torch.full((), int(step) >> 32, dtype=torch.int64, device=device).expand(batch, n),
        configs[:, None]), -1)  # (B, N, 4)
    words = philox4x32(counter, (seed & _MASK, seed >> 32))
    u = (words.to(torch.float64) + 0.5) * 2.0 ** -32  # (B, N, 4) in (0, 1)
    radius = torch.sqrt(-2.0 * torch.log(u[..., 0::2]))  # (B, N, 2)
    angle = (2 * math.pi) * u[..., 1::2]
    z = torch.stack([radius[..., 0] * torch.cos(angle[..., 0]), radius[..., 0] * torch.sin(angle[..., 0]),
                     radius[..., 1] * torch.cos(angle[..., 1])], -1)  # (B, N, 3)
    return z.reshape(shape).to(dtype)

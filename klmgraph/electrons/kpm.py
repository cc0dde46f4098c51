"""Kernel polynomial method (KPM) for the Kondo lattice model on a hopping graph: O(N) energies
and fields.

The energy of every ensemble of :class:`~klmgraph.ExactDiagonalization` is a trace,
E = Tr F(H) (+ mu N_e in the canonical ensemble), of the energy function F measured from the
chemical potential (module :mod:`~klmgraph.electrons.chebyshev`). KPM expands F in Chebyshev
polynomials of the rescaled Hamiltonian X = (H - centre) / scale (optionally with Jackson
damping g_n; without it g_n = 1), and estimates the trace with distance-coloured probe vectors (module
:mod:`~klmgraph.electrons.probing`):

    E = sum_n a_n mu_n,   mu_n = sum_r Re r^dagger T_n(X) r,   a_n = g_n c_n.

The moments come two at a time from v_n = T_n(X) r (mu_2n = 2 |v_n|^2 - mu_0,
mu_2n+1 = 2 <v_n+1, v_n> - mu_1), so M moments need M / 2 products with X.

The field B_r = -dE/dS_r is the exact gradient of this estimate ("gradient-based probing",
Wang, Chern, Batista and Barros, J. Chem. Phys. 148, 094107 (2018)): an adjoint recursion runs
backwards, g_n = dE/dv_n + 2 X g_n+1 - g_n+2, alongside the forward vectors recomputed
backwards from the last two (the Chebyshev recursion is reversible, so no vector is stored),
and

    dE = Re [ g_1^dagger dX v_0 + 2 sum_{n >= 1} g_n+1^dagger dX v_n ],

with dX = -(J / 2 scale) dS_r . sigma on site r. The field is therefore exactly minus the
derivative of KPM's own energy (finite differences agree to rounding), and it converges to
ED's as the order and the probing distance grow.

Cost per configuration: 3 M / 2 sparse products of X with the 2 C probe vectors (C colours),
O(M C N): linear in the number of sites N at a fixed probing distance.
"""
from __future__ import annotations

import math
import warnings

import torch

from ..checks import check_spins
from ..graph import HoppingGraph
from .chebyshev import (chebyshev_nodes, grand_potential_coefficients, jackson_kernel,
                        quadrature_coefficients, step_coefficients)
from .kondo import Ensemble, EnsembleSolver
from .probing import distance_colouring

__all__ = ["KPM", "hopping_bounds"]

# damping factors g_n of the Chebyshev series
KERNELS = {"none": lambda order, device=None: torch.ones(order, dtype=torch.float64, device=device),
           "jackson": jackson_kernel}


def hopping_bounds(graph: HoppingGraph, steps: int = 100, seed: int = 0) -> tuple[float, float]:
    """Lower and upper estimates of the spectrum of the hopping matrix -T, by Lanczos.

    Extremal Ritz values converge from inside; each is widened by its residual norm
    |beta_k y_k|, which bounds its distance to an eigenvalue.

    Args:
        graph: the hopping graph.
        steps: Lanczos steps (at most N; full re-orthogonalisation).
        seed: seed of the start vector.
    """
    n = graph.num_nodes
    a = _hopping_csr(graph, -1.0)
    if not torch.is_complex(a):
        a = a.to(torch.complex128)
    steps = min(steps, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, dtype=torch.float64, generator=gen).to(torch.complex128)
    basis = [q / q.norm()]
    alpha, beta = [], []
    for k in range(steps):
        w = (a @ basis[k][:, None])[:, 0]
        alpha.append(float(torch.vdot(basis[k], w).real))
        stacked = torch.stack(basis, dim=1)  # (N, k + 1)
        for _ in range(2):  # twice is enough to keep the basis orthogonal
            w = w - stacked @ (stacked.conj().T @ w)
        b = float(w.norm())
        if k == steps - 1 or b < 1e-10:
            beta.append(b)
            break
        beta.append(b)
        basis.append(w / b)
    m = len(alpha)
    tri = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(beta[:-1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    ritz, vectors = torch.linalg.eigh(tri)
    residual = beta[-1] * vectors[-1].abs()
    return float(ritz[0] - residual[0]), float(ritz[-1] + residual[-1])


def _hopping_csr(graph: HoppingGraph, factor: float, device=None) -> torch.Tensor:
    """factor * T as an (N, N) sparse CSR matrix, T[r, r'] = t_rr', built from the edges (a dense
    T would take N^2 memory: 11 GB at 192x192)."""
    src, dst = graph.edge_index.to(device)
    n = graph.num_nodes
    coo = torch.sparse_coo_tensor(torch.stack([dst, src]), factor * graph.hopping.to(device), (n, n),
                                  check_invariants=True).coalesce()
    with warnings.catch_warnings():  # torch calls its CSR support beta on every conversion
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def _inner(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Re sum_p u_p^dagger v_p for (N, B, 2, P) vectors -> (B,)."""
    return torch.einsum("nbspc,nbspc->b", torch.view_as_real(u), torch.view_as_real(v))


class KPM(EnsembleSolver):
    """Kernel-polynomial estimate of the electronic energy and effective field, O(N).

    Args:
        graph: the hopping graph (any: Bravais lattice, open boundaries, networkx; complex
            hoppings allowed).
        J: Kondo coupling; the on-site term is -(J/2) S . sigma.
        filling: electrons per orbital, 0 < n < 1 (canonical: N_e = round(2 N n)).
        mu: chemical potential (grand canonical). Give exactly one of filling and mu.
        temperature: electronic temperature T >= 0 (Fermi function; T = 0 is the step).
        order: number of Chebyshev moments M >= 2 (energy resolution ~ pi * scale / M).
        kernel: "none" (the truncated series) or "jackson" (Jackson damping: a positive,
            broadened density of states, but a bias of order (pi / M)^2 on every level's energy;
            measured less accurate for the energy and the field, see docs/electrons.md).
        probe_distance: sites sharing a probe vector are at least this many hops apart on the
            hopping graph (2 probes, one per spin, for every colour).
        random_phases: give each site a fixed random phase in its probe (drawn once from
            ``seed``): the probing error then averages out instead of adding up.
        bounds: (lower, upper) bounds of the spectrum of H (minus mu in the grand canonical
            ensemble); default: Lanczos on the hopping matrix, +-|J|/2, widened by ``margin``.
        margin: fraction of the spectral width added on each side of automatic bounds.
        seed: seed of the Lanczos start vector and the random phases.
        probe_chunk: probe vectors propagated together (default all): bounds the memory.

    Example::

        graph = klmgraph.triangular(24, 24, t1=1.0, t3=-0.85)
        kpm = klmgraph.KPM(graph, J=-1.0, mu=-3.5)
        energy, field = kpm.energy_and_field(klmgraph.random_spins(graph, seed=0))

    Raises:
        ValueError: for order < 2, probe_distance < 1, non-finite or empty bounds, and
            (from :class:`~klmgraph.electrons.kondo.Ensemble`) bad ensemble parameters.
    """

    def __init__(self, graph: HoppingGraph, J: float, filling: float | None = None,
                 mu: float | None = None, temperature: float = 0.0, order: int = 512,
                 probe_distance: int = 12, random_phases: bool = True, kernel: str = "none",
                 bounds: tuple[float, float] | None = None, margin: float = 0.01, seed: int = 0,
                 probe_chunk: int | None = None):
        self.ensemble = Ensemble(J, filling=filling, mu=mu, temperature=temperature)
        self.num_electrons = self.ensemble.num_electrons(graph.num_nodes)
        self.graph = graph
        if int(order) != order or order < 2:
            raise ValueError(f"order (number of Chebyshev moments) must be an integer >= 2, got {order}")
        if probe_chunk is not None and (int(probe_chunk) != probe_chunk or probe_chunk < 1):
            raise ValueError(f"probe_chunk must be an integer >= 1, got {probe_chunk}")
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite fraction >= 0, got {margin}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
        self.order = int(order)
        self.kernel = kernel
        self.probe_distance = int(probe_distance)
        self.random_phases = bool(random_phases)
        self.seed = int(seed)
        self.probe_chunk = probe_chunk

        n = graph.num_nodes
        self.colours = distance_colouring(graph.edge_index, n, self.probe_distance)  # (N,)
        self.num_colours = int(self.colours.max()) + 1
        self.num_probes = 2 * self.num_colours
        if self.random_phases:
            gen = torch.Generator().manual_seed(self.seed)
            self._phases = torch.exp(2j * math.pi * torch.rand(n, dtype=torch.float64, generator=gen))
        else:
            self._phases = torch.ones(n, dtype=torch.complex128)

        # H = -T (x) 1 + V(S) - mu0; the on-site part V has eigenvalues +-J/2 on every site
        self._mu0 = self.mu if self.mu is not None else 0.0
        if bounds is None:
            lower, upper = hopping_bounds(graph, seed=self.seed)
            lower, upper = lower - abs(self.J) / 2 - self._mu0, upper + abs(self.J) / 2 - self._mu0
            pad = margin * (upper - lower)
            bounds = (lower - pad, upper + pad)
        try:
            lower, upper = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be two numbers (lower, upper), got {bounds!r}") from None
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ValueError(f"bounds must be finite with lower < upper, got {bounds!r}")
        self.bounds = (lower, upper)
        self.scale = (upper - lower) / 2
        self.centre = (upper + lower) / 2
        self._operators = {}

    @property
    def num_sites(self) -> int:
        return self.graph.num_nodes

    @property
    def solver(self) -> str:
        """Which solver this is, for reference numbers: "KPM, order 512, probe distance 12"."""
        return f"KPM, order {self.order}, probe distance {self.probe_distance}" + (
            ", Jackson kernel" if self.kernel == "jackson" else "")

    def parameters(self) -> dict:
        """The solver's and the Hamiltonian's parameters as a JSON-able dict."""
        return {"solver": "kpm", "order": self.order, "kernel": self.kernel,
                "probe_distance": self.probe_distance, "num_probes": self.num_probes,
                "random_phases": self.random_phases, "seed": self.seed, "bounds": list(self.bounds),
                "J": self.J, "filling": self.filling, "mu": self.mu,
                "temperature": self.temperature, "num_electrons": self.num_electrons}

    # ---------------------------------------------------------------- the operator X
    def _operator(self, device):
        """The scaled hopping part -T / scale as a sparse CSR matrix and the probe layout."""
        key = str(device)
        if key not in self._operators:
            hop = _hopping_csr(self.graph, -1.0 / self.scale, device)
            real = not torch.is_complex(hop)
            probe = (2 * self.colours[:, None] + torch.arange(2)[None, :]).to(device)  # (N, 2)
            self._operators = {key: (hop, real, probe, self._phases.to(device))}
        return self._operators[key]

    def _onsite(self, spins: torch.Tensor) -> torch.Tensor:
        """Scaled on-site blocks (V - mu0 - centre) / scale of (B, N, 3) spins -> (N, 2, 2, B, 1)."""
        s = spins.to(torch.float64).permute(1, 2, 0)  # (N, 3, B)
        half = 0.5 * self.J / self.scale
        shift = (self._mu0 + self.centre) / self.scale
        sx, sy, sz = s[:, 0], s[:, 1], s[:, 2]
        block = torch.stack([torch.stack([torch.complex(-half * sz - shift, 0 * sz), -half * torch.complex(sx, -sy)], 1),
                             torch.stack([-half * torch.complex(sx, sy), torch.complex(half * sz - shift, 0 * sz)], 1)], 1)
        return block[..., None]  # (N, 2, 2, B, 1)

    @staticmethod
    def _apply(hop, real, onsite, v):
        """X v for v of shape (N, B, 2, P) complex128 (a new tensor)."""
        n = v.shape[0]
        if real:  # a real hopping matrix acts on real and imaginary parts alike: half the work
            out = torch.view_as_complex((hop @ torch.view_as_real(v).reshape(n, -1)).reshape(*v.shape, 2))
        else:
            out = (hop @ v.reshape(n, -1)).reshape(v.shape)
        up, dn = v[:, :, 0], v[:, :, 1]
        out[:, :, 0].addcmul_(onsite[:, 0, 0], up).addcmul_(onsite[:, 0, 1], dn)
        out[:, :, 1].addcmul_(onsite[:, 1, 0], up).addcmul_(onsite[:, 1, 1], dn)
        return out

    def _probes(self, probe, phases, start, stop, batch):
        """Probe vectors start .. stop - 1 as (N, B, 2, P)."""
        n = probe.shape[0]
        local = probe - start  # (N, 2)
        inside = (local >= 0) & (local < stop - start)
        r = torch.zeros(n, 2, stop - start, dtype=torch.complex128, device=probe.device)
        sites, spins_ = inside.nonzero(as_tuple=True)
        r[sites, spins_, local[sites, spins_]] = phases[sites]
        return r[:, None].expand(n, batch, 2, stop - start).contiguous()

    def _chunks(self):
        step = self.probe_chunk or self.num_probes
        return [(p, min(p + step, self.num_probes)) for p in range(0, self.num_probes, step)]

    # ---------------------------------------------------------------- expansions
    def _coefficients(self, chemical_potential: torch.Tensor, what: str) -> torch.Tensor:
        """Kernel-weighted Chebyshev coefficients of the electron count (``what="count"``) or of
        the grand potential F(eps) in energy units (``"potential"``) at chemical potential m
        (measured like H's levels).

        Shapes:
            chemical_potential: (B,) -> (B, M)
        """
        order, T = self.order, self.temperature
        kernel = KERNELS[self.kernel](order, device=chemical_potential.device)
        if T == 0.0:
            x_m = (chemical_potential - self.centre) / self.scale
            if what == "count":
                return kernel * step_coefficients(x_m, order)
            return kernel * self.scale * grand_potential_coefficients(x_m, order)
        eps = self.scale * chebyshev_nodes(self._num_nodes(), device=chemical_potential.device) + self.centre
        x = (eps[None, :] - chemical_potential[:, None]) / T  # (B, K)
        values = torch.sigmoid(-x) if what == "count" else -T * torch.nn.functional.softplus(-x)
        return kernel * quadrature_coefficients(values)[:, :order]

    def _num_nodes(self) -> int:
        """Chebyshev-Gauss nodes K dense enough to sample the Fermi function's width T (a power
        of two: the FFT is fastest there)."""
        nodes = 1 << max(4 * self.order, int(8 * math.pi * self.scale / self.temperature), 1).bit_length()
        return min(nodes, 1 << 20)

    def _node_density(self, weighted_moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies eps_k of the nodes and w_k = (1 / K) sum_n (2 - delta_n0) g_n mu_n cos(n theta_k),
        so that sum_n g_n mu_n c_n = sum_k F(eps_k) w_k for quadrature coefficients c_n of F.

        Shapes:
            weighted_moments: (B, M) g_n mu_n -> (K,), (B, K)
        """
        nodes = self._num_nodes()
        order = weighted_moments.shape[-1]
        n = torch.arange(order, dtype=torch.float64, device=weighted_moments.device)
        a = weighted_moments * torch.where(n == 0, 1.0, 2.0) * torch.exp(1j * math.pi * n / (2 * nodes))
        # sum_n a_n exp(i n theta_k), theta_k = pi (k + 1/2) / K, as an inverse FFT of length 2K
        weights = (torch.fft.ifft(a, n=2 * nodes, dim=-1)[..., :nodes] * (2 * nodes)).real / nodes
        eps = self.scale * chebyshev_nodes(nodes, device=weighted_moments.device) + self.centre
        return eps, weights

    def _chemical_potential(self, moments: torch.Tensor) -> torch.Tensor:
        """mu with the expanded electron count sum_n g_n c_n(mu) mu_n = N_e, by bisection.

        Shapes:
            moments: (B, M) -> (B,)
        """
        ne, T = self.num_electrons, self.temperature
        batch = moments.shape[0]
        lo = torch.full((batch,), self.bounds[0] - 50 * T, dtype=torch.float64, device=moments.device)
        hi = torch.full((batch,), self.bounds[1] + 50 * T, dtype=torch.float64, device=moments.device)

        if T == 0.0:
            def count(m):
                return (self._coefficients(m, "count") * moments).sum(-1)
        else:
            # sum_n g_n mu_n c_n(m) with quadrature coefficients is sum_k f((eps_k - m) / T) w_k,
            # w_k the expanded density on the nodes: one FFT, then O(K) per bisection step
            kernel = KERNELS[self.kernel](self.order, device=moments.device)
            eps, weights = self._node_density(kernel * moments)

            def count(m):
                return (torch.sigmoid(-(eps[None, :] - m[:, None]) / T) * weights).sum(-1)

        # The expanded count runs continuously from 0 (the step's coefficients vanish at the
        # lower bound) to mu_0 = 2N (sum_r |r|^2) at the upper one, so every N_e that Ensemble
        # accepts (1 .. 2N - 1) is bracketed.
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            too_many = count(mid) > ne
            hi = torch.where(too_many, mid, hi)
            lo = torch.where(too_many, lo, mid)
            if bool(((hi - lo) < 1e-13 * (1 + mid.abs())).all()):
                break
        return 0.5 * (lo + hi)

    # ---------------------------------------------------------------- recursions
    @staticmethod
    def _doubling_weights(coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E = sum_n a_n mu_n rewritten on the vectors v_0 .. v_L, L = M // 2, with
        mu_2n = 2 <v_n, v_n> - mu_0 and mu_2n+1 = 2 <v_n+1, v_n> - mu_1 (T_m+n + T_|m-n| = 2 T_m T_n):

            E = sum_n alpha_n <v_n, v_n> + sum_n beta_n Re <v_n+1, v_n> - mu_0 sum_n a_2n.

        Shapes:
            coefficients: (B, M) -> alpha (L + 1, B), beta (L + 1, B), constant (B,)
        """
        batch, order = coefficients.shape
        length = order // 2 + 1
        alpha = torch.zeros(length, batch, dtype=torch.float64, device=coefficients.device)
        beta = torch.zeros_like(alpha)
        even, odd = coefficients[:, 0::2], coefficients[:, 1::2]
        alpha[: even.shape[1]] = 2 * even.T
        beta[: odd.shape[1]] = 2 * odd.T
        beta[0] -= odd.sum(-1)  # the -mu_1 of every odd moment: mu_1 = Re <v_1, v_0>
        return alpha, beta, -even.sum(-1)

    def _forward(self, hop, real, onsite, r):
        """Moments mu_n (B, M) of one probe chunk and its last two Chebyshev vectors v_L-1, v_L."""
        length = self.order // 2
        norms, overlaps = [], []  # <v_n, v_n> and Re <v_n+1, v_n>, summed over probes: (B,)
        previous, current = r, self._apply(hop, real, onsite, r)
        norms.append(_inner(r, r))
        for n in range(1, length + 1):
            overlaps.append(_inner(current, previous))
            norms.append(_inner(current, current))
            if n == length:
                break
            previous, current = current, self._apply(hop, real, onsite, current).mul_(2).sub_(previous)
        mu0, mu1 = norms[0], overlaps[0]
        even = 2 * torch.stack(norms, -1) - mu0[:, None]
        odd = 2 * torch.stack(overlaps, -1) - mu1[:, None]
        odd[:, 0] = mu1
        even[:, 0] = mu0
        moments = torch.stack([even[:, : length], odd], -1).reshape(r.shape[1], 2 * length)
        if self.order % 2:
            moments = torch.cat([moments, even[:, length:]], -1)
        return moments, previous, current

    def _backward(self, hop, real, onsite, coefficients, v_before, v_last):
        """The on-site blocks Q[s, s'] = sum_n w_n sum_p conj(g_n+1, s) v_n, s' (N, B, 2, 2) of
        dE = Re [g_1^dagger dX v_0 + 2 sum_n>=1 g_n+1^dagger dX v_n], running both recursions
        backwards from v_L-1, v_L. ``coefficients`` (B, M) are the a_n of E = sum_n a_n mu_n.
        """
        length = self.order // 2
        alpha, beta, _ = self._doubling_weights(coefficients)
        alpha = alpha[:, None, :, None, None].to(torch.complex128)  # (L + 1, 1, B, 1, 1)
        beta = beta[:, None, :, None, None].to(torch.complex128)
        block = torch.zeros(*v_last.shape[:2], 2, 2, dtype=torch.complex128, device=v_last.device)
        v_n, v_next = v_before, v_last  # v_n, v_n+1 for n = L - 1
        # dE/dv_n = 2 alpha_n v_n + beta_n v_n+1 + beta_n-1 v_n-1 (the source of g_n)
        g_next = 2 * alpha[length] * v_last + beta[length - 1] * v_before  # g_L
        g_after = torch.zeros_like(v_last)  # g_L+1
        p = v_last.shape[-1]
        for n in range(length - 1, -1, -1):
            weight = 1.0 if n == 0 else 2.0
            block += weight * (g_next.conj() @ v_n.transpose(-1, -2))  # (N, B, 2, 2)
            if n == 0:
                break
            both = self._apply(hop, real, onsite, torch.cat([v_n, g_next], dim=-1))  # one sparse product for both
            v_previous = both[..., :p].mul_(2).sub_(v_next)
            g_new = both[..., p:].mul_(2).sub_(g_after)
            g_new.addcmul_(2 * alpha[n], v_n).addcmul_(beta[n], v_next).addcmul_(beta[n - 1], v_previous)
            g_next, g_after = g_new, g_next
            v_n, v_next = v_previous, v_n
        return block

    def _solve(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (B,) and field (B, N, 3) of (B, N, 3) spins, float64, without input checks."""
        batch = spins.shape[0]
        hop, real, probe, phases = self._operator(spins.device)
        onsite = self._onsite(spins)
        canonical = self.num_electrons is not None
        tails, moments = [], 0
        for start, stop in self._chunks():
            r = self._probes(probe, phases, start, stop, batch)
            mu_n, v_before, v_last = self._forward(hop, real, onsite, r)
            moments = moments + mu_n
            # a canonical mu needs every chunk's moments first; keep the tails for the backward pass
            tails.append((v_before, v_last))
        limit = moments[:, :1].abs() * (1 + 1e-8) + 1e-8
        if bool((moments.abs() > limit).any()):
            raise ValueError(f"bounds {self.bounds} do not enclose the spectrum of H: a Chebyshev moment "
                             "exceeds mu_0 (widen the bounds or leave them to the default)")
        if canonical:
            mu = self._chemical_potential(moments)
        else:
            mu = torch.zeros(batch, dtype=torch.float64, device=spins.device)
        potential = self._coefficients(mu, "potential")
        energy = (potential * moments).sum(-1)
        if canonical:
            energy = energy + mu * self.num_electrons
        block = 0
        for v_before, v_last in tails:
            block = block + self._backward(hop, real, onsite, potential, v_before, v_last)
        # B = -dE/dS = (J / 2 scale) Re g^dagger sigma v, summed into the blocks Q
        q_ud, q_du = block[..., 0, 1], block[..., 1, 0]
        field = torch.stack([(q_ud + q_du).real, (q_ud - q_du).imag,
                             (block[..., 0, 0] - block[..., 1, 1]).real], dim=-1)  # (N, B, 3)
        return energy, (0.5 * self.J / self.scale) * field.permute(1, 0, 2)

    @torch.no_grad()
    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Electronic energy and effective field B = -dE/dS (of KPM's own energy estimate).

        Computed in float64 (complex128) on the spins' device and returned in the spins' dtype.

        Shapes:
            spins: (N, 3) or (B, N, 3) unit vectors -> E: () or (B,), B: spins' shape.

        Raises:
            ValueError: for spins of the wrong shape, and bounds that do not enclose the spectrum.
        """
        spins = check_spins(spins, self.num_sites)
        energy, field = self._solve(spins.reshape(-1, self.num_sites, 3))
        return (energy.reshape(spins.shape[:-2]).to(spins.dtype),
                field.reshape(spins.shape).to(spins.dtype))

    def __call__(self, spins):
        return self.energy_and_field(spins)

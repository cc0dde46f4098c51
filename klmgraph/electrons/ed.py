"""Exact diagonalization of the Kondo lattice (double-exchange) model on a hopping graph.

H_el = -sum_{r r'} t_{r r'} c+_r c_r' - J sum_r s_r . S_r,   s_r = (1/2) c+_r sigma c_r,

a 2N x 2N Hermitian matrix with orbital index 2 n + sigma (sigma 0 = up, 1 = down): the
hopping block -t on both spins and the on-site block -(J/2) S_r . sigma (DESIGN.md section 1).

Ensembles (T is the electronic temperature):

* canonical, T = 0: the N_e = round(2 N n) lowest levels are occupied, E = sum of them
  (a degenerate shell at the Fermi level shares its electrons equally: the T -> 0+ limit);
* canonical, T > 0: Fermi occupations with mu fixed by sum f = N_e; E is the free energy
  Omega + mu N_e;
* grand canonical, T = 0: levels below mu are occupied, E = sum (eps - mu) over them
  (a level exactly at mu holds 1/2);
* grand canonical, T > 0: E is the grand potential Omega = -T sum log(1 + exp(-(eps - mu) / T)).

In every case the effective field is B_r = -dE/dS_r = (J/2) sum_k f_k psi_k(r)^+ sigma psi_k(r)
(Hellmann-Feynman; at T > 0 the f-weighted sum is the exact derivative of Omega or F).

k-grid (``k_grid=(n1, n2[, n3])``): the configuration is the supercell of an infinite periodic
lattice (the lattice tiled n1 x n2 times and beyond, Bloch's theorem). Every hopping that
crosses the supercell boundary w times gets the phase exp(i theta . w), H(theta) is diagonalised
at each twist theta = 2 pi (m1 / n1, m2 / n2), and the levels of all twists together form the
spectrum of the n1 x n2 tiled lattice: the canonical ensemble counts N_e = round(2 N n n1 n2)
electrons over all of them. Energies are per supercell (the tiled lattice's energy divided by
n1 n2) and fields per supercell site, so B = -dE/dS still holds and everything downstream takes
them unchanged. This equals ED of the tiled lattice exactly, at a cost of n1 n2 diagonalisations
of the supercell instead of one of a matrix n1 n2 times larger.
"""
from __future__ import annotations

import math
import operator
from typing import Sequence

import torch

from ..checks import check_spins
from ..graph import HoppingGraph
from .kondo import Ensemble, EnsembleSolver, bloch_windings, k_grid_twists
from .tetrahedron import short_diagonal, tetrahedron_energy

__all__ = ["ExactDiagonalization"]

def _check_k_grid(k_grid) -> tuple[int, ...] | None:
    """The k-grid as a tuple of positive ints, or None for Gamma (None or all ones)."""
    if k_grid is None:
        return None
    try:
        grid = tuple(operator.index(n) for n in k_grid)
    except TypeError:
        raise ValueError(f"k_grid must be 1 to 3 integers (n1, n2[, n3]), got {k_grid!r}") from None
    if not 1 <= len(grid) <= 3:
        raise ValueError(f"k_grid must be 1 to 3 integers (n1, n2[, n3]), got {k_grid!r}")
    if any(n < 1 for n in grid):
        raise ValueError(f"k_grid entries must be positive (twists per supercell vector), got {list(grid)}")
    return None if all(n == 1 for n in grid) else grid


class ExactDiagonalization(EnsembleSolver):
    """Exact electronic energy and effective field of the Kondo lattice model on a graph.

    Args:
        graph: the hopping graph (hoppings t, on-site energies on self loops).
        J: Kondo coupling; the on-site term is -(J/2) S . sigma.
        filling: electrons per orbital, 0 < n < 1 (canonical: N_e = round(2 N n)).
        mu: chemical potential (grand canonical). Give exactly one of filling and mu.
        temperature: electronic temperature T >= 0 (Fermi function; T -> 0 is the step).
        k_grid: (n1, n2[, n3]) twists per supercell vector (the thermodynamic limit as n -> inf);
            None or all ones is Gamma-point ED of the graph itself. Needs a periodic
            Bravais-lattice graph.
        max_batch_bytes: memory of the Hamiltonians diagonalised in one batched call; larger
            batches of configurations and twists are split into calls of this size.

    Example::

        graph = klmgraph.square(6, 6)
        ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
        energy, field = ed.energy_and_field(klmgraph.random_spins(graph, seed=0))
        # the same 6x6 configuration repeated over an infinite lattice, 8x8 twists:
        ed_tl = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48, k_grid=(8, 8))

    Cost: one dense 2N x 2N complex Hermitian eigendecomposition per configuration and twist
    (canonical k-grids: plus one eigenvalue-only pass, since the Fermi level is set by all
    twists together).
    """

    def __init__(self, graph: HoppingGraph, J: float, filling: float | None = None,
                 mu: float | None = None, temperature: float = 0.0,
                 k_grid: Sequence[int] | None = None, max_batch_bytes: int = 2 ** 28):
        self.ensemble = Ensemble(J, filling=filling, mu=mu, temperature=temperature)
        self.k_grid = _check_k_grid(k_grid)
        self.num_twists = math.prod(self.k_grid) if self.k_grid else 1
        if self.k_grid is not None:
            self._windings = bloch_windings(graph)  # refuses open and irregular graphs
            if len(self.k_grid) != self._windings.shape[1]:
                raise ValueError(f"k_grid {list(self.k_grid)} has {len(self.k_grid)} entries; the graph's "
                                 f"lattice has {self._windings.shape[1]} dimensions")
            self._twists = k_grid_twists(self.k_grid)
        if int(max_batch_bytes) < 1:
            raise ValueError(f"max_batch_bytes must be positive, got {max_batch_bytes}")
        self.max_batch_bytes = int(max_batch_bytes)
        # counted over all twists together: the electrons of the tiled lattice
        self.num_electrons = self.ensemble.num_electrons(graph.num_nodes * self.num_twists)
        self.graph = graph
        self._hopping_block = {}

    @property
    def num_sites(self) -> int:
        return self.graph.num_nodes

    def parameters(self) -> dict:
        """The Hamiltonian's parameters as a JSON-able dict."""
        params = {"J": self.J, "filling": self.filling, "mu": self.mu,
                  "temperature": self.temperature, "num_electrons": self.num_electrons}
        if self.k_grid is not None:  # Gamma keeps the keys that older data sets were written with
            params["k_grid"] = list(self.k_grid)
        return params

    @property
    def solver(self) -> str:
        """Which solver this is, for reference numbers: "ED at Gamma" or "ED, k-grid 4x4"."""
        return "ED at Gamma" if self.k_grid is None else "ED, k-grid " + "x".join(map(str, self.k_grid))

    def _hopping_matrix(self, device) -> torch.Tensor:
        """(2N, 2N) complex128 spin-diagonal hopping part (minus mu in the grand canonical case)."""
        key = str(device)
        if key not in self._hopping_block:
            n = self.num_sites
            t = self.graph.hopping_matrix(device).to(torch.complex128)
            h = torch.zeros(2 * n, 2 * n, dtype=torch.complex128, device=device)
            h[0::2, 0::2] = -t
            h[1::2, 1::2] = -t
            if self.mu is not None:
                h.diagonal().sub_(self.mu)
            self._hopping_block = {key: h}
        return self._hopping_block[key]

    def _twisted_hopping(self, twists: torch.Tensor) -> torch.Tensor:
        """(T, 2N, 2N) complex128 hopping part at twists (T, d): -t exp(i theta . w) on both spins."""
        n, device = self.num_sites, twists.device
        src, dst = self.graph.edge_index.to(device)
        phase = torch.exp(1j * (twists @ self._windings.to(device, torch.float64).T))  # (T, E)
        amplitude = -self.graph.hopping.to(device, torch.complex128) * phase
        h = torch.zeros(len(twists), 2 * n, 2 * n, dtype=torch.complex128, device=device)
        flat = h.view(len(twists), -1)
        for sigma in (0, 1):
            flat.index_add_(1, (2 * dst + sigma) * (2 * n) + 2 * src + sigma, amplitude)
        if self.mu is not None:
            h.diagonal(dim1=-2, dim2=-1).sub_(self.mu)
        return h

    def hamiltonian(self, spins: torch.Tensor, twist: Sequence[float] | None = None) -> torch.Tensor:
        """The electronic Hamiltonian (minus mu for grand canonical), assembled without loops.

        Args:
            spins: the configuration.
            twist: theta (one angle per lattice dimension) for the Bloch phases of a periodic
                Bravais-lattice graph; None is Gamma.

        Shapes:
            spins: (N, 3) or (B, N, 3) -> (2N, 2N) or (B, 2N, 2N), complex128.
        """
        spins = check_spins(spins, self.num_sites)
        flat = spins.reshape(-1, self.num_sites, 3)
        if twist is None:
            h = self._assemble(flat)
        else:
            if not hasattr(self, "_windings"):
                self._windings = bloch_windings(self.graph)
            theta = torch.as_tensor(twist, dtype=torch.float64, device=spins.device).reshape(1, -1)
            if theta.shape[1] != self._windings.shape[1]:
                raise ValueError(f"twist needs {self._windings.shape[1]} angles, got {theta.shape[1]}")
            h = self._add_exchange(self._twisted_hopping(theta).expand(len(flat), -1, -1).clone(), flat)
        return h.reshape(*spins.shape[:-2], 2 * self.num_sites, 2 * self.num_sites)

    def _assemble(self, spins: torch.Tensor) -> torch.Tensor:
        # (B, N, 3) -> (B, 2N, 2N), at Gamma
        h = self._hopping_matrix(spins.device).expand(spins.shape[0], -1, -1).clone()
        return self._add_exchange(h, spins)

    def _add_exchange(self, h: torch.Tensor, spins: torch.Tensor) -> torch.Tensor:
        """Adds the on-site block -(J/2) S . sigma of (B, N, 3) spins to (B, 2N, 2N) h in place."""
        n = self.num_sites
        s = spins.detach().to(torch.float64)
        sites = torch.arange(n, device=spins.device)
        up, dn = 2 * sites, 2 * sites + 1
        half_j = 0.5 * self.J
        sx, sy, sz = s[..., 0], s[..., 1], s[..., 2]
        h[:, up, up] -= half_j * sz
        h[:, dn, dn] += half_j * sz
        h[:, up, dn] -= half_j * torch.complex(sx, -sy)
        h[:, dn, up] -= half_j * torch.complex(sx, sy)
        return h

    def occupations(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupation numbers f_k and the energy E of sorted levels.

        Shapes:
            levels: (B, 2N) eigenvalues of :meth:`hamiltonian` in ascending order
            -> f (B, 2N), E (B,)
        """
        fermi = self._fermi_level(levels)
        f, energy = self._occupy(levels, fermi)
        if fermi[0] == "mu":  # the free energy F = Omega + mu N_e
            energy = energy + fermi[1] * self.num_electrons
        return f, energy

    def _fermi_level(self, levels: torch.Tensor) -> tuple:
        """What fixes the occupations of (B, M) sorted levels (of every twist together):
        nothing (grand canonical), the Fermi level and the shell's filling fraction (canonical,
        T = 0), or mu (canonical, T > 0)."""
        T = self.temperature
        # levels closer than this count as degenerate (eigh's error is ~1e-15 of the spectral radius)
        tol = 1e-9 * levels.abs().amax(-1, keepdim=True).clamp(min=1.0)
        ne = self.num_electrons
        if ne is None:
            return ("grand", tol)
        if T == 0.0:
            # A degenerate shell at the Fermi level shares its electrons equally (the T -> 0+
            # limit of the Fermi function); otherwise the field would depend on which
            # eigenvectors eigh happened to return, e.g. for a ferromagnet on a small lattice.
            fermi = levels[:, ne - 1 : ne]
            below = (levels < fermi - tol).to(levels.dtype).sum(-1, keepdim=True)
            shell = ((levels - fermi).abs() <= tol).to(levels.dtype).sum(-1, keepdim=True)
            return ("shell", tol, fermi, (ne - below) / shell)
        return ("mu", self._chemical_potential(levels, ne, T))

    def _occupy(self, levels: torch.Tensor, fermi: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupations (B, M) and the energy (B,) summed over (B, M) levels, given :meth:`_fermi_level`."""
        T = self.temperature
        if fermi[0] == "grand":  # levels already measured from mu
            tol = fermi[1]
            if T == 0.0:
                f = (levels < -tol).to(levels.dtype) + 0.5 * (levels.abs() <= tol).to(levels.dtype)
                return f, (f * levels).sum(-1)
            f = torch.sigmoid(-levels / T)
            return f, -T * torch.nn.functional.softplus(-levels / T).sum(-1)
        if fermi[0] == "shell":
            _, tol, level, fraction = fermi
            f = (levels < level - tol).to(levels.dtype) + ((levels - level).abs() <= tol).to(levels.dtype) * fraction
            return f, (f * levels).sum(-1)
        mu = fermi[1]
        x = (levels - mu[:, None]) / T
        f = torch.sigmoid(-x)
        # the mu N_e term is added once for all twists by the caller
        return f, -T * torch.nn.functional.softplus(-x).sum(-1)

    @staticmethod
    def _chemical_potential(levels, ne, T, iterations: int = 200) -> torch.Tensor:
        """mu with sum_k f((eps_k - mu) / T) = N_e, by bisection (monotone, always converges)."""
        lo = levels[:, 0] - 50 * T - 1.0
        hi = levels[:, -1] + 50 * T + 1.0
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            count = torch.sigmoid(-(levels - mid[:, None]) / T).sum(-1)
            too_many = count > ne
            hi = torch.where(too_many, mid, hi)
            lo = torch.where(too_many, lo, mid)
            if not mid.is_meta and bool(((hi - lo) < 1e-14 * (1 + mid.abs())).all()):
                break
        return 0.5 * (lo + hi)

    @torch.no_grad()
    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Electronic energy and effective field B = -dE/dS.

        Computed in float64 on the spins' device and returned in the spins' dtype.

        Shapes:
            spins: (N, 3) or (B, N, 3) unit vectors -> E: () or (B,), B: spins' shape.
        """
        return self.energy_and_field_unchecked(check_spins(spins, self.num_sites))

    @torch.no_grad()
    def energy_and_field_unchecked(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`energy_and_field` for spins already validated (the integrator checks them once
        per run; the checks would cost host synchronisations on every step)."""
        energy, field = self._solve(spins.reshape(-1, self.num_sites, 3))
        return (energy.reshape(spins.shape[:-2]).to(spins.dtype),
                field.reshape(spins.shape).to(spins.dtype))

    @torch.no_grad()
    def energy(self, spins: torch.Tensor, integration: str = "sum") -> torch.Tensor:
        """The electronic energy alone: eigenvalues only (about half the cost of
        :meth:`energy_and_field` on a fine k-grid).

        Args:
            spins: the configuration.
            integration: "sum" (the k-grid sum, the number :meth:`energy_and_field` gives) or
                "tetrahedron" (T = 0 and a 1D or 2D k-grid only: the bands interpolated linearly
                between the twists, :mod:`klmgraph.electrons.tetrahedron`; its error falls
                smoothly as 1 / n^2, where the sum's oscillates at the Fermi surface, so two grids
                extrapolate it with :func:`~klmgraph.electrons.tetrahedron.richardson`).

        Shapes:
            spins: (N, 3) or (B, N, 3) unit vectors -> () or (B,), in the spins' dtype.

        Raises:
            ValueError: for an unknown ``integration``, or "tetrahedron" at Gamma, at T > 0 or
                on a 3D grid.
        """
        if integration not in ("sum", "tetrahedron"):
            raise ValueError(f"integration must be 'sum' or 'tetrahedron', got {integration!r}")
        if integration == "tetrahedron" and (self.k_grid is None or self.temperature > 0):
            raise ValueError("integration='tetrahedron' needs a k-grid and temperature 0 (it integrates the "
                             f"T = 0 step over the Brillouin zone); this solver has k_grid={self.k_grid} and "
                             f"temperature={self.temperature}")
        spins = check_spins(spins, self.num_sites)
        flat = spins.reshape(-1, self.num_sites, 3)
        if self.k_grid is None:
            levels = torch.linalg.eigvalsh(self._assemble(flat))
            energy = self.occupations(levels)[1]
        elif integration == "tetrahedron":
            energy = self.tetrahedron_energy(self.twist_levels(flat))
        elif self.num_electrons is not None:  # the Fermi level is set by all twists together
            levels = self._twist_levels(flat)
            energy = self.occupations(levels.reshape(len(flat), -1).sort(-1).values)[1] / self.num_twists
        else:
            energy = torch.zeros(len(flat), dtype=torch.float64, device=flat.device)
            for config, h in self._twisted_batches(flat):
                levels = torch.linalg.eigvalsh(h)
                energy.index_add_(0, config, self.occupations(levels)[1] / self.num_twists)
        return energy.reshape(spins.shape[:-2]).to(spins.dtype)

    @torch.no_grad()
    def twist_levels(self, spins: torch.Tensor) -> torch.Tensor:
        """The levels of H(theta) at every twist of the k-grid, ascending at each (the bands;
        minus mu in the grand canonical case), in the order of ``k_grid_twists`` (the last
        dimension fastest): a grid that divides this one is the slice ``[:, ::m1, ::m2]`` of
        the (B, n1, n2, 2N) reshape.

        Shapes:
            spins: (N, 3) or (B, N, 3) -> (n1 ... nd, 2N) or (B, n1 ... nd, 2N), float64.
        """
        if self.k_grid is None:
            raise ValueError("twist_levels needs a k-grid (k_grid=(n1, n2[, n3]))")
        spins = check_spins(spins, self.num_sites)
        return self._twist_levels(spins.reshape(-1, self.num_sites, 3)).reshape(
            *spins.shape[:-2], self.num_twists, 2 * self.num_sites)

    def _twist_levels(self, flat: torch.Tensor) -> torch.Tensor:
        """(B * K, 2N) eigenvalues of (B, N, 3) spins at the K twists, configuration-major."""
        return torch.cat([torch.linalg.eigvalsh(h) for _, h in self._twisted_batches(flat)])

    def tetrahedron_energy(self, levels: torch.Tensor, k_grid: Sequence[int] | None = None) -> torch.Tensor:
        """The T = 0 energy per supercell of :meth:`twist_levels` by the tetrahedron method, on
        this solver's k-grid or on ``k_grid`` (a coarser grid's levels, sliced from these).

        Shapes:
            levels: (B, n1 n2, 2N) -> (B,)
        """
        if self.k_grid is None:
            raise ValueError("tetrahedron_energy needs a k-grid (k_grid=(n1, n2)); this solver is at Gamma")
        grid = _check_k_grid(k_grid) if k_grid is not None else self.k_grid
        if grid is None or len(grid) != len(self.k_grid):
            raise ValueError(f"k_grid must have {len(self.k_grid)} entries, got {k_grid!r}")
        electrons = self.ensemble.num_electrons(self.num_sites * math.prod(grid))
        diagonal = short_diagonal(self.graph.cell[:2, :2]) if len(grid) == 2 else 0
        return tetrahedron_energy(levels, grid, electrons, diagonal)

    def _solve(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (B,) and field (B, N, 3) of (B, N, 3) spins, float64, without input checks."""
        if self.k_grid is not None:
            return self._solve_k_grid(spins)
        levels, vectors = torch.linalg.eigh(self._assemble(spins))
        f, energy = self.occupations(levels)
        return energy, self._local_field(vectors, f)

    def _local_field(self, vectors: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """(J/2) sum_k f_k psi_k(r)^+ sigma psi_k(r): (B, 2N, M) eigenvectors, (B, M) occupations -> (B, N, 3)."""
        # occupations decrease with the level index, so only the first k columns contribute
        # (a meta tensor, which checks device handling without data, keeps all of them)
        k = f.shape[-1] if f.is_meta else int((f > 0).sum(-1).max())
        f = f[:, :k, None].to(vectors.dtype)  # (B, k, 1)
        up, dn = vectors[:, 0::2, :k], vectors[:, 1::2, :k]  # (B, N, k)
        # sum_k f_k psi^+ sigma psi per site: sigma_x, sigma_y from up* dn, sigma_z from |up|^2 - |dn|^2
        cross = ((up.conj() * dn) @ f)[..., 0]  # (B, N)
        sz = ((up.conj() * up - dn.conj() * dn) @ f)[..., 0].real
        return 0.5 * self.J * torch.stack([2 * cross.real, 2 * cross.imag, sz], dim=-1)

    def _twisted_batches(self, spins: torch.Tensor):
        """Yields (configuration index (P,), H (P, 2N, 2N)) over all (configuration, twist) pairs,
        in batches of at most ``max_batch_bytes``; pair p is configuration p // K at twist p % K."""
        twists = self._twists.to(spins.device)
        num_twists, dim = len(twists), 2 * self.num_sites
        per_call = max(1, self.max_batch_bytes // (dim * dim * 16))
        pairs = torch.arange(len(spins) * num_twists, device=spins.device)
        for chunk in pairs.split(per_call):
            config = chunk // num_twists
            h = self._twisted_hopping(twists[chunk % num_twists])
            yield config, self._add_exchange(h, spins[config])

    def _solve_k_grid(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_twists = len(spins), self.num_twists
        energy = torch.zeros(batch, dtype=torch.float64, device=spins.device)
        field = torch.zeros(batch, self.num_sites, 3, dtype=torch.float64, device=spins.device)
        fermi = None
        if self.num_electrons is not None:
            # the Fermi level belongs to the tiled lattice: it needs the levels of every twist first
            levels = self._twist_levels(spins)
            pooled = levels.reshape(batch, -1).sort(-1).values  # (B, K * 2N)
            fermi = self._fermi_level(pooled)
            energy = self._occupy(pooled, fermi)[1]
            if fermi[0] == "mu":
                energy = energy + fermi[1] * self.num_electrons
            energy = energy / num_twists
        for config, h in self._twisted_batches(spins):
            levels, vectors = torch.linalg.eigh(h)
            if fermi is None:  # grand canonical: each level's occupation is its own business
                f, e = self._occupy(levels, self._fermi_level(levels))
                energy.index_add_(0, config, e / num_twists)
            else:
                f, _ = self._occupy(levels, tuple(x[config] if torch.is_tensor(x) else x for x in fermi))
            field.index_add_(0, config, self._local_field(vectors, f) / num_twists)
        return energy, field

    def __call__(self, spins):
        return self.energy_and_field(spins)

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
"""
from __future__ import annotations

import math

import torch

from ..checks import check_spins
from ..graph import HoppingGraph
from .kondo import Ensemble

__all__ = ["ExactDiagonalization"]

class ExactDiagonalization:
    """Exact electronic energy and effective field of the Kondo lattice model on a graph.

    Args:
        graph: the hopping graph (hoppings t, on-site energies on self loops).
        J: Kondo coupling; the on-site term is -(J/2) S . sigma.
        filling: electrons per orbital, 0 < n < 1 (canonical: N_e = round(2 N n)).
        mu: chemical potential (grand canonical). Give exactly one of filling and mu.
        temperature: electronic temperature T >= 0 (Fermi function; T -> 0 is the step).

    Example::

        graph = klmgraph.square(6, 6)
        ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
        energy, field = ed.energy_and_field(klmgraph.random_spins(graph, seed=0))

    Cost: one dense 2N x 2N complex Hermitian eigendecomposition per configuration.
    """

    def __init__(self, graph: HoppingGraph, J: float, filling: float | None = None,
                 mu: float | None = None, temperature: float = 0.0):
        self.ensemble = Ensemble(J, filling=filling, mu=mu, temperature=temperature)
        self.num_electrons = self.ensemble.num_electrons(graph.num_nodes)
        self.graph = graph
        self.J = self.ensemble.J
        self.filling = self.ensemble.filling
        self.mu = self.ensemble.mu
        self.temperature = self.ensemble.temperature
        self._hopping_block = {}

    @property
    def num_sites(self) -> int:
        return self.graph.num_nodes

    def parameters(self) -> dict:
        """The Hamiltonian's parameters as a JSON-able dict."""
        return {"J": self.J, "filling": self.filling, "mu": self.mu,
                "temperature": self.temperature, "num_electrons": self.num_electrons}

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

    def hamiltonian(self, spins: torch.Tensor) -> torch.Tensor:
        """The electronic Hamiltonian (minus mu for grand canonical), assembled without loops.

        Shapes:
            spins: (N, 3) or (B, N, 3) -> (2N, 2N) or (B, 2N, 2N), complex128.
        """
        spins = check_spins(spins, self.num_sites)
        return self._assemble(spins.reshape(-1, self.num_sites, 3)).reshape(
            *spins.shape[:-2], 2 * self.num_sites, 2 * self.num_sites)

    def _assemble(self, spins: torch.Tensor) -> torch.Tensor:
        # (B, N, 3) -> (B, 2N, 2N)
        batch, n = spins.shape[0], self.num_sites
        s = spins.detach().to(torch.float64)
        h = self._hopping_matrix(spins.device).expand(batch, -1, -1).clone()
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
        T = self.temperature
        # levels closer than this count as degenerate (eigh's error is ~1e-15 of the spectral radius)
        tol = 1e-9 * levels.abs().amax(-1, keepdim=True).clamp(min=1.0)
        if self.num_electrons is None:  # grand canonical: levels already measured from mu
            if T == 0.0:
                f = (levels < -tol).to(levels.dtype) + 0.5 * (levels.abs() <= tol).to(levels.dtype)
                return f, (f * levels).sum(-1)
            f = torch.sigmoid(-levels / T)
            return f, -T * torch.nn.functional.softplus(-levels / T).sum(-1)
        ne = self.num_electrons
        if T == 0.0:
            # A degenerate shell at the Fermi level shares its electrons equally (the T -> 0+
            # limit of the Fermi function); otherwise the field would depend on which
            # eigenvectors eigh happened to return, e.g. for a ferromagnet on a small lattice.
            fermi = levels[:, ne - 1 : ne]
            below = (levels < fermi - tol).to(levels.dtype)
            shell = ((levels - fermi).abs() <= tol).to(levels.dtype)
            fraction = (ne - below.sum(-1, keepdim=True)) / shell.sum(-1, keepdim=True)
            f = below + shell * fraction
            return f, (f * levels).sum(-1)
        mu = self._chemical_potential(levels, ne, T)
        x = (levels - mu[:, None]) / T
        f = torch.sigmoid(-x)
        free_energy = -T * torch.nn.functional.softplus(-x).sum(-1) + mu * ne
        return f, free_energy

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
            if bool(((hi - lo) < 1e-14 * (1 + mid.abs())).all()):
                break
        return 0.5 * (lo + hi)

    @torch.no_grad()
    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Electronic energy and effective field B = -dE/dS.

        Computed in float64 on the spins' device and returned in the spins' dtype.

        Shapes:
            spins: (N, 3) or (B, N, 3) unit vectors -> E: () or (B,), B: spins' shape.
        """
        spins = check_spins(spins, self.num_sites)
        energy, field = self._solve(spins.reshape(-1, self.num_sites, 3))
        return (energy.reshape(spins.shape[:-2]).to(spins.dtype),
                field.reshape(spins.shape).to(spins.dtype))

    def _solve(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (B,) and field (B, N, 3) of (B, N, 3) spins, float64, without input checks."""
        levels, vectors = torch.linalg.eigh(self._assemble(spins))
        f, energy = self.occupations(levels)
        # occupations decrease with the level index, so only the first k columns contribute
        k = int((f > 0).sum(-1).max())
        f = f[:, :k, None].to(vectors.dtype)  # (B, k, 1)
        up, dn = vectors[:, 0::2, :k], vectors[:, 1::2, :k]  # (B, N, k)
        # sum_k f_k psi^+ sigma psi per site: sigma_x, sigma_y from up* dn, sigma_z from |up|^2 - |dn|^2
        cross = ((up.conj() * dn) @ f)[..., 0]  # (B, N)
        sz = ((up.conj() * up - dn.conj() * dn) @ f)[..., 0].real
        field = 0.5 * self.J * torch.stack([2 * cross.real, 2 * cross.imag, sz], dim=-1)
        return energy, field

    def __call__(self, spins):
        return self.energy_and_field(spins)

"""What every electronic solver shares: the ensemble's parameters and the supercell's Bloch phases.

The Kondo lattice Hamiltonian (DESIGN.md section 1) on a hopping graph is

    H_el = -sum_{r r'} t_{r r'} c+_r c_r' - (J/2) sum_r S_r . c+_r sigma c_r   (- mu N in the
    grand canonical ensemble),

with orbital index 2 n + sigma. The solvers (:class:`~klmgraph.electrons.ExactDiagonalization`,
:class:`~klmgraph.electrons.KPM`) differ only in how they trace over its levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..graph import HoppingGraph

__all__ = ["Ensemble", "EnsembleSolver", "bloch_windings", "k_grid_twists"]


@dataclass(frozen=True)
class Ensemble:
    """Kondo coupling, electron count or chemical potential, and electronic temperature.

    Args:
        J: Kondo coupling; the on-site term is -(J/2) S . sigma.
        filling: electrons per orbital, 0 < n < 1 (canonical).
        mu: chemical potential (grand canonical). Exactly one of filling and mu.
        temperature: electronic temperature T >= 0.

    Raises:
        ValueError: naming the parameter that is missing, doubled or out of range.
    """

    J: float
    filling: float | None = None
    mu: float | None = None
    temperature: float = 0.0

    def __post_init__(self):
        if (self.filling is None) == (self.mu is None):
            raise ValueError("give exactly one of filling (canonical) and mu (grand canonical), "
                             f"got filling={self.filling}, mu={self.mu}")
        if not math.isfinite(float(self.J)):
            raise ValueError(f"J must be finite, got {self.J}")
        if not (math.isfinite(float(self.temperature)) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.filling is not None and not 0.0 < float(self.filling) < 1.0:
            raise ValueError(f"filling must lie in (0, 1) (electrons per orbital), got {self.filling}")
        if self.mu is not None and not math.isfinite(float(self.mu)):
            raise ValueError(f"mu must be finite, got {self.mu}")
        object.__setattr__(self, "J", float(self.J))
        object.__setattr__(self, "temperature", float(self.temperature))
        for key in ("filling", "mu"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, float(getattr(self, key)))

    @property
    def canonical(self) -> bool:
        return self.filling is not None

    def num_electrons(self, num_sites: int) -> int | None:
        """N_e = round(2 N n) for N sites (None in the grand canonical ensemble).

        Raises:
            ValueError: if the filling leaves no electron or no empty level.
        """
        if self.filling is None:
            return None
        ne = int(round(2 * num_sites * self.filling))
        if not 0 < ne < 2 * num_sites:
            raise ValueError(f"filling {self.filling} on {num_sites} sites gives {ne} electrons; "
                             f"need between 1 and {2 * num_sites - 1}")
        return ne


class EnsembleSolver:
    """What a solver with an ``ensemble`` (:class:`Ensemble`) exposes of it, read-only."""

    ensemble: Ensemble

    @property
    def J(self) -> float:
        return self.ensemble.J

    @property
    def filling(self) -> float | None:
        return self.ensemble.filling

    @property
    def mu(self) -> float | None:
        return self.ensemble.mu

    @property
    def temperature(self) -> float:
        return self.ensemble.temperature


def bloch_windings(graph: HoppingGraph) -> torch.Tensor:
    """How many supercell vectors each edge crosses: w with r'_image = r'_site + w . cell.

    A hopping from centre r to the periodic image of r' at pos[r] + edge_vec is the hopping to
    the site r' of the supercell shifted by w_1 L_1 + w_2 L_2 (+ w_3 L_3). On the supercell of an
    infinite lattice with twist theta (Bloch's theorem, psi(r + L_a) = exp(i theta_a) psi(r))
    the hopping picks up the phase exp(i theta . w).

    Returns:
        (E, d) int64 windings, d = the number of lattice dimensions.

    Raises:
        ValueError: for a graph without a periodic supercell in every dimension (an open
            boundary, or a networkx graph), or bonds that are not whole supercell images.
    """
    description = graph.description
    periodic = list(description.get("periodic", []))
    if not periodic or "vectors" not in description:
        raise ValueError(f"a k-grid needs a periodic Bravais-lattice graph; this {description.get('lattice', 'graph')} "
                         "graph has no supercell (build it with a lattice builder or BravaisLattice.graph)")
    if not all(periodic):
        raise ValueError(f"a k-grid needs periodic boundaries in every dimension; this graph has "
                         f"periodic={periodic} (open boundaries have no Bloch phase)")
    dim = len(periodic)
    cell = graph.cell[:dim].to(torch.float64)  # (d, 3) supercell vectors
    src, dst = graph.edge_index
    image = graph.pos[dst] + graph.edge_vec - graph.pos[src]  # (E, 3) = w . cell
    w = torch.linalg.lstsq(cell.T, image.T).solution.T  # (E, d)
    windings = torch.round(w)
    if (w - windings).abs().max() > 1e-6 or (windings @ cell - image).abs().max() > 1e-6:
        raise ValueError("the graph's bonds do not connect whole supercell images of its sites "
                         "(irregular positions or displacements): no Bloch phase is defined")
    return windings.to(torch.int64)


def k_grid_twists(k_grid: tuple[int, ...]) -> torch.Tensor:
    """The twists theta = 2 pi (m_1 / n_1, ..., m_d / n_d), m_a = 0 .. n_a - 1.

    Returns:
        (n_1 ... n_d, d) float64, the last dimension's m running fastest.
    """
    axes = [torch.arange(n, dtype=torch.float64) * (2 * math.pi / n) for n in k_grid]
    return torch.cartesian_prod(*axes).reshape(-1, len(k_grid))

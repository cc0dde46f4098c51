"""ED of configurations that repeat a smaller lattice, solved on the smaller lattice.

By Bloch's theorem, a configuration of an L1 x L2 lattice that repeats with the period of an
l1 x l2 lattice of the same kind (Li = ni li) has, on a k1 x k2 grid of twisted boundary
conditions, the energy and field of the l1 x l2 lattice on an (n1 k1) x (n2 k2) grid, tiled:
the same numbers (to rounding) at 1 / (n1 n2)^2 of the cost. ED-LLG snapshots of a small
supercell, tiled onto the lattice of a data set, are labelled this way.
"""
from __future__ import annotations

import torch

from ..checks import check_spins
from ..graph import HoppingGraph, lattice_key
from ..spins import tiling
from .ed import ExactDiagonalization

__all__ = ["FoldedED"]


class FoldedED:
    """The solver ``ed`` on configurations that repeat ``graph``, a smaller lattice of its kind.

    It stands in for ``ed`` where a solver is taken (:func:`klmgraph.generate_dataset`, and
    :class:`klmgraph.LLG` at T = 0 from a repeating start: thermal noise breaks the repetition,
    and the next call raises): same ``graph``, same ``parameters()``, same numbers.

    Args:
        ed: the solver of the large lattice (Gamma or a k-grid).
        graph: the small periodic lattice; same lattice and hoppings, each size dividing ed's.

    Raises:
        ValueError: if ``graph`` is not a smaller lattice of the same kind whose sizes divide
            ed's, or (in :meth:`energy_and_field`) if a configuration does not repeat it.
    """

    def __init__(self, ed: ExactDiagonalization, graph: HoppingGraph):
        big, small = ed.graph.description, graph.description
        same = lattice_key(big) == lattice_key(small)
        if not same or "size" not in big or len(big["size"]) != len(small.get("size", ())):
            raise ValueError(f"FoldedED: {graph.describe()} is not a lattice of the same kind and hoppings as "
                             f"{ed.graph.describe()}")
        for g, d in ((ed.graph, big), (graph, small)):
            if not all(d.get("periodic", [False])):
                raise ValueError(f"FoldedED: {g.describe()} has open boundaries; folding needs periodic lattices")
        ratio = []
        for large, little in zip(big["size"], small["size"]):
            if large % little:
                raise ValueError(f"FoldedED: size {small['size']} does not divide {big['size']}")
            ratio.append(large // little)
        grid = [1] * len(ratio) if ed.k_grid is None else list(ed.k_grid)
        self.ed = ed
        self.small = ExactDiagonalization(graph, J=ed.J, filling=ed.filling, mu=ed.mu, temperature=ed.temperature,
                                          k_grid=[k * n for k, n in zip(grid, ratio)],
                                          max_batch_bytes=ed.max_batch_bytes)
        self.graph = ed.graph
        tiled, self.tile = tiling(graph, ratio)  # (N,) small site of each site
        if tiled.num_nodes != ed.graph.num_nodes or not torch.allclose(tiled.pos, ed.graph.pos):
            raise ValueError(f"FoldedED: the sites of {ed.graph.describe()} are not numbered as a lattice "
                             "builder numbers them")
        first = torch.empty(graph.num_nodes, dtype=torch.long)
        first[self.tile] = torch.arange(ed.graph.num_nodes)
        self.first = first  # (n,) a site of each small site

    @property
    def num_sites(self) -> int:
        return self.graph.num_nodes

    @property
    def solver(self) -> str:
        return f"{self.ed.solver} (solved as {self.small.solver} on {self.small.graph.describe()})"

    def parameters(self) -> dict:
        return self.ed.parameters()

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_el, B) of the large lattice, as ``ed.energy_and_field``.

        Shapes:
            spins: (N, 3) or (B, N, 3); energy () or (B,), field like spins.
        """
        spins = check_spins(spins, self.graph.num_nodes)
        folded = spins[..., self.first, :]
        if not torch.allclose(folded[..., self.tile, :], spins, rtol=0.0, atol=1e-9):
            raise ValueError(f"FoldedED: a configuration does not repeat {self.small.graph.describe()}")
        energy, field = self.small.energy_and_field(folded)
        return energy * (self.graph.num_nodes // self.small.graph.num_nodes), field[..., self.tile, :]

"""IFNN: the invariant-descriptor fully connected baseline (Zhang and Chern, PRL 2021).

For each site r, the descriptor lists

* bond variables S_j . S_k for the pairs (j, k) of sites within ``cutoff`` of r (r included)
  that are themselves no further apart than ``cutoff``, and
* scalar chiralities S_r . (S_j x S_k) of the triangles (r, j, k) through r whose sides are all
  at most ``triangle_cutoff``, oriented counter-clockwise;

an MLP (ReLU; Zhang and Chern's widths 1024-512-256-128-64) maps it to the site energy, and
E = sum of site energies, B = -dE/dS by autograd. The descriptors are invariant under global spin
rotations by construction, but not under lattice rotations (their ordering follows the offsets).

The neighbourhoods come from the graph's geometry: a lattice built from a
:class:`~klmgraph.BravaisLattice` with periodic boundaries, any basis (one MLP per sublattice).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["IFNN", "ifnn_descriptor_geometry"]


def _sublattices(description: dict) -> int:
    if "basis" not in (description or {}) or not all(description.get("periodic", [False])):
        raise ValueError("the IFNN needs a periodic lattice built from a BravaisLattice (its neighbourhoods "
                         "come from translation symmetry); this graph is not one")
    return len(description["basis"])


def ifnn_descriptor_geometry(description: dict, cutoff: float, triangle_cutoff: float):
    """Neighbourhood offsets, pairs and triangles of each sublattice.

    Returns:
        list over sublattices of dicts with ``offsets`` (M, 3) Cartesian offsets of the
        neighbourhood (row 0 = the centre), ``pairs`` (P, 2) and ``triangles`` (T, 2) index
        arrays into the offsets (triangles through the centre, counter-clockwise).
    """
    from ..lattice import lattice_from_description

    lattice = lattice_from_description(description)
    vectors = np.pad(np.asarray(lattice.vectors), ((0, 0), (0, 3 - len(lattice.vectors[0]))))
    basis = np.pad(np.asarray(lattice.basis), ((0, 0), (0, 3 - len(lattice.basis[0]))))
    reach = int(math.ceil(cutoff / min(np.linalg.norm(v) for v in vectors))) + 1
    cells = np.array(np.meshgrid(*[np.arange(-reach, reach + 1)] * lattice.dim, indexing="ij")).reshape(lattice.dim, -1).T
    images = (cells @ vectors)[:, None, :] + basis[None]  # (cells, nb, 3)
    images = images.reshape(-1, 3)
    geometry = []
    for b in range(len(basis)):
        rel = images - basis[b]
        dist = np.linalg.norm(rel, axis=1)
        keep = dist <= cutoff + 1e-9
        rel, dist = rel[keep], dist[keep]
        order = np.lexsort((np.arctan2(rel[:, 1], rel[:, 0]), np.round(dist, 9)))  # centre first
        offsets = rel[order]
        sep = np.linalg.norm(offsets[:, None] - offsets[None], axis=-1)
        j, k = np.nonzero(np.triu(sep <= cutoff + 1e-9, 1))
        pairs = np.stack([j, k], 1)
        triangles = []
        for j in range(1, len(offsets)):
            for k in range(j + 1, len(offsets)):
                if max(np.linalg.norm(offsets[j]), np.linalg.norm(offsets[k]), sep[j, k]) <= triangle_cutoff + 1e-9:
                    ccw = np.cross(offsets[j], offsets[k])[2] > 0
                    triangles.append((j, k) if ccw else (k, j))
        geometry.append({"offsets": offsets, "pairs": pairs, "triangles": np.asarray(triangles, dtype=np.int64).reshape(-1, 2)})
    return geometry


class _NeighbourTables:
    """Index tables of one graph: for each sublattice, its sites (S,) and their neighbourhood (S, M)."""

    def __init__(self, sites: list[torch.Tensor], neighbourhoods: list[torch.Tensor]):
        self.sites, self.neighbourhoods = sites, neighbourhoods

    def to(self, device) -> "_NeighbourTables":
        return _NeighbourTables([s.to(device) for s in self.sites], [n.to(device) for n in self.neighbourhoods])


class IFNN(nn.Module):
    """Invariant-descriptor MLP for site energies (the baseline of Miyazaki 2023, Table 1).

    Args:
        description: lattice description (``graph.description``) of a periodic Bravais lattice.
        cutoff: neighbourhood radius (Zhang and Chern: sqrt(26) lattice constants on the square lattice).
        triangle_cutoff: longest side of a chirality triangle (default: sqrt(2) nearest-neighbour
            distances, i.e. the half plaquettes of the square lattice).
        hidden: widths of the hidden layers.
        num_classes, edge_classes: the graph's neighbour classes (checked when binding).
        hamiltonian: Hamiltonian parameters, kept with the model.

    Shapes:
        energy: spins (..., N, 3) -> (...); forward(data): data.spins (N_total, 3) -> (num_graphs,)
    """

    def __init__(self, description: dict, cutoff: float = math.sqrt(26), triangle_cutoff: float | None = None,
                 hidden: Sequence[int] = (1024, 512, 256, 128, 64), num_classes: int | None = None,
                 edge_classes: Sequence[str] | None = None, hamiltonian: dict | None = None):
        super().__init__()
        num_basis = _sublattices(description)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden widths must be positive, got {hidden}")
        if triangle_cutoff is None:
            from ..lattice import lattice_from_description

            lattice = lattice_from_description(description)
            nn_distance = min(float(np.linalg.norm(np.asarray(h.offset) @ np.asarray(lattice.vectors)
                                                   + np.asarray(lattice.basis[h.j]) - np.asarray(lattice.basis[h.i])))
                              for h in lattice.hoppings)
            triangle_cutoff = math.sqrt(2) * nn_distance
        self.lattice = dict(description)
        self.hparams = {"cutoff": float(cutoff), "triangle_cutoff": float(triangle_cutoff), "hidden": hidden}
        self.num_classes = num_classes
        self.edge_classes = None if edge_classes is None else list(edge_classes)
        self.hamiltonian = hamiltonian
        self.geometry = ifnn_descriptor_geometry(description, cutoff, triangle_cutoff)
        for b, geo in enumerate(self.geometry):
            self.register_buffer(f"pairs_{b}", torch.as_tensor(geo["pairs"]), persistent=False)
            self.register_buffer(f"triangles_{b}", torch.as_tensor(geo["triangles"]), persistent=False)
        self.mlps = nn.ModuleList()
        for geo in self.geometry:
            width = len(geo["pairs"]) + len(geo["triangles"])
            layers, previous = [], width
            for h in hidden:
                layers += [nn.Linear(previous, h), nn.ReLU()]
                previous = h
            layers.append(nn.Linear(previous, 1))
            self.mlps.append(nn.Sequential(*layers))
        self._tables = {}
        self.num_basis = num_basis

    @classmethod
    def for_graph(cls, graph, hamiltonian: dict | None = None, **hparams) -> "IFNN":
        return cls(graph.description, num_classes=graph.num_edge_types, edge_classes=graph.edge_classes,
                   hamiltonian=hamiltonian, **hparams)

    @property
    def config(self) -> dict:
        return {**self.hparams, "description": self.lattice, "num_classes": self.num_classes,
                "edge_classes": self.edge_classes, "hamiltonian": self.hamiltonian}

    def save(self, path):
        """Write configuration (JSON) and weights; read back with :func:`klmgraph.load_model`."""
        from ..io import save_model

        return save_model(self, path)

    def bind(self, graph):
        """A force provider ``energy_and_field(spins)`` of this model on ``graph``."""
        from .ecnn import BoundModel

        return BoundModel(self, graph)

    @property
    def num_descriptors(self) -> list[int]:
        return [len(g["pairs"]) + len(g["triangles"]) for g in self.geometry]

    def prepare(self, graph) -> _NeighbourTables:
        """Neighbourhood index tables of ``graph`` (a lattice of this model's kind, any size)."""
        from ..lattice import _match_sites, _periodic_dims

        from ..io import check_graph

        # the description's JSON names lattice and size; checking and building happen once per graph
        key = (graph.num_nodes, graph.description_json)
        if key not in self._tables:
            check_graph(self, graph)
            pos = graph.pos.numpy()
            periodic = _periodic_dims(graph)
            sites, neighbourhoods = [], []
            for b, geo in enumerate(self.geometry):
                members = np.arange(b, graph.num_nodes, self.num_basis)
                table = []
                for offset in geo["offsets"]:
                    found = _match_sites(graph, pos[members] + offset, periodic)
                    if found is None:
                        raise ValueError(f"the lattice {graph.describe()} is too small for the IFNN cutoff "
                                         f"{self.hparams['cutoff']:.3g}")
                    table.append(found)
                table = np.stack(table, 1)  # (S, M)
                if any(len(set(row)) < len(row) for row in table[:1]):
                    raise ValueError(f"the lattice {graph.describe()} is too small for the IFNN cutoff "
                                     f"{self.hparams['cutoff']:.3g}: a neighbourhood wraps onto itself")
                sites.append(torch.as_tensor(members))
                neighbourhoods.append(torch.as_tensor(table))
            self._tables[key] = _NeighbourTables(sites, neighbourhoods)
        return self._tables[key]

    def descriptors(self, spins: torch.Tensor, tables: _NeighbourTables, sublattice: int) -> torch.Tensor:
        """Bond variables and chiralities of one sublattice's sites.

        Shapes:
            spins: (..., N, 3) -> (..., S, P + T)
        """
        hood = spins[..., tables.neighbourhoods[sublattice], :]  # (..., S, M, 3)
        pairs = getattr(self, f"pairs_{sublattice}")
        triangles = getattr(self, f"triangles_{sublattice}")
        bonds = (hood[..., pairs[:, 0], :] * hood[..., pairs[:, 1], :]).sum(-1)
        centre = hood[..., :1, :]
        chirality = (centre * torch.linalg.cross(hood[..., triangles[:, 0], :], hood[..., triangles[:, 1], :])).sum(-1)
        return torch.cat([bonds, chirality], dim=-1)

    def site_energies(self, spins: torch.Tensor, tables: _NeighbourTables) -> torch.Tensor:
        """Shapes: spins (..., N, 3) -> (..., N)."""
        out = spins.new_zeros(spins.shape[:-1])
        for b, mlp in enumerate(self.mlps):
            out[..., tables.sites[b]] = mlp(self.descriptors(spins, tables, b))[..., 0]
        return out

    def energy(self, spins: torch.Tensor, tables: _NeighbourTables) -> torch.Tensor:
        return self.site_energies(spins, tables).sum(-1)

    def forward(self, data) -> torch.Tensor:
        """Energy per configuration of a PyG Data/Batch of configurations on one lattice.

        Shapes:
            data.spins: (N_total, 3) -> (num_graphs,)
        """
        num_graphs = int(getattr(data, "num_graphs", 1))
        spins = data.spins.reshape(num_graphs, -1, 3)
        graph = data.get_example(0) if num_graphs > 1 or hasattr(data, "batch") and data.batch is not None else data
        tables = self.prepare(graph).to(spins.device)
        return self.energy(spins, tables)

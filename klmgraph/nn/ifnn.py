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

from ..domains import hop_distances
from ..lattice import lattice_from_description, match_sites, periodic_dims
from .binding import BoundModel, check_graph
from .modelfile import save_model

__all__ = ["IFNN", "ifnn_descriptor_geometry"]


def _sublattices(description: dict) -> int:
    if "basis" not in (description or {}) or not all(description.get("periodic", [False])):
        raise ValueError("the IFNN needs a periodic lattice built from a BravaisLattice (its neighbourhoods "
                         "come from translation symmetry); this graph is not one")
    return len(description["basis"])


def ifnn_descriptor_geometry(description: dict, cutoff: float, triangle_cutoff: float, bonds: str | float = "all"):
    """Neighbourhood offsets, pairs and triangles of each sublattice.

    ``bonds="all"`` takes every pair of sites of the neighbourhood (centre included) no further
    apart than ``cutoff``; ``bonds="centre"`` only the pairs of the centre with its neighbours;
    a number r takes the centre's pairs and every pair of sites within r of the centre.

    Returns:
        list over sublattices of dicts with ``offsets`` (M, 3) Cartesian offsets of the
        neighbourhood (row 0 = the centre) and their ``sublattice`` (M,), ``pairs`` (P, 2) and
        ``triangles`` (T, 2) index arrays into the offsets (triangles through the centre,
        counter-clockwise), and the bond classes: ``displacements`` (D_b, 3) of the bonds that
        start on this sublattice, and for each pair ``bond_first`` (P,) and ``bond_class`` (P,).
    """
    lattice = lattice_from_description(description)
    vectors = np.pad(np.asarray(lattice.vectors), ((0, 0), (0, 3 - len(lattice.vectors[0]))))
    basis = np.pad(np.asarray(lattice.basis), ((0, 0), (0, 3 - len(lattice.basis[0]))))
    reach = int(math.ceil(cutoff / min(np.linalg.norm(v) for v in vectors))) + 1
    cells = np.array(np.meshgrid(*[np.arange(-reach, reach + 1)] * lattice.dim, indexing="ij")).reshape(lattice.dim, -1).T
    images = (cells @ vectors)[:, None, :] + basis[None]  # (cells, nb, 3)
    images = images.reshape(-1, 3)
    image_sublattice = np.tile(np.arange(len(basis)), len(cells))
    geometry = []
    for b in range(len(basis)):
        rel = images - basis[b]
        dist = np.linalg.norm(rel, axis=1)
        keep = dist <= cutoff + 1e-9
        rel, dist, sub = rel[keep], dist[keep], image_sublattice[keep]
        order = np.lexsort((np.arctan2(rel[:, 1], rel[:, 0]), np.round(dist, 9)))  # centre first
        offsets, sublattice = rel[order], sub[order]
        sep = np.linalg.norm(offsets[:, None] - offsets[None], axis=-1)
        j, k = np.nonzero(np.triu(sep <= cutoff + 1e-9, 1))
        if bonds != "all":
            radius = 0.0 if bonds == "centre" else float(bonds)
            inner = np.linalg.norm(offsets, axis=1) <= radius + 1e-9
            keep = (j == 0) | (inner[j] & inner[k])
            j, k = j[keep], k[keep]
        pairs = np.stack([j, k], 1)
        triangles = []
        for j in range(1, len(offsets)):
            for k in range(j + 1, len(offsets)):
                if max(np.linalg.norm(offsets[j]), np.linalg.norm(offsets[k]), sep[j, k]) <= triangle_cutoff + 1e-9:
                    ccw = np.cross(offsets[j], offsets[k])[2] > 0
                    triangles.append((j, k) if ccw else (k, j))
        geometry.append({"offsets": offsets, "sublattice": sublattice, "pairs": pairs,
                         "triangles": np.asarray(triangles, dtype=np.int64).reshape(-1, 2)})
    _assign_bond_classes(geometry, len(basis))
    return geometry


def _assign_bond_classes(geometry: list[dict], num_basis: int) -> None:
    """Name each pair's bond by (sublattice of one end, displacement to the other).

    By translation symmetry the bond variable of a pair only depends on where its first end sits
    and on the displacement, so every site's descriptor can be gathered from one table of bonds
    per (site, displacement class) instead of being recomputed from spin vectors site by site.
    Of the two orientations of a bond the lexicographically smaller (sublattice, displacement)
    is kept, so S_u . S_v and S_v . S_u share one class. Adds ``bond_first`` (P,) (the offset
    the bond starts from) and ``bond_class`` (P,) to each sublattice's dict, and the classes
    that start on sublattice b as ``displacements`` (D_b, 3) to ``geometry[b]``.
    """
    classes = [dict() for _ in range(num_basis)]
    for geo in geometry:
        offsets, sub = geo["offsets"], geo["sublattice"]
        first, slot = [], []
        for j, k in geo["pairs"]:
            # rounded keys name a class; the exact vector is kept to find the partner sites
            forward = (int(sub[j]), tuple(np.round(offsets[k] - offsets[j], 6) + 0.0))
            backward = (int(sub[k]), tuple(np.round(offsets[j] - offsets[k], 6) + 0.0))
            start, end = (j, k) if forward <= backward else (k, j)
            c, key = min(forward, backward)
            entry = classes[c].setdefault(key, (len(classes[c]), offsets[end] - offsets[start]))
            slot.append(entry[0])
            first.append(start)
        geo["bond_first"] = np.asarray(first, dtype=np.int64)
        geo["bond_class"] = np.asarray(slot, dtype=np.int64)
    for b, geo in enumerate(geometry):
        geo["displacements"] = np.array([vector for _, vector in classes[b].values()], dtype=float).reshape(-1, 3)


class _NeighbourTables:
    """Index tables of one graph, per sublattice: its sites (S,), their neighbourhoods (S, M)
    and the partners (S, D) of the bonds that start on them (one column per bond class)."""

    def __init__(self, sites: list[torch.Tensor], neighbourhoods: list[torch.Tensor], partners: list[torch.Tensor]):
        self.sites, self.neighbourhoods, self.partners = sites, neighbourhoods, partners
        self.bond_slots = max(p.shape[1] for p in partners)
        self._copies = {}

    @property
    def device(self) -> torch.device:
        return self.sites[0].device

    def to(self, device) -> "_NeighbourTables":
        """These tables on ``device``: ``self`` if they are there already, else a copy (as
        ``Tensor.to`` and :meth:`TypedNeighbours.to`), made once per device and kept."""
        device = torch.device(device)
        if self.device.type == device.type and device.index in (None, self.device.index):
            return self
        key = str(device)
        if key not in self._copies:
            self._copies[key] = _NeighbourTables(*[[t.to(device) for t in tables]
                                                   for tables in (self.sites, self.neighbourhoods, self.partners)])
        return self._copies[key]


class IFNN(nn.Module):
    """Invariant-descriptor MLP for site energies (the baseline of Miyazaki 2023, Table 1).

    Args:
        lattice: lattice description (``graph.description``) of a periodic Bravais lattice
            (the key ECNN uses too; ``description``, its name before, is still accepted).
        cutoff: neighbourhood radius (Zhang and Chern: sqrt(26) lattice constants on the square lattice).
        triangle_cutoff: longest side of a chirality triangle (default: sqrt(2) nearest-neighbour
            distances, i.e. the half plaquettes of the square lattice).
        hidden: widths of the hidden layers.
        num_classes, edge_classes: the graph's neighbour classes (checked when binding).
        hamiltonian: Hamiltonian parameters, kept with the model.
        bonds: "all" (default): the bond variables of every pair of sites of the neighbourhood
            no further apart than ``cutoff`` (about 2300 per site on the square lattice at
            sqrt(26)); "centre": only S_r . S_j of the centre with each neighbour (88 there); a
            radius r: the centre's bonds and those of every pair within r of the centre.

    Shapes:
        energy: spins (..., N, 3) -> (...); forward(data): data.spins (N_total, 3) -> (num_graphs,)
    """

    def __init__(self, lattice: dict | None = None, cutoff: float = math.sqrt(26), triangle_cutoff: float | None = None,
                 hidden: Sequence[int] = (1024, 512, 256, 128, 64), num_classes: int | None = None,
                 edge_classes: Sequence[str] | None = None, hamiltonian: dict | None = None,
                 bonds: str | float = "all", description: dict | None = None):
        super().__init__()
        if (lattice is None) == (description is None):
            raise ValueError("give the lattice description as lattice= (description= is its old name), once")
        description = lattice if lattice is not None else description
        num_basis = _sublattices(description)
        if bonds not in ("all", "centre") and not (isinstance(bonds, (int, float)) and not isinstance(bonds, bool)
                                                    and 0 <= bonds <= cutoff):
            raise ValueError(f'bonds must be "all" (every pair of the neighbourhood), "centre" (the centre '
                             f'with each neighbour) or a radius in [0, cutoff], got {bonds!r}')
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden widths must be positive, got {hidden}")
        if triangle_cutoff is None:
            lattice = lattice_from_description(description)
            nn_distance = min(float(np.linalg.norm(np.asarray(h.offset) @ np.asarray(lattice.vectors)
                                                   + np.asarray(lattice.basis[h.j]) - np.asarray(lattice.basis[h.i])))
                              for h in lattice.hoppings)
            triangle_cutoff = math.sqrt(2) * nn_distance
        self.lattice = dict(description)
        self.hparams = {"cutoff": float(cutoff), "triangle_cutoff": float(triangle_cutoff), "hidden": hidden,
                        "bonds": bonds}
        self.num_classes = num_classes
        self.edge_classes = None if edge_classes is None else list(edge_classes)
        self.hamiltonian = hamiltonian
        self.geometry = ifnn_descriptor_geometry(description, cutoff, triangle_cutoff, bonds)
        for b, geo in enumerate(self.geometry):
            self.register_buffer(f"bond_first_{b}", torch.as_tensor(geo["bond_first"]), persistent=False)
            self.register_buffer(f"bond_class_{b}", torch.as_tensor(geo["bond_class"]), persistent=False)
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
        return {**self.hparams, "lattice": self.lattice, "num_classes": self.num_classes,
                "edge_classes": self.edge_classes, "hamiltonian": self.hamiltonian}

    def save(self, path):
        """Write configuration (JSON) and weights; read back with :func:`klmgraph.load_model`."""
        return save_model(self, path)

    def bind(self, graph, deterministic: bool = False, chunk_sites: int | str | None = None,
             halo_hops: int | None = None):
        """A force provider ``energy_and_field(spins)`` of this model on ``graph`` (``chunk_sites``:
        evaluate in chunks with halos; see :class:`~klmgraph.nn.BoundModel`)."""
        return BoundModel(self, graph, deterministic, chunk_sites, halo_hops)

    def receptive_hops(self, graph) -> int:
        """Hops over ``graph``'s edges (breadth-first search) from a site to the farthest site
        of its descriptor neighbourhood, the largest over the sublattices (by translation
        symmetry the same for every site of a sublattice)."""
        tables = self.prepare(graph).to("cpu")
        return max(hop_distances(graph, int(sites[0]), hood[0])
                   for sites, hood in zip(tables.sites, tables.neighbourhoods))

    def prepare_domain(self, graph, sites: torch.Tensor, deterministic: bool = False) -> _NeighbourTables:
        """Tables of the sites ``sites`` of ``graph`` (local index i = global ``sites[i]``), cut
        from the full graph's: the descriptors are right for every local site whose
        neighbourhood is local (the owned sites of a domain whose halo covers
        :meth:`receptive_hops`); entries that leave the domain point at the site itself.

        Shapes:
            sites: (n_local,) int64 global indices.
        """
        full = self.prepare(graph, deterministic).to("cpu")
        sites = torch.as_tensor(sites).cpu()
        local = torch.full((graph.num_nodes,), -1, dtype=torch.long)
        local[sites] = torch.arange(len(sites))
        members, hoods, partners = [], [], []
        for m, hood, partner in zip(full.sites, full.neighbourhoods, full.partners):
            mine = local[m]
            keep = mine >= 0
            mine = mine[keep]
            members.append(mine)
            for table, out in ((hood, hoods), (partner, partners)):
                t = local[table[keep]]
                out.append(torch.where(t >= 0, t, mine[:, None]))
        return _NeighbourTables(members, hoods, partners).to(graph.pos.device)

    @property
    def num_descriptors(self) -> list[int]:
        return [len(g["pairs"]) + len(g["triangles"]) for g in self.geometry]

    def prepare(self, graph, deterministic: bool = False) -> _NeighbourTables:
        """Neighbourhood index tables of ``graph`` (a lattice of this model's kind, any size),
        on the graph's device.

        Set-up code, run once per graph (the tables are kept per lattice and size, and
        :meth:`_NeighbourTables.to` keeps one copy per device): the geometry is matched on the
        host wherever the graph lives.
        """
        if deterministic:
            # the backward of its descriptor gathers is an index_put with accumulation (atomic on
            # a GPU); a gather-based backward as the ECNN's is not written yet
            raise ValueError("the IFNN has no deterministic path yet: use the ECNN, or deterministic=False")
        # the description's JSON names lattice and size; checking and building happen once per graph
        key = (graph.num_nodes, graph.description_json)
        if key not in self._tables:
            check_graph(self, graph)
            pos = graph.pos.detach().cpu().numpy()
            periodic = periodic_dims(graph)
            too_small = f"the lattice {graph.describe()} is too small for the IFNN cutoff {self.hparams['cutoff']:.3g}"

            def sites_at(members, displacements):
                table = np.zeros((len(members), len(displacements)), dtype=np.int64)
                for column, offset in enumerate(displacements):
                    found = match_sites(graph, pos[members] + offset, periodic)
                    if found is None:
                        raise ValueError(too_small)
                    table[:, column] = found
                return table

            sites, neighbourhoods, partners = [], [], []
            for b, geo in enumerate(self.geometry):
                members = np.arange(b, graph.num_nodes, self.num_basis)
                table = sites_at(members, geo["offsets"])  # (S, M)
                if any(len(set(row)) < len(row) for row in table[:1]):
                    raise ValueError(f"{too_small}: a neighbourhood wraps onto itself")
                sites.append(torch.as_tensor(members))
                neighbourhoods.append(torch.as_tensor(table))
                partners.append(torch.as_tensor(sites_at(members, geo["displacements"])))
            self._tables[key] = _NeighbourTables(sites, neighbourhoods, partners)
        return self._tables[key].to(graph.pos.device)

    def bond_table(self, spins: torch.Tensor, tables: _NeighbourTables) -> torch.Tensor:
        """S_u . S_v of every site u and each bond class starting on its sublattice.

        Shapes:
            spins: (..., N, 3) -> (..., N, D_max) (columns beyond a sublattice's classes are 0)
        """
        bonds = spins.new_zeros(spins.shape[:-1] + (tables.bond_slots,))
        for members, partners in zip(tables.sites, tables.partners):
            values = (spins[..., members, None, :] * spins[..., partners, :]).sum(-1)
            bonds[..., members, : partners.shape[1]] = values
        return bonds

    def descriptors(self, spins: torch.Tensor, tables: _NeighbourTables, sublattice: int,
                    bonds: torch.Tensor | None = None) -> torch.Tensor:
        """Bond variables and chiralities of one sublattice's sites.

        Args:
            bonds: :meth:`bond_table` of ``spins``, if already computed.

        Shapes:
            spins: (..., N, 3) -> (..., S, P + T)
        """
        if bonds is None:
            bonds = self.bond_table(spins, tables)
        hood = tables.neighbourhoods[sublattice]
        first = hood[:, getattr(self, f"bond_first_{sublattice}")]  # (S, P) sites the bonds start on
        flat = first * tables.bond_slots + getattr(self, f"bond_class_{sublattice}")
        pair_bonds = bonds.flatten(-2)[..., flat]
        triangles = getattr(self, f"triangles_{sublattice}")
        centre = spins[..., tables.sites[sublattice], None, :]
        chirality = (centre * torch.linalg.cross(spins[..., hood[:, triangles[:, 0]], :],
                                                 spins[..., hood[:, triangles[:, 1]], :])).sum(-1)
        return torch.cat([pair_bonds, chirality], dim=-1)

    def site_energies(self, spins: torch.Tensor, tables: _NeighbourTables) -> torch.Tensor:
        """Shapes: spins (..., N, 3) -> (..., N)."""
        out = spins.new_zeros(spins.shape[:-1])
        bonds = self.bond_table(spins, tables)
        for b, mlp in enumerate(self.mlps):
            out[..., tables.sites[b]] = mlp(self.descriptors(spins, tables, b, bonds))[..., 0]
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

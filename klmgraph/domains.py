"""Spatial domains of a graph with halos: the one construction behind chunked evaluation
(:meth:`klmgraph.ECNN.bind` with ``chunk_sites``) and the distributed runner
(:mod:`klmgraph.distributed`).

A domain *owns* a set of sites and keeps a *halo*: every site within ``halo_hops`` hops of an
owned site, walking the graph's edges from centre to neighbour (the direction in which a site
energy reads its neighbours). A model whose site energy e_r depends only on the spins within R
hops of r (its receptive field: R message-passing layers, or the hops that cover an IFNN's
descriptor radius) computes the site energies of the owned sites exactly from the owned and
halo spins when halo_hops >= R; their gradient lands on owned and halo sites, and the halo
parts are added to the sites' owners (LAMMPS' ghost atoms with reverse communication).

Partitions: a grid of blocks of unit cells for lattices built from a
:class:`~klmgraph.BravaisLattice` (the factorisation of the number of parts with the smallest
block surface), and recursive coordinate bisection of the site positions for any other graph.

Shapes: ``owner`` (N,) int64 part of each site; a domain's ``sites`` (n_owned + n_halo,) global
indices, owned first.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Domain", "LocalGraph", "partition", "decompose", "domain_of", "split_domain", "hop_distances", "hop_distance",
           "check_halo"]


class _Sources:
    """Sources of the edges into each site (CSR over the edge targets), for breadth-first search
    along the direction in which site energies read their neighbours."""

    def __init__(self, graph):
        src, dst = graph.edge_index.detach().cpu().long()
        self.num_nodes = int(graph.num_nodes)
        order = torch.argsort(dst, stable=True)
        self.src, self.edges = src[order], order
        counts = torch.bincount(dst, minlength=self.num_nodes)
        self.ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def edges_into(self, sites: torch.Tensor) -> torch.Tensor:
        """Positions (into the dst-sorted order) of every edge whose target is in ``sites``."""
        start, count = self.ptr[sites], self.ptr[sites + 1] - self.ptr[sites]
        total = int(count.sum())
        if total == 0:
            return torch.zeros(0, dtype=torch.long)
        base = torch.repeat_interleave(start - (count.cumsum(0) - count), count)
        return base + torch.arange(total)

    def ball(self, seeds: torch.Tensor, hops: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sites within ``hops`` of ``seeds`` but not in them, their hop distance), sorted by site."""
        seen = torch.zeros(self.num_nodes, dtype=torch.bool)
        seen[seeds] = True
        frontier, found, distance = seeds, [], []
        for h in range(1, hops + 1):
            if not len(frontier):
                break
            new = torch.unique(self.src[self.edges_into(frontier)])
            new = new[~seen[new]]
            seen[new] = True
            found.append(new)
            distance.append(torch.full_like(new, h))
            frontier = new
        if not found:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        sites, distance = torch.cat(found), torch.cat(distance)
        order = torch.argsort(sites)
        return sites[order], distance[order]


def hop_distance(graph, site: int) -> torch.Tensor:
    """(N,) number of hops from ``site`` along the graph's edges; -1 where it cannot be reached.

    Each convolution of a message-passing network reaches one hop: an :class:`~klmgraph.ECNN`
    with K interaction blocks and its output convolution gives each site an energy that depends
    on the spins within K + 1 hops, so the field at ``site`` depends on those within 2 (K + 1)
    (the published models, K = 4: 10 hops).
    """
    if not 0 <= site < graph.num_nodes:
        raise ValueError(f"site must lie in [0, {graph.num_nodes}), got {site}")
    # along the edges site energies read, as the domain decomposition's halos
    sites, distance = _Sources(graph).ball(torch.tensor([site]), graph.num_nodes)
    hops = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    hops[site] = 0
    hops[sites] = distance
    return hops


def hop_distances(graph, centre: int, targets) -> int:
    """Hops from ``centre`` to the farthest of ``targets`` (breadth-first search over the
    graph's edges, centre to neighbour).

    Raises:
        ValueError: if a target cannot be reached.
    """
    targets = torch.as_tensor(targets, dtype=torch.long).flatten()
    wanted = torch.zeros(graph.num_nodes, dtype=torch.bool)
    wanted[targets] = True
    wanted[centre] = False
    sources = _Sources(graph)
    seen = torch.zeros(graph.num_nodes, dtype=torch.bool)
    seen[centre] = True
    frontier, hops = torch.tensor([centre]), 0
    while wanted.any():
        new = torch.unique(sources.src[sources.edges_into(frontier)])
        new = new[~seen[new]]
        if not len(new):
            raise ValueError(f"sites {torch.nonzero(wanted)[:, 0][:5].tolist()} cannot be reached from site "
                             f"{centre} along the graph's edges")
        hops += 1
        seen[new] = True
        wanted[new] = False
        frontier = new
    return hops


@dataclass
class LocalGraph:
    """The subgraph on a domain's sites (local index i = global ``sites[i]``): what a model's
    ``prepare`` and :class:`~klmgraph.Heisenberg` read of a graph.

    Attributes:
        edge_index: (2, E_local) local indices, row 0 = source (neighbour), row 1 = target.
        edge_type: (E_local,) neighbour classes of the full graph.
        num_nodes: number of local sites.
        edge_classes: the full graph's class names.
    """

    edge_index: torch.Tensor
    edge_type: torch.Tensor
    num_nodes: int
    edge_classes: list

    @property
    def num_edge_types(self) -> int:
        return len(self.edge_classes)

    def targets_in(self, count: int) -> "LocalGraph":
        """The edges whose target is one of the first ``count`` local sites (the owned ones)."""
        keep = self.edge_index[1] < count
        return LocalGraph(self.edge_index[:, keep], self.edge_type[keep], self.num_nodes, self.edge_classes)


@dataclass
class Domain:
    """Owned sites and halo of one part of a graph.

    Attributes:
        index: the part (process rank, or chunk number).
        owned: (n_owned,) sorted global indices of the owned sites.
        halo: (n_halo,) sorted global indices of the halo sites.
        halo_hops: the halo's width in hops.
        local_graph: the subgraph on ``sites`` (edges with both ends in the domain).
    """

    index: int
    owned: torch.Tensor
    halo: torch.Tensor
    halo_hops: int
    local_graph: LocalGraph

    @property
    def sites(self) -> torch.Tensor:
        """(n_owned + n_halo,) global index of each local site, owned first."""
        return torch.cat([self.owned, self.halo])

    @property
    def num_owned(self) -> int:
        return len(self.owned)

    @property
    def num_local(self) -> int:
        return len(self.owned) + len(self.halo)


def check_halo(halo_hops: int, receptive_hops: int, what: str = "the model") -> None:
    """Refuse a halo narrower than the receptive field (the site energies of owned sites next
    to the domain's edge would read missing spins and be silently wrong)."""
    if int(halo_hops) < int(receptive_hops):
        raise ValueError(f"a halo of {halo_hops} hops is narrower than the receptive field of {what} "
                         f"({receptive_hops} hops): the site energies at the domain's edge would be wrong; "
                         f"use a halo of at least {receptive_hops} hops")


def domain_of(graph, owner: torch.Tensor, index: int, halo_hops: int, extra: torch.Tensor | None = None,
              sources: _Sources | None = None) -> Domain:
    """The domain of part ``index`` of the partition ``owner``, with a halo of ``halo_hops`` hops
    (plus the sites ``extra``, if given, e.g. the corners of triangles an observable needs).

    Shapes:
        owner: (N,) int64; extra: (M,) int64 global indices.
    """
    sources = sources or _Sources(graph)
    owned = torch.nonzero(owner.cpu() == index)[:, 0]
    halo, _ = sources.ball(owned, int(halo_hops))
    if extra is not None and len(extra):
        mask = torch.zeros(graph.num_nodes, dtype=torch.bool)
        mask[halo] = True
        mask[extra.cpu()] = True
        mask[owned] = False
        halo = torch.nonzero(mask)[:, 0]
    sites = torch.cat([owned, halo])
    local = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    local[sites] = torch.arange(len(sites))
    edges = sources.edges[sources.edges_into(sites)]  # original edge ids with a local target
    edges = torch.sort(edges).values  # the full graph's edge order, so sums run in the same order
    src, dst = graph.edge_index.detach().cpu().long()[:, edges]
    keep = local[src] >= 0
    edges = edges[keep]
    edge_index = torch.stack([local[src[keep]], local[dst[keep]]])
    local_graph = LocalGraph(edge_index, graph.edge_type.detach().cpu()[edges], len(sites), list(graph.edge_classes))
    return Domain(int(index), owned, halo, int(halo_hops), local_graph)


def decompose(graph, parts: int, halo_hops: int) -> list[Domain]:
    """Split ``graph`` into ``parts`` domains (:func:`partition`), each with its halo."""
    owner = partition(graph, parts, halo_hops)
    sources = _Sources(graph)
    return [domain_of(graph, owner, k, halo_hops, sources=sources) for k in range(int(owner.max()) + 1)]


def split_domain(graph, domain: Domain, parts: int) -> list[Domain]:
    """Split a domain's owned sites into ``parts`` chunks (coordinate bisection of their
    positions), each with a halo as wide as the domain's, inside the domain's sites: a process of
    a split run evaluates its domain chunk by chunk this way."""
    owner = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    owner[domain.owned] = _bisection(graph.pos.detach().cpu().double().numpy()[domain.owned.numpy()], int(parts))
    sources = _Sources(graph)
    return [domain_of(graph, owner, k, domain.halo_hops, sources=sources) for k in range(int(parts))]


# ----------------------------------------------------------------------------- partitions

def partition(graph, parts: int, halo_hops: int = 1) -> torch.Tensor:
    """Part of each site: blocks of unit cells for a Bravais lattice, recursive coordinate
    bisection of the positions otherwise.

    Args:
        graph: the hopping graph.
        parts: number of parts P >= 1 (at most the number of sites).
        halo_hops: the halo width the blocks are shaped for (the grid of blocks whose halos,
            counted as this many cells on each cut side, hold the fewest cells).

    Returns:
        (N,) int64 in [0, P), every part non-empty.

    Raises:
        ValueError: if P < 1 or P > N.
    """
    n = int(graph.num_nodes)
    if not isinstance(parts, (int, np.integer)) or isinstance(parts, bool) or not 1 <= parts <= n:
        raise ValueError(f"the number of parts must be an integer in [1, {n}] (the number of sites), got {parts!r}")
    parts = int(parts)
    description = graph.description if hasattr(graph, "description_json") else {}
    if parts > 1 and "vectors" in description:
        grid = _block_grid(description["size"], parts, halo_hops)
        if grid is not None:
            return _blocks(description["size"], len(description["basis"]), grid)
    return _bisection(graph.pos.detach().cpu().double().numpy(), parts)


def _block_grid(size, parts: int, halo: int) -> tuple | None:
    """Blocks per lattice direction (p_1 ... p_d, product P, p_k <= L_k) whose halo (``halo``
    cells beyond each cut face) holds the fewest cells; None if P does not factor so."""
    best, best_cost = None, math.inf
    for grid in itertools.product(*[range(1, min(parts, s) + 1) for s in size]):
        if math.prod(grid) != parts:
            continue
        block = [s / p for s, p in zip(size, grid)]
        grown = [b + 2 * max(int(halo), 1) if p > 1 else b for b, p in zip(block, grid)]
        cost = math.prod(grown) - math.prod(block)
        if cost < best_cost:
            best, best_cost = grid, cost
    return best


def _blocks(size, num_basis: int, grid) -> torch.Tensor:
    """Block of each site; site index = (row-major cell index) * num_basis + basis index."""
    cells = np.array(list(itertools.product(*[range(s) for s in size])), dtype=np.int64).reshape(-1, len(size))
    block = np.zeros(len(cells), dtype=np.int64)
    for k, (s, p) in enumerate(zip(size, grid)):
        # uneven splits: the first s % p blocks get one cell more (as numpy.array_split)
        bounds = np.cumsum([s // p + (1 if j < s % p else 0) for j in range(p)])
        block = block * p + np.searchsorted(bounds, cells[:, k], side="right")
    return torch.from_numpy(np.repeat(block, num_basis))


def _bisection(pos: np.ndarray, parts: int) -> torch.Tensor:
    owner = np.zeros(len(pos), dtype=np.int64)

    def split(indices, first, count):
        if count == 1:
            owner[indices] = first
            return
        extent = pos[indices].max(0) - pos[indices].min(0)
        axis = int(np.argmax(extent))
        order = indices[np.argsort(pos[indices, axis], kind="stable")]
        left = count // 2
        cut = int(round(len(indices) * left / count))
        split(order[:cut], first, left)
        split(order[cut:], first + left, count - left)

    split(np.arange(len(pos)), 0, parts)
    return torch.from_numpy(owner)

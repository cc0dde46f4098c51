"""The hopping graph: the one object every part of klmgraph consumes.

A :class:`HoppingGraph` is a :class:`torch_geometric.data.Data` whose edges are the
hoppings of a tight-binding model plus one self loop per site. Its keys:

==================  ===================  ===================================================
key                 shape                meaning
==================  ===================  ===================================================
``edge_index``      (2, E) int64         row 0 = source (the neighbour r'), row 1 = target
                                         (the centre r), PyG's convention
``edge_type``       (E,) int64           neighbour class; 0 is the self loop, then one class
                                         per directed hopping offset (see ``edge_classes``)
``hopping``         (E,) float64/complex t_{r r'}: the Hamiltonian holds -t at [r, r'] =
                                         [target, source]; 0 on self loops unless the graph
                                         carries on-site energies (then -t is the energy)
``edge_vec``        (E, 3) float64       Cartesian r' - r (source minus target), using the
                                         periodic image the bond connects to
``pos``             (N, 3) float64       site positions
``cell``            (3, 3) float64       rows: the supercell vectors (zero rows where a
                                         dimension is absent)
``symmetry_perm``   (G, N) int64         site permutations of the point-group operations
                                         (rotations, then mirrors or inversion) the hoppings
                                         respect; row 0 is the identity. Operation g moves the
                                         spin of site n to site symmetry_perm[g, n] (the spin
                                         vector is not rotated)
``symmetry_rotation`` (G, 3, 3) float64  the Cartesian matrices of those operations
                                         (determinant -1 for the improper ones)
==================  ===================  ===================================================

Python attributes: ``edge_classes`` (list of K class names, index = edge_type) and
``description`` (a JSON-able dict naming the lattice, its size and hoppings; used to check that
data sets and checkpoints belong to the graph they are used with).

Per-configuration attributes added by data sets and models: ``spins`` (N, 3),
``energy`` (1,), ``field`` (N, 3).
"""
from __future__ import annotations

import hashlib
import json
import numbers
from typing import Any

import torch
from torch_geometric.data import Data

__all__ = ["HoppingGraph", "from_networkx", "hermiticity_error", "vector3"]


class HoppingGraph(Data):
    """A tight-binding hopping graph (see the module docstring for its keys).

    Build one with a lattice builder (:func:`klmgraph.square`, :func:`klmgraph.triangular`,
    :meth:`klmgraph.BravaisLattice.graph`) or :func:`klmgraph.from_networkx` rather than by hand.
    """

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs):
        if key in ("cell", "symmetry_rotation"):
            return None  # stacked: (B, 3, 3) and (B, G, 3, 3)
        if key == "symmetry_perm":
            return 1
        return super().__cat_dim__(key, value, *args, **kwargs)

    def __inc__(self, key: str, value: Any, *args, **kwargs):
        if key == "symmetry_perm":
            return self.num_nodes
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def description(self) -> dict:
        """JSON-able description of the lattice (stored as a JSON string: PyG would turn the
        numbers of a dict attribute into tensors when it batches graphs)."""
        return json.loads(self.description_json)

    @description.setter
    def description(self, value: dict) -> None:
        self.description_json = json.dumps(value, sort_keys=True)

    @property
    def num_edge_types(self) -> int:
        """K, the number of neighbour classes including the self loop."""
        return len(self.edge_classes)

    @property
    def is_complex(self) -> bool:
        return bool(torch.is_complex(self.hopping))

    def hopping_matrix(self, device=None) -> torch.Tensor:
        """Dense (N, N) matrix T with T[r, r'] = t_{r r'}; the hopping Hamiltonian is -T."""
        n = self.num_nodes
        t = torch.zeros(n, n, dtype=self.hopping.dtype, device=device)
        src, dst = self.edge_index.to(device)
        t.index_put_((dst, src), self.hopping.to(device), accumulate=True)
        return t

    def same_lattice(self, description: dict) -> bool:
        """Whether ``description`` (e.g. read from a file) names this graph's lattice."""
        return _canonical(description) == _canonical(self.description)

    def describe(self) -> str:
        """A one-line human-readable summary."""
        d = self.description
        size = "x".join(str(s) for s in d.get("size", [self.num_nodes]))
        return (f"{d.get('lattice', 'graph')} {size}: {self.num_nodes} sites, "
                f"{self.num_edges} edges, {self.num_edge_types} neighbour classes")


def _canonical(description: dict) -> str:
    return json.dumps(description, sort_keys=True)


# description entries that may differ between two graphs of one lattice
SIZE_KEYS = ("size", "periodic", "nodes", "edges")


def _numbers_as_float(x):
    # t1=1 and t1=1.0 build the same lattice; JSON would tell them apart
    if isinstance(x, dict):
        return {k: _numbers_as_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_numbers_as_float(v) for v in x]
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return float(x) + 0.0  # + 0.0: -0.0 becomes 0.0
    return x


def lattice_key(description: dict | None) -> str | None:
    """What two graphs of one lattice (any size, boundaries) share: their description without
    :data:`SIZE_KEYS`, numbers compared as numbers (None for None)."""
    if description is None:
        return None
    return json.dumps(_numbers_as_float({k: v for k, v in description.items() if k not in SIZE_KEYS}),
                      sort_keys=True)


def hermiticity_error(graph: HoppingGraph) -> float:
    """max |T - T^dagger| of the graph's hopping matrix (0 for a valid graph)."""
    t = graph.hopping_matrix()
    return float((t - t.conj().T).abs().max()) if t.numel() else 0.0


def from_networkx(G, hopping: str = "t", edge_class: str = "edge_type", pos: str = "pos",
                  displacement: str = "vec", default_hopping: complex | float = 1.0) -> HoppingGraph:
    """Hopping graph of an arbitrary networkx graph.

    A networkx edge (u, v) with attribute ``t`` stands for the term -t c+_u c_v: u is the centre
    and v the neighbour. For an undirected ``nx.Graph`` the reverse term (with conj(t)) is
    added and shares the edge's class. A ``nx.DiGraph`` must list both directions itself,
    with conjugate amplitudes (so it can give them different classes, as a Bravais lattice
    does for +x and -x). A self loop (u, u) sets the on-site energy -t of u.

    Args:
        G: networkx Graph or DiGraph (no multigraphs). Node order is G's order.
        hopping: edge attribute holding t (default_hopping where absent).
        edge_class: edge attribute naming the neighbour class (any hashable); edges without it
            share one class. Classes are numbered 1, 2, ... in order of first appearance.
        pos: node attribute with a 2- or 3-component position (zeros where absent).
        displacement: edge attribute with the Cartesian vector from u to v (for periodic
            graphs, where positions alone do not give the bond's image); default pos[v] - pos[u].
        default_hopping: t of edges without the ``hopping`` attribute.

    Raises:
        ValueError: for a multigraph, an empty graph, or a DiGraph that is not Hermitian.
    """
    import networkx as nx

    if G.is_multigraph():
        raise ValueError("multigraphs are not supported: merge parallel edges into one hopping")
    if G.number_of_nodes() == 0:
        raise ValueError("the graph has no nodes")
    nodes = list(G.nodes)
    index = {u: k for k, u in enumerate(nodes)}
    n = len(nodes)
    positions = torch.zeros(n, 3, dtype=torch.float64)
    for u, p in G.nodes(data=pos):
        if p is not None:
            p = torch.as_tensor(p, dtype=torch.float64).flatten()
            if p.numel() not in (2, 3):
                raise ValueError(f"node {u!r}: position must have 2 or 3 components, got {p.numel()}")
            positions[index[u], : p.numel()] = p

    onsite = torch.zeros(n, dtype=torch.complex128)
    classes, class_of = ["self"], {}
    src, dst, types, amps, vecs = [], [], [], [], []

    def add(u, v, data, t):
        name = data.get(edge_class, None)
        key = "hopping" if name is None else name
        if key not in class_of:
            class_of[key] = len(classes)
            classes.append(str(key))
        vec = data.get(displacement)
        vec = (positions[index[v]] - positions[index[u]]) if vec is None else vector3(vec, f'edge ({u!r}, {v!r}) {displacement}', allow_2d=True)
        src.append(index[v])
        dst.append(index[u])
        types.append(class_of[key])
        amps.append(complex(t))
        vecs.append(vec)

    directed = G.is_directed()
    for u, v, data in G.edges(data=True):
        t = data.get(hopping, default_hopping)
        if u == v:
            onsite[index[u]] = complex(t)
            continue
        add(u, v, data, t)
        if not directed:
            add(v, u, {**data, displacement: None if data.get(displacement) is None
                       else -vector3(data[displacement], displacement, allow_2d=True)}, complex(t).conjugate())
        elif not G.has_edge(v, u):
            raise ValueError(f"directed edge ({u!r}, {v!r}) has no reverse edge; "
                             "the Hamiltonian must be Hermitian (use an undirected graph)")
        elif abs(complex(G.edges[v, u].get(hopping, default_hopping)) - complex(t).conjugate()) > 1e-12:
            raise ValueError(f"edges ({u!r}, {v!r}) and ({v!r}, {u!r}) must carry conjugate hoppings")

    sites = torch.arange(n)
    hop = torch.cat([onsite, torch.tensor(amps, dtype=torch.complex128)])
    if not hop.imag.any():
        hop = hop.real.contiguous()
    graph = HoppingGraph(
        edge_index=torch.stack([torch.cat([sites, torch.tensor(src, dtype=torch.long)]),
                                torch.cat([sites, torch.tensor(dst, dtype=torch.long)])]),
        edge_type=torch.cat([torch.zeros(n, dtype=torch.long), torch.tensor(types, dtype=torch.long)]),
        hopping=hop,
        edge_vec=torch.cat([torch.zeros(n, 3, dtype=torch.float64),
                            torch.stack(vecs) if vecs else torch.zeros(0, 3, dtype=torch.float64)]),
        pos=positions,
        cell=torch.zeros(3, 3, dtype=torch.float64),
        num_nodes=n,
    )
    graph.edge_classes = classes
    graph.description = {
        "lattice": "networkx",
        "size": [n],
        "periodic": [],
        "nodes": n,
        "edges": nx.number_of_edges(G),
        "classes": classes,
        # two different graphs of equal size must not pass for one another
        "fingerprint": hashlib.sha256(b"".join(x.numpy().tobytes() for x in (
            graph.edge_index, graph.edge_type, graph.hopping))).hexdigest()[:16],
    }
    graph.symmetry_perm = sites[None].clone()
    graph.symmetry_rotation = torch.eye(3, dtype=torch.float64)[None]
    return graph


def vector3(value, name: str, allow_2d: bool = False) -> torch.Tensor:
    """A finite Cartesian vector as a float64 (3,) tensor; 2-component input is padded with z = 0
    when ``allow_2d``. Raises ValueError naming ``name`` otherwise."""
    v = torch.as_tensor(value, dtype=torch.float64).flatten()
    sizes = (2, 3) if allow_2d else (3,)
    if v.numel() not in sizes or not torch.isfinite(v).all():
        wanted = "2 or 3 finite components" if allow_2d else "3 finite components"
        raise ValueError(f"{name} must have {wanted}, got {v.tolist()}")
    return torch.nn.functional.pad(v, (0, 3 - v.numel()))

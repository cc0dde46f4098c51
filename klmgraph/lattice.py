"""Lattices with a basis, their hopping graphs, and the site permutations of their symmetries.

A :class:`BravaisLattice` is primitive vectors + basis positions + a hopping list; its
:meth:`~BravaisLattice.graph` builds a :class:`~klmgraph.graph.HoppingGraph` on an
L1 x L2 (x L3) supercell. Site order: n = ((i1 * L2 + i2) * L3 + i3) * num_basis + b, the basis
index innermost, so a 2D Bravais lattice has n = i1 * L2 + i2 (DESIGN.md section 1).

Each hopping (i, j, offset, t) is the term -t c+_{R,i} c_{R+offset,j} of the Hamiltonian; its
Hermitian conjugate is added automatically, so every bond is listed once.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .graph import HoppingGraph

__all__ = [
    "BravaisLattice",
    "Hopping",
    "square",
    "triangular",
    "honeycomb",
    "kagome",
    "cubic",
    "site_permutation",
    "lattice_from_description",
    "graph_from_description",
]

SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class Hopping:
    """One bond: the term -t c+_{R,i} c_{R+offset,j} (its Hermitian conjugate is implied).

    Args:
        i: sublattice of the centre site (R, i).
        j: sublattice of the neighbour (R + offset, j).
        offset: integer lattice offset of the neighbour's cell, one entry per dimension.
        t: hopping amplitude (real or complex).
    """

    i: int
    j: int
    offset: tuple[int, ...]
    t: complex | float

    def reverse(self) -> "Hopping":
        t = self.t.conjugate() if isinstance(self.t, complex) else self.t
        return Hopping(self.j, self.i, tuple(-d for d in self.offset), t)

    def name(self, num_basis: int) -> str:
        off = "(" + ", ".join(str(d) for d in self.offset) + ")"
        return off if num_basis == 1 else f"{self.i}->{self.j} {off}"


@dataclass(frozen=True)
class BravaisLattice:
    """Primitive vectors, basis and hoppings of a lattice in 1 to 3 dimensions.

    Args:
        vectors: (d, 2 or 3) primitive vectors a1..ad (Cartesian).
        basis: (num_basis, 2 or 3) Cartesian positions of the basis sites in the unit cell.
        hoppings: list of :class:`Hopping` or tuples (i, j, offset, t); each bond once.
            Hoppings with t = 0 are dropped, so the neighbour classes are exactly the bonds.
        name: used in descriptions and error messages.
    """

    vectors: tuple
    basis: tuple
    hoppings: tuple
    name: str = "custom"
    _params: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        vectors = np.atleast_2d(np.asarray(self.vectors, dtype=float))
        basis = np.atleast_2d(np.asarray(self.basis, dtype=float))
        dim = vectors.shape[0]
        if not 1 <= dim <= 3 or vectors.shape[1] not in (2, 3) or vectors.shape[1] < dim:
            raise ValueError(f"vectors must have shape (d, 2 or 3) with d <= 3, got {vectors.shape}")
        if np.linalg.matrix_rank(vectors, tol=1e-10) < dim:
            raise ValueError("the primitive vectors are linearly dependent")
        if basis.shape[1] not in (2, 3):
            raise ValueError(f"basis must have shape (num_basis, 2 or 3), got {basis.shape}")
        hops = []
        for h in self.hoppings:
            h = h if isinstance(h, Hopping) else Hopping(int(h[0]), int(h[1]), tuple(int(x) for x in h[2]), h[3])
            if len(h.offset) != dim:
                raise ValueError(f"hopping {h} has a {len(h.offset)}-dimensional offset; the lattice has {dim} dimensions")
            for s in (h.i, h.j):
                if not 0 <= s < len(basis):
                    raise ValueError(f"hopping {h} names sublattice {s}; the basis has {len(basis)} sites")
            if h.i == h.j and not any(h.offset):
                raise ValueError(f"hopping {h} connects a site to itself: that is an on-site term, not a hopping")
            if h.t != 0:
                hops.append(h)
        object.__setattr__(self, "vectors", tuple(map(tuple, vectors.tolist())))
        object.__setattr__(self, "basis", tuple(map(tuple, basis.tolist())))
        object.__setattr__(self, "hoppings", tuple(hops))

    @property
    def dim(self) -> int:
        return len(self.vectors)

    @property
    def num_basis(self) -> int:
        return len(self.basis)

    def all_hoppings(self) -> list[Hopping]:
        """Every directed hopping: each listed bond followed by its reverse."""
        return [x for h in self.hoppings for x in (h, h.reverse())]

    def check_size(self, size: Sequence[int], periodic: Sequence[bool]) -> None:
        """Raise ValueError if a periodic supercell of ``size`` folds two bonds onto one."""
        directed = self.all_hoppings()
        for ha, hb in itertools.combinations(directed, 2):
            if (ha.i, ha.j, ha.offset) == (hb.i, hb.j, hb.offset):
                raise ValueError(
                    f"hopping offset {ha.offset} from sublattice {ha.i} to {ha.j} is given twice "
                    "(list each bond once; its reverse is added automatically)")
        problem = self._size_problem(size, periodic)
        if problem:
            raise ValueError(f"{problem} on a periodic {_fmt(size)} lattice; the smallest valid "
                             f"size is {self._smallest_size(periodic)}")

    def _size_problem(self, size, periodic) -> str | None:
        directed = self.all_hoppings()
        for h in directed:
            if h.i == h.j and _congruent(h.offset, (0,) * self.dim, size, periodic):
                return f"hopping offset {h.offset} wraps onto the site itself"
        for ha, hb in itertools.combinations(directed, 2):
            if (ha.i, ha.j) == (hb.i, hb.j) and _congruent(ha.offset, hb.offset, size, periodic):
                return (f"hopping offset {ha.offset} duplicates offset {hb.offset} "
                        "(both connect the same pair of sites)")
        return None

    def _smallest_size(self, periodic: Sequence[bool]) -> str:
        """Smallest L such that an L x ... x L supercell holds every bond once."""
        reach = max((abs(d) for h in self.hoppings for d in h.offset), default=0)
        length = next(n for n in range(1, 2 * reach + 2)
                      if self._size_problem([n] * self.dim, periodic) is None)
        return _fmt([length] * self.dim)

    def graph(self, size: Sequence[int], periodic: bool | Sequence[bool] = True,
              symmetries: bool = True) -> HoppingGraph:
        """Build the hopping graph of an L1 x ... x Ld supercell.

        Args:
            size: (L1, ..., Ld) number of cells along each primitive vector.
            periodic: periodic boundaries (True, default), open (False), or one flag per
                dimension. Bonds that leave an open boundary are dropped.
            symmetries: compute ``symmetry_perm`` (the point-group operations, rotations and
                mirrors, that the hoppings respect).
        """
        size = tuple(int(s) for s in np.atleast_1d(size))
        if len(size) != self.dim or any(s < 1 for s in size):
            raise ValueError(f"size must be {self.dim} positive integers, got {size}")
        periodic = tuple([bool(periodic)] * self.dim if np.ndim(periodic) == 0 else map(bool, periodic))
        if len(periodic) != self.dim:
            raise ValueError(f"periodic must be a bool or {self.dim} bools, got {periodic}")
        self.check_size(size, periodic)

        vectors = _pad3(np.asarray(self.vectors))  # (d, 3)
        basis = _pad3(np.asarray(self.basis))  # (nb, 3)
        nb = self.num_basis
        cells = np.array(list(itertools.product(*[range(s) for s in size])), dtype=np.int64).reshape(-1, self.dim)
        num_cells = len(cells)
        n_sites = num_cells * nb
        pos = (cells @ vectors)[:, None, :] + basis[None]  # (cells, nb, 3)
        pos = pos.reshape(n_sites, 3)
        strides = np.cumprod((size[1:] + (1,))[::-1])[::-1]  # row-major cell index

        src_all, dst_all, type_all, t_all, vec_all = [], [], [], [], []
        sites = np.arange(n_sites)
        src_all.append(sites)
        dst_all.append(sites)
        type_all.append(np.zeros(n_sites, dtype=np.int64))
        t_all.append(np.zeros(n_sites, dtype=complex))
        vec_all.append(np.zeros((n_sites, 3)))
        classes = ["self"]
        for h in self.all_hoppings():
            neighbour = cells + np.asarray(h.offset)
            keep = np.ones(num_cells, dtype=bool)
            for k in range(self.dim):
                if periodic[k]:
                    neighbour[:, k] %= size[k]
                else:
                    keep &= (neighbour[:, k] >= 0) & (neighbour[:, k] < size[k])
            centre = (np.nonzero(keep)[0]) * nb + h.i
            other = (neighbour[keep] @ strides) * nb + h.j
            src_all.append(other)
            dst_all.append(centre)
            type_all.append(np.full(len(centre), len(classes), dtype=np.int64))
            t_all.append(np.full(len(centre), complex(h.t)))
            vec = np.asarray(h.offset) @ vectors + basis[h.j] - basis[h.i]
            vec_all.append(np.broadcast_to(vec, (len(centre), 3)))
            classes.append(h.name(nb))

        hopping = np.concatenate(t_all)
        hopping_t = torch.from_numpy(hopping) if np.any(hopping.imag) else torch.from_numpy(hopping.real.copy())
        cell = np.zeros((3, 3))
        cell[: self.dim] = vectors * np.asarray(size)[:, None]
        graph = HoppingGraph(
            edge_index=torch.from_numpy(np.stack([np.concatenate(src_all), np.concatenate(dst_all)])),
            edge_type=torch.from_numpy(np.concatenate(type_all)),
            hopping=hopping_t,
            edge_vec=torch.from_numpy(np.concatenate(vec_all)),
            pos=torch.from_numpy(pos),
            cell=torch.from_numpy(cell),
            num_nodes=n_sites,
        )
        graph.edge_classes = classes
        graph.description = self.description(size, periodic)
        rotations = _point_group_candidates(self.dim) if symmetries else [np.eye(3)]
        if all(periodic):
            perms, mats = [], []
            for rot in rotations:
                perm = self._rotation_permutation(rot, cells, size)
                if perm is not None and not any(np.array_equal(perm, p) for p in perms):
                    perms.append(perm)
                    mats.append(rot)
            graph.symmetry_perm = torch.from_numpy(np.stack(perms))
            graph.symmetry_rotation = torch.from_numpy(np.stack(mats))
        else:
            _attach_symmetries(graph, rotations, periodic_dims=np.array(periodic))
        return graph

    def _rotation_permutation(self, rot: np.ndarray, cells: np.ndarray, size) -> np.ndarray | None:
        """Site permutation of a rotation about the origin of a periodic supercell, computed in
        integer cell coordinates; None if the rotation is no symmetry of lattice and hoppings."""
        vectors = _pad3(np.asarray(self.vectors))  # (d, 3); positions x = c @ vectors
        basis = _pad3(np.asarray(self.basis))
        pinv = np.linalg.pinv(vectors)
        # rotated positions x R^T = c M V + m_i V + b_{i'}
        m_cell = vectors @ rot.T @ pinv
        if not _is_integer(m_cell) or not np.allclose(np.rint(m_cell) @ vectors, vectors @ rot.T):
            return None
        m_cell = np.rint(m_cell).astype(np.int64)
        if any((size[k] * m_cell[k, l]) % size[l] for k in range(self.dim) for l in range(self.dim)):
            return None  # the supercell is not invariant
        target_basis, shift = [], []
        for b in basis @ rot.T:
            for j, b2 in enumerate(basis):
                m = (b - b2) @ pinv
                if _is_integer(m) and np.allclose(np.rint(m) @ vectors, b - b2):
                    target_basis.append(j)
                    shift.append(np.rint(m).astype(np.int64))
                    break
            else:
                return None
        bonds = {(h.i, h.j, h.offset): complex(h.t) for h in self.all_hoppings()}
        for (i, j, off), t in bonds.items():
            new_off = tuple(int(x) for x in np.asarray(off) @ m_cell + shift[j] - shift[i])
            if abs(bonds.get((target_basis[i], target_basis[j], new_off), np.inf) - t) > 1e-12:
                return None
        nb = self.num_basis
        strides = np.cumprod((tuple(size[1:]) + (1,))[::-1])[::-1]
        perm = np.empty(len(cells) * nb, dtype=np.int64)
        for i in range(nb):
            new_cells = (cells @ m_cell + shift[i]) % np.asarray(size)
            perm[np.arange(len(cells)) * nb + i] = (new_cells @ strides) * nb + target_basis[i]
        return perm

    def supercell(self, matrix, name: str | None = None) -> "BravaisLattice":
        """The same lattice with a larger unit cell A_k = sum_l matrix[k, l] a_l.

        Its basis holds every site of the new cell and its hoppings are this lattice's bonds
        between them (each once), so ``supercell(M).graph(size)`` is this lattice's graph with
        sites renumbered, and any non-diagonal cell (a magnetic unit cell, e.g. the 48-site cell
        of the triangular skyrmion crystal, M = [[8, 4], [4, 8]]) becomes a lattice on which
        k-grid ED reaches the thermodynamic limit at the cost of that cell.

        Args:
            matrix: (d, d) integers with non-zero determinant.
            name: the new lattice's name (default: this name with the matrix).

        Raises:
            ValueError: for a matrix of the wrong shape, non-integer entries or determinant 0.
        """
        m = np.asarray(matrix, dtype=float)
        if m.shape != (self.dim, self.dim) or not _is_integer(m):
            raise ValueError(f"supercell matrix must be {self.dim}x{self.dim} integers, got {matrix!r}")
        m = np.rint(m).astype(np.int64)
        det = int(round(np.linalg.det(m)))
        if det == 0:
            raise ValueError(f"supercell matrix {m.tolist()} has determinant 0")
        inverse = np.linalg.inv(m)
        # the lattice points n (integer coordinates) inside the new cell: fractional n M^-1 in [0, 1)
        corners = np.array(list(itertools.product(*[(0, 1)] * self.dim))) @ m
        box = [range(int(corners[:, k].min()), int(corners[:, k].max()) + 1) for k in range(self.dim)]
        points = np.array(list(itertools.product(*box)), dtype=np.int64)
        frac = points @ inverse
        inside = np.all((frac > -1e-9) & (frac < 1 - 1e-9), axis=1)
        points = points[inside]
        if len(points) != abs(det):  # a bug guard: the cell holds |det| lattice points
            raise RuntimeError(f"found {len(points)} lattice points in a cell of volume {abs(det)}")
        index = {tuple(p): k for k, p in enumerate(points)}
        vectors = np.asarray(self.vectors)
        basis = np.asarray(self.basis)
        new_basis, where = [], {}
        for k, p in enumerate(points):
            for b in range(self.num_basis):
                where[(k, b)] = len(new_basis)
                new_basis.append(p @ vectors + basis[b])
        hoppings = []
        for k, p in enumerate(points):
            for h in self.hoppings:
                target = p + np.asarray(h.offset)
                cell = np.floor(target @ inverse + 1e-9).astype(np.int64)
                home = tuple(target - cell @ m)
                hoppings.append(Hopping(where[(k, h.i)], where[(index[home], h.j)], tuple(int(c) for c in cell), h.t))
        return BravaisLattice(m @ vectors, new_basis, hoppings, name or f"{self.name} supercell {m.tolist()}",
                              dict(self._params, supercell=m.tolist()))

    def description(self, size: Sequence[int], periodic: Sequence[bool]) -> dict:
        """JSON-able description of this lattice at a given size (see :func:`graph_from_description`)."""
        return {
            "lattice": self.name,
            "size": [int(s) for s in size],
            "periodic": [bool(p) for p in periodic],
            "params": dict(self._params),
            "vectors": [list(v) for v in self.vectors],
            "basis": [list(b) for b in self.basis],
            "hoppings": [[h.i, h.j, list(h.offset), _json_complex(h.t)] for h in self.hoppings],
        }


# ----------------------------------------------------------------------------- builders

_SQUARE_SHELLS = {1: [(1, 0), (0, 1)], 2: [(1, 1), (1, -1)], 3: [(2, 0), (0, 2)]}
# a1 = (1, 0), a2 = (-1/2, sqrt(3)/2): nearest (1,0), (0,1), (1,1); second at distance sqrt(3);
# third (2,0), (0,2), (2,2) (DESIGN.md section 1).
_TRIANGULAR_SHELLS = {1: [(1, 0), (0, 1), (1, 1)], 2: [(1, -1), (1, 2), (2, 1)], 3: [(2, 0), (0, 2), (2, 2)]}


def _shell_lattice(name, vectors, shells, t1, t2, t3) -> BravaisLattice:
    hops = [(0, 0, off, t) for shell, t in ((1, t1), (2, t2), (3, t3)) for off in shells[shell]]
    return BravaisLattice(vectors, [(0.0, 0.0)], hops, name, {"t1": t1, "t2": t2, "t3": t3})


def square_lattice(t1: float = 1.0, t2: float = 0.0, t3: float = 0.0) -> BravaisLattice:
    """Square lattice, a1 = (1, 0), a2 = (0, 1), hoppings up to the third shell."""
    return _shell_lattice("square", [(1.0, 0.0), (0.0, 1.0)], _SQUARE_SHELLS, t1, t2, t3)


def triangular_lattice(t1: float = 1.0, t2: float = 0.0, t3: float = 0.0) -> BravaisLattice:
    """Triangular lattice, a1 = (1, 0), a2 = (-1/2, sqrt(3)/2), hoppings up to the third shell."""
    return _shell_lattice("triangular", [(1.0, 0.0), (-0.5, SQRT3 / 2)], _TRIANGULAR_SHELLS, t1, t2, t3)


def honeycomb_lattice(t1: float = 1.0) -> BravaisLattice:
    """Honeycomb lattice: triangular Bravais lattice (a1 = (1, 0), a2 = (1/2, sqrt(3)/2)) with
    sublattices A at 0 and B at (a1 + a2) / 3; nearest-neighbour hopping t1."""
    a1, a2 = np.array([1.0, 0.0]), np.array([0.5, SQRT3 / 2])
    hops = [(0, 1, (0, 0), t1), (0, 1, (-1, 0), t1), (0, 1, (0, -1), t1)]
    return BravaisLattice([a1, a2], [(0.0, 0.0), tuple((a1 + a2) / 3)], hops, "honeycomb", {"t1": t1})


def kagome_lattice(t1: float = 1.0) -> BravaisLattice:
    """Kagome lattice: a1 = (1, 0), a2 = (1/2, sqrt(3)/2), sublattices at 0, a1/2, a2/2;
    nearest-neighbour hopping t1 (bond length 1/2)."""
    a1, a2 = np.array([1.0, 0.0]), np.array([0.5, SQRT3 / 2])
    hops = [(0, 1, (0, 0), t1), (0, 1, (-1, 0), t1), (0, 2, (0, 0), t1), (0, 2, (0, -1), t1),
            (1, 2, (0, 0), t1), (1, 2, (1, -1), t1)]
    return BravaisLattice([a1, a2], [(0.0, 0.0), tuple(a1 / 2), tuple(a2 / 2)], hops, "kagome", {"t1": t1})


def cubic_lattice(t1: float = 1.0) -> BravaisLattice:
    """Simple cubic lattice with nearest-neighbour hopping t1."""
    hops = [(0, 0, off, t1) for off in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]]
    return BravaisLattice(np.eye(3), [(0.0, 0.0, 0.0)], hops, "cubic", {"t1": t1})


def square(L1: int, L2: int, t1: float = 1.0, t2: float = 0.0, t3: float = 0.0,
           periodic: bool = True) -> HoppingGraph:
    """Hopping graph of an L1 x L2 square lattice (site n = i1 * L2 + i2)."""
    return square_lattice(t1, t2, t3).graph((L1, L2), periodic)


def triangular(L1: int, L2: int, t1: float = 1.0, t2: float = 0.0, t3: float = 0.0,
               periodic: bool = True) -> HoppingGraph:
    """Hopping graph of an L1 x L2 triangular lattice (site n = i1 * L2 + i2)."""
    return triangular_lattice(t1, t2, t3).graph((L1, L2), periodic)


def honeycomb(L1: int, L2: int, t1: float = 1.0, periodic: bool = True) -> HoppingGraph:
    """Hopping graph of L1 x L2 honeycomb cells (2 sites each, n = (i1 * L2 + i2) * 2 + b)."""
    return honeycomb_lattice(t1).graph((L1, L2), periodic)


def kagome(L1: int, L2: int, t1: float = 1.0, periodic: bool = True) -> HoppingGraph:
    """Hopping graph of L1 x L2 kagome cells (3 sites each, n = (i1 * L2 + i2) * 3 + b)."""
    return kagome_lattice(t1).graph((L1, L2), periodic)


def cubic(L1: int, L2: int, L3: int, t1: float = 1.0, periodic: bool = True) -> HoppingGraph:
    """Hopping graph of an L1 x L2 x L3 simple cubic lattice."""
    return cubic_lattice(t1).graph((L1, L2, L3), periodic)


_BUILT_IN = {
    "square": square_lattice,
    "triangular": triangular_lattice,
    "honeycomb": honeycomb_lattice,
    "kagome": kagome_lattice,
    "cubic": cubic_lattice,
}


def lattice_from_description(description: dict) -> BravaisLattice:
    """Rebuild the :class:`BravaisLattice` named in a graph description."""
    hops = [(i, j, tuple(off), _from_json_complex(t)) for i, j, off, t in description["hoppings"]]
    name = description.get("lattice", "custom")
    return BravaisLattice(description["vectors"], description["basis"], hops, name,
                          dict(description.get("params", {})))


def graph_from_description(description: dict) -> HoppingGraph:
    """Rebuild a lattice graph from its ``description`` (as stored in data sets and models)."""
    if "vectors" not in description:
        raise ValueError("this description names no Bravais lattice (a graph from networkx?); "
                         "rebuild the graph yourself and pass it in")
    return lattice_from_description(description).graph(description["size"], description["periodic"])


# ------------------------------------------------------------------------------ symmetry

def _point_group_candidates(dim: int) -> list[np.ndarray]:
    """Point-group operations worth trying, proper rotations first: C6 and C4 about z (and in 3D
    the 24 cubic rotations); then as many improper ones, each of those after the mirror y -> -y
    in 1D and 2D, after the inversion in 3D.

    Mirrors belong here because without spin-orbit coupling an operation of real space moves
    spins between sites without rotating them (:func:`site_permutation`): a permutation of the
    sites that keeps every hopping leaves the Kondo lattice Hamiltonian unchanged, so the energy
    of the moved configuration is the same and its field is the moved field, for mirrors and
    the inversion as much as for rotations."""
    mats = []
    for deg in (0, 60, 90, 120, 180, 240, 270, 300):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        mats.append(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]))
    if dim == 3:
        for perm in itertools.permutations(range(3)):
            for signs in itertools.product((1, -1), repeat=3):
                m = np.zeros((3, 3))
                m[range(3), perm] = signs
                if np.linalg.det(m) > 0:
                    mats.append(m)
    # improper: in 1D and 2D a rotation after the mirror y -> -y, in 3D after the inversion (a
    # 2D mirror as a 3D matrix; the site matching checks that it maps the sites onto sites)
    flip = np.diag([1.0, -1.0, 1.0]) if dim < 3 else -np.eye(3)
    mats += [m @ flip for m in mats]
    unique = []
    for m in mats:
        m = np.where(np.abs(m) < 1e-14, 0.0, m)
        if not any(np.allclose(m, u) for u in unique):
            unique.append(m)
    return unique


def _site_keys(frac: np.ndarray, periodic_dims: np.ndarray, scale: float = 1e6) -> np.ndarray:
    """Integer key of fractional supercell coordinates (wrapped along periodic dimensions)."""
    k = np.rint(frac * scale).astype(np.int64)
    m = int(scale)
    k[:, periodic_dims] %= m
    offset = 4 * m  # keep open-boundary coordinates non-negative
    return ((k[:, 0] + offset) * (9 * m) + (k[:, 1] + offset)) * (9 * m) + (k[:, 2] + offset)


def _fractional(graph: HoppingGraph, x: np.ndarray) -> np.ndarray:
    cell = graph.cell.detach().cpu().numpy().copy()  # set-up code: the graph may live on a GPU
    for k in range(3):  # absent dimensions: unit vector, coordinate passes through
        if not cell[k].any():
            cell[k, k] = 1.0
    return x @ np.linalg.inv(cell)


def match_sites(graph: HoppingGraph, x: np.ndarray, periodic_dims: np.ndarray) -> np.ndarray | None:
    """Index of the site at each position in x (N, 3), or None if some position holds no site.

    Set-up code (builds tables once per graph): reads the positions on the host, wherever the
    graph lives."""
    keys = _site_keys(_fractional(graph, graph.pos.detach().cpu().numpy()), periodic_dims)
    order = np.argsort(keys)
    target = _site_keys(_fractional(graph, x), periodic_dims)
    where = np.clip(np.searchsorted(keys[order], target), 0, len(keys) - 1)
    found = keys[order][where] == target
    if not found.all():
        return None
    result = order[where]
    # on a supercell that the operation does not map onto itself, two sites can land on one
    return result if len(np.unique(result)) == len(result) else None


def periodic_dims(graph: HoppingGraph) -> np.ndarray:
    """(3,) bool: which Cartesian supercell dimensions of ``graph`` are periodic."""
    periodic = np.zeros(3, dtype=bool)
    flags = graph.description.get("periodic", [])
    periodic[: len(flags)] = flags
    return periodic


_match_sites, _periodic_dims = match_sites, periodic_dims  # the names before issue 16


def site_permutation(graph: HoppingGraph, rotation=None, translation=None) -> torch.Tensor:
    """Permutation p with the site at position x mapped to the site at rotation @ x + translation.

    Rotations act about the origin on periodic lattices and about the centre of the sites on
    open ones. Moving a configuration: ``new[p] = old`` (spins are not rotated: without
    spin-orbit coupling real space and spin space transform separately).

    Args:
        graph: a lattice graph with positions.
        rotation: (3, 3) Cartesian rotation (default identity).
        translation: Cartesian translation, 2 or 3 components (default zero).

    Returns:
        (N,) int64 permutation.

    Raises:
        ValueError: if the operation does not map the sites onto themselves.
    """
    pos = graph.pos.detach().cpu().numpy()
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    shift = np.zeros(3)
    if translation is not None:
        shift[: len(translation)] = translation
    periodic = _periodic_dims(graph)
    centre = np.zeros(3) if periodic.any() else pos.mean(axis=0)
    perm = _match_sites(graph, (pos - centre) @ rot.T + centre + shift, periodic)
    if perm is None:
        raise ValueError("the operation does not map the lattice's sites onto themselves")
    return torch.from_numpy(perm)


def _attach_symmetries(graph: HoppingGraph, rotations, periodic_dims: np.ndarray) -> None:
    periodic = np.zeros(3, dtype=bool)
    periodic[: len(periodic_dims)] = periodic_dims
    pos = graph.pos.numpy()
    centre = np.zeros(3) if periodic.any() else pos.mean(axis=0)
    n = graph.num_nodes
    src, dst = graph.edge_index.numpy()
    edge_key = dst * n + src
    order = np.argsort(edge_key)
    sorted_keys, sorted_t = edge_key[order], graph.hopping.numpy()[order]
    perms, mats = [], []
    for rot in rotations:
        perm = _match_sites(graph, (pos - centre) @ rot.T + centre, periodic)
        if perm is None or any(np.array_equal(perm, p) for p in perms):
            continue
        mapped = perm[dst] * n + perm[src]
        where = np.clip(np.searchsorted(sorted_keys, mapped), 0, len(sorted_keys) - 1)
        if np.array_equal(sorted_keys[where], mapped) and np.allclose(sorted_t[where], graph.hopping.numpy()):
            perms.append(perm)
            mats.append(rot)
    graph.symmetry_perm = torch.from_numpy(np.stack(perms))
    graph.symmetry_rotation = torch.from_numpy(np.stack(mats))


# ------------------------------------------------------------------------------- helpers

def _pad3(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=float))
    return np.pad(x, ((0, 0), (0, 3 - x.shape[1])))


def _is_integer(x: np.ndarray) -> bool:
    return bool(np.allclose(x, np.rint(x), atol=1e-9))


def _congruent(a, b, size, periodic) -> bool:
    for da, db, length, per in zip(a, b, size, periodic):
        if per and (da - db) % length != 0:
            return False
        if not per and da != db:
            return False
    return True


def _fmt(size) -> str:
    return "x".join(str(s) for s in size)


def _json_complex(t):
    t = complex(t)
    return t.real if t.imag == 0 else [t.real, t.imag]


def _from_json_complex(t):
    return complex(t[0], t[1]) if isinstance(t, (list, tuple)) else float(t)

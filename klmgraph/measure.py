"""Observables of spin configurations on a hopping graph.

Every function takes the graph (or a force provider) and spins of shape (N, 3) or (B, N, 3) and
returns one value per configuration. Conventions follow DESIGN.md section 1:

* magnetization: per site, M = (1/N) sum_r S_r;
* skyrmion number: Berg-Luscher solid angles of the elementary triangles,
  n_sk = (1/4 pi) sum_t Omega_t with
  Omega = 2 atan2(S1 . (S2 x S3), 1 + S1.S2 + S2.S3 + S3.S1) over counter-clockwise triangles
  (B. Berg and M. Luscher, Nucl. Phys. B 190, 412 (1981)). This is the lattice version of
  (1/4 pi) int S . (dS/dx x dS/dy) dx dy, so a skyrmion whose core points down in an up
  background has n_sk = -1 for vorticity +1;
* structure factor: S(q) = (1/N) |sum_r S_r exp(-i q . r)|^2 (summed over spin components) on
  the reciprocal grid of the periodic supercell; sum_q S(q) = N for one site per cell.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_spins
from .domains import hop_distance
from .providers import as_provider
from .spins import random_spins
from .graph import HoppingGraph

__all__ = ["energy_per_site", "magnetization", "abs_mz", "elementary_triangles", "skyrmion_number",
           "skyrmion_number_per_cell", "triangles_on", "solid_angle_sum", "StructureFactor", "structure_factor", "magnetic_cell_sites",
           "Locality", "locality", "hop_distance", "LocalityFloor", "locality_floor"]


def _spins(graph: HoppingGraph, spins) -> torch.Tensor:
    return check_spins(spins, graph.num_nodes, tol=1e-5)


def energy_per_site(provider, spins: torch.Tensor) -> torch.Tensor:
    """E / N of a provider (anything with ``energy_and_field`` or a callable returning (E, B)).

    Shapes:
        spins: (N, 3) or (B, N, 3) -> () or (B,)
    """
    energy, _ = as_provider(provider).energy_and_field(spins)
    return energy.detach() / spins.shape[-2]


def magnetization(graph: HoppingGraph, spins: torch.Tensor) -> torch.Tensor:
    """Magnetization per site M = (1/N) sum_r S_r.

    Shapes:
        spins: (N, 3) or (B, N, 3) -> (3,) or (B, 3)
    """
    return _spins(graph, spins).mean(-2)


def abs_mz(graph: HoppingGraph, spins: torch.Tensor) -> torch.Tensor:
    """|M^z|, the absolute z magnetization per site.

    Shapes:
        spins: (N, 3) or (B, N, 3) -> () or (B,)
    """
    return magnetization(graph, spins)[..., 2].abs()


# --------------------------------------------------------------------------- triangulation

def elementary_triangles(graph: HoppingGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangles covering the supercell of a 2D lattice graph once, counter-clockwise.

    The triangles are the Delaunay triangulation of the lattice's sites (with a fixed tiny
    shear that breaks the ties of cocircular sites, so a square is cut along one diagonal and a
    honeycomb hexagon into four triangles), found once on a patch of the infinite lattice and
    repeated over the supercell. Works for any 2D :class:`~klmgraph.BravaisLattice` with a
    basis (square, triangular, honeycomb, kagome, ...). Along open boundaries the triangles
    that leave the supercell are dropped.

    Returns:
        triangles (T, 3) int64 site indices, each counter-clockwise; areas (T,) float64.

    Raises:
        ValueError: for a graph that is not a 2D lattice in the xy plane (e.g. from networkx).
    """
    tri, areas = _triangulation(json.dumps(graph.description, sort_keys=True))
    return torch.from_numpy(tri.copy()), torch.from_numpy(areas.copy())


def triangles_on(graph: HoppingGraph, device) -> torch.Tensor:
    """:func:`elementary_triangles` (T, 3) of ``graph``, copied to ``device`` (keep it: a
    caller that measures every step then does no host-to-device copy)."""
    return elementary_triangles(graph)[0].to(device)


@functools.lru_cache(maxsize=16)
def _triangulation(key: str) -> tuple[np.ndarray, np.ndarray]:
    """Triangles and areas of a graph description (JSON): built once per lattice and size."""
    d = json.loads(key)
    if "vectors" not in d or len(d["vectors"]) != 2:
        raise ValueError(f"skyrmion numbers need a 2D lattice graph built from a BravaisLattice; "
                         f"this one is {d.get('lattice', 'unknown')} with "
                         f"{len(d.get('vectors', [])) or 'no'} lattice vectors")
    vectors = np.asarray(d["vectors"], dtype=float)
    basis = np.asarray(d["basis"], dtype=float)
    if (vectors.shape[1] == 3 and np.abs(vectors[:, 2]).max() > 1e-12) or \
            (basis.shape[1] == 3 and np.abs(basis[:, 2]).max() > 1e-12):
        raise ValueError("the lattice is not in the xy plane; skyrmion numbers are defined for "
                         "2D lattices with spins' z axis normal to the plane")
    motif = _motif_triangles(json.dumps({"vectors": vectors[:, :2].tolist(),
                                         "basis": basis[:, :2].tolist()}))
    size = np.asarray(d["size"])
    periodic = np.asarray(d["periodic"], dtype=bool)
    nb = len(basis)
    cells = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij"), -1).reshape(-1, 2)
    tri, keep = [], np.ones((len(cells), len(motif["sub"])), dtype=bool)
    for v in range(3):  # the three corners; vectorised over cells and motif triangles
        c = cells[:, None, :] + motif["cell"][None, :, v, :]  # (cells, T0, 2)
        for k in range(2):
            if periodic[k]:
                c[..., k] %= size[k]
            else:
                keep &= (c[..., k] >= 0) & (c[..., k] < size[k])
        tri.append((c[..., 0] * size[1] + c[..., 1]) * nb + motif["sub"][None, :, v])
    tri = np.stack(tri, -1)[keep]  # (T, 3)
    areas = np.broadcast_to(motif["area"], keep.shape)[keep]
    if len(tri) and ((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 0] == tri[:, 2])).any():
        raise ValueError(f"the supercell {d['size']} is too small: a triangle wraps onto itself")
    tri, areas = np.ascontiguousarray(tri), np.ascontiguousarray(areas)
    tri.flags.writeable = areas.flags.writeable = False  # cached: callers get copies
    return tri, areas


@functools.lru_cache(maxsize=32)
def _motif_triangles(key: str) -> dict:
    """Triangles of one unit cell: corner sublattices (T0, 3), corner cell offsets (T0, 3, 2),
    areas (T0,). Delaunay (Qhull) on a 5 x 5 patch of cells: O(P log P) in the patch's P sites, so
    a magnetic supercell with a basis of 48 sites (P = 1200) costs milliseconds (a brute-force
    search over all triples of sites needed O(P^4) memory there)."""
    from scipy.spatial import Delaunay

    spec = json.loads(key)
    given, basis = np.asarray(spec["vectors"]), np.asarray(spec["basis"])
    # a 5 x 5 patch of a skewed cell (a supercell such as [[1, 0], [3, 1]]) is a thin strip whose
    # middle cell's triangles reach past it: build the patch from the Lagrange-Gauss reduced cell
    # (the same lattice, vectors = unimodular @ given) and give the offsets in the given cell
    vectors, unimodular = _reduced_cell(given)
    nb = len(basis)
    frac_basis = basis @ np.linalg.inv(vectors)
    offsets = np.array(list(itertools.product(range(-2, 3), repeat=2)))
    cell_of = np.repeat(offsets, nb, axis=0)  # (P, 2)
    sub_of = np.tile(np.arange(nb), len(offsets))
    frac = cell_of + frac_basis[sub_of]
    # a fixed generic shear: a linear map keeps the lattice periodic and any triangulation valid,
    # and removes the cocircular ties of square and hexagonal motifs, so the Delaunay
    # triangulation is unique
    shear = np.array([[1.0, 0.0137], [0.0071, 1.0]])
    x = frac @ vectors @ shear.T
    # Qhull's order of the simplices is its own: sorted, the triangles and their corners come in
    # one order whatever the scipy version (the sums of solid angles then round the same way)
    triples = np.sort(Delaunay(x).simplices.astype(np.int64), axis=1)
    triples = triples[np.lexsort(triples.T[::-1])]
    # one representative per translation class: the copy whose centroid is in a shifted home cell
    centroid = frac[triples].mean(1)
    home = (np.floor(centroid + 0.1234567) == 0).all(1)
    triples = triples[home]
    corners = (frac[triples] @ vectors)  # (T0, 3, 2) unsheared Cartesian corners
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    cross = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    triples = np.where((cross < 0)[:, None], triples[:, [0, 2, 1]], triples)
    area = 0.5 * np.abs(cross)
    cell_area = abs(np.linalg.det(vectors))
    if not math.isclose(area.sum(), cell_area, rel_tol=1e-9):
        raise ValueError(f"triangulation failed: triangles cover {area.sum():.6g} of a unit cell "
                         f"of area {cell_area:.6g}")
    return {"sub": sub_of[triples], "cell": cell_of[triples] @ unimodular, "area": area}


def _reduced_cell(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of 2D lattice vectors (2, 2): (reduced, M) with reduced = M @
    vectors, M an integer matrix of determinant +-1, |reduced_0| <= |reduced_1| and the angle
    between them within 60-120 degrees."""
    reduced, m = vectors.astype(float).copy(), np.eye(2, dtype=np.int64)
    while True:
        if reduced[1] @ reduced[1] < reduced[0] @ reduced[0]:
            reduced, m = reduced[::-1].copy(), m[::-1].copy()
        mu = int(np.rint((reduced[0] @ reduced[1]) / (reduced[0] @ reduced[0])))
        if mu == 0:
            return reduced, m
        reduced[1] -= mu * reduced[0]
        m[1] -= mu * m[0]


def solid_angle_sum(spins: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """4 pi n_sk: the sum of Berg-Luscher solid angles over ``triangles``, spins not checked.

    Shapes:
        spins: (..., N, 3), triangles: (T, 3) on the spins' device -> (...)
    """
    return _solid_angles(spins, triangles).sum(-1)


def _solid_angles(spins: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    # (..., N, 3), (T, 3) -> (..., T)
    s1, s2, s3 = (spins[..., triangles[:, k], :] for k in range(3))
    triple = (s1 * torch.linalg.cross(s2, s3, dim=-1)).sum(-1)
    denom = 1 + (s1 * s2).sum(-1) + (s2 * s3).sum(-1) + (s3 * s1).sum(-1)
    return 2 * torch.atan2(triple, denom)


def skyrmion_number(graph: HoppingGraph, spins: torch.Tensor) -> torch.Tensor:
    """Total skyrmion number n_sk = (1/4 pi) sum of Berg-Luscher solid angles (module docstring).

    On a periodic lattice the result is an integer up to rounding; on open boundaries it is the
    sum over the triangles inside.

    Shapes:
        spins: (N, 3) or (B, N, 3) -> () or (B,), in the spins' dtype.
    """
    spins = _spins(graph, spins)
    triangles, _ = elementary_triangles(graph)
    return _solid_angles(spins, triangles.to(spins.device)).sum(-1) / (4 * math.pi)


def skyrmion_number_per_cell(graph: HoppingGraph, spins: torch.Tensor,
                             cell_sites: int | None = None) -> torch.Tensor:
    """Skyrmion number per magnetic unit cell, n_sk * cell_sites / N (as the paper reports it).

    Args:
        cell_sites: sites per magnetic unit cell (48 for the triangular model of DESIGN.md); None
            derives it from the structure-factor peaks with :func:`magnetic_cell_sites` (one
            configuration at a time).

    Shapes:
        spins: (N, 3) or (B, N, 3) -> () or (B,)
    """
    if cell_sites is None:
        if spins.dim() == 3:
            return torch.stack([skyrmion_number_per_cell(graph, s) for s in spins])
        cell_sites = magnetic_cell_sites(graph, spins)
    if cell_sites <= 0:
        raise ValueError(f"cell_sites must be positive, got {cell_sites}")
    return skyrmion_number(graph, spins) * (cell_sites / graph.num_nodes)


# ------------------------------------------------------------------------- structure factor

@dataclass
class StructureFactor:
    """Spin structure factor on the reciprocal grid of a periodic supercell.

    Attributes:
        index: (*size, d) int64 grid coordinates m (FFT order); q = sum_k m_k b_k / L_k with
            b_k the reciprocal vectors of the lattice (a_j . b_k = 2 pi delta_jk).
        q: (*size, 3) Cartesian wave vectors.
        value: (*size,) or (B, *size) S(q).
        size: (L1, ..., Ld).
    """

    index: torch.Tensor
    q: torch.Tensor
    value: torch.Tensor
    size: tuple

    def peaks(self, threshold: float = 0.5, include_zero: bool = False) -> list[dict]:
        """Grid points with S(q) >= threshold * max S(q) (q = 0 left out unless asked),
        strongest first, each as {'index': (m1, ..)  centred in (-L/2, L/2], 'q', 'value'}.
        One configuration only."""
        if self.value.dim() != len(self.size):
            raise ValueError("peaks are found for one configuration at a time")
        value = self.value.detach().cpu().clone()
        zero = (0,) * len(self.size)
        if not include_zero:
            value[zero] = -1.0
        top = float(value.max())
        if top <= 0:
            return []
        flat = value.flatten()
        order = torch.argsort(flat, descending=True)
        chosen = order[flat[order] >= threshold * top]
        index = self.index.reshape(-1, len(self.size))[chosen]
        sizes = torch.tensor(self.size)
        centred = torch.where(index > sizes // 2, index - sizes, index)
        # q of the centred index: the grid is linear in the index, q(m) = sum_i m_i q(e_i)
        grid = self.q.detach().cpu().reshape(*self.size, 3)
        steps = torch.stack([grid[tuple(1 if j == i else 0 for j in range(len(self.size)))]
                             for i in range(len(self.size))])
        q = centred.to(grid.dtype) @ steps
        return [{"index": tuple(int(x) for x in m), "q": qq, "value": float(v)}
                for m, qq, v in zip(centred, q, flat[chosen])]


def structure_factor(graph: HoppingGraph, spins: torch.Tensor) -> StructureFactor:
    """S(q) = (1/N) sum_a |sum_r S^a_r exp(-i q . r)|^2 on the supercell's reciprocal grid.

    Computed by FFT over the cells of a periodic lattice graph (one FFT per sublattice, with
    the basis phase exp(-i q . b)), so it costs O(N log N).

    Shapes:
        spins: (N, 3) or (B, N, 3) -> value (*size,) or (B, *size)

    Raises:
        ValueError: for a graph that is not a periodic lattice graph.
    """
    spins = _spins(graph, spins)
    d = graph.description
    if "vectors" not in d or not all(d.get("periodic", [False])):
        raise ValueError("the structure factor needs a periodic lattice graph built from a BravaisLattice")
    size = tuple(int(s) for s in d["size"])
    dim = len(size)
    vectors = torch.zeros(dim, 3, dtype=torch.float64)
    vec = torch.tensor(d["vectors"], dtype=torch.float64)
    vectors[:, : vec.shape[1]] = vec
    basis = torch.zeros(len(d["basis"]), 3, dtype=torch.float64)
    bas = torch.tensor(d["basis"], dtype=torch.float64)
    basis[:, : bas.shape[1]] = bas
    # reciprocal vectors b_k (rows) of the lattice within its own span
    recip = 2 * math.pi * torch.linalg.pinv(vectors).T  # (d, 3)
    grids = torch.meshgrid(*[torch.arange(s) for s in size], indexing="ij")
    index = torch.stack(grids, -1)  # (*size, d)
    q = (index.to(torch.float64) / torch.tensor(size, dtype=torch.float64)) @ recip  # (*size, 3)
    nb = len(basis)
    batch_shape = spins.shape[:-2]
    s = spins.reshape(*batch_shape, *size, nb, 3)
    s = torch.movedim(s, (-2, -1), (0, 1))  # (nb, 3, ..., *size)
    amp = torch.fft.fftn(s.to(torch.complex128 if spins.dtype == torch.float64 else torch.complex64),
                         dim=tuple(range(-dim, 0)))
    phase = torch.exp(-1j * (q @ basis.T))  # (*size, nb)
    phase = torch.movedim(phase, -1, 0)[:, None].to(amp.dtype).to(amp.device)  # (nb, 1, *size)
    phase = phase.reshape(nb, 1, *([1] * len(batch_shape)), *size)
    total = (amp * phase).sum(0)  # (3, ..., *size)
    value = (total.abs() ** 2).sum(0) / graph.num_nodes
    return StructureFactor(index=index, q=q, value=value.to(spins.dtype), size=size)


def magnetic_cell_sites(graph: HoppingGraph, spins: torch.Tensor, threshold: float = 0.5) -> int:
    """Sites per magnetic unit cell, from the structure-factor peaks of one configuration.

    The peaks Q (S(Q) >= threshold * max, q = 0 left out) and the lattice's reciprocal vectors
    generate the magnetic reciprocal lattice; its index in the supercell's reciprocal grid is
    the number of magnetic unit cells in the supercell. For the triple-Q state with |Q| = pi / 3
    on the triangular lattice this gives 48 (DESIGN.md section 1).

    Raises:
        ValueError: if the peaks do not span the plane (single-Q spirals, uniform states).
    """
    if spins.dim() != 2:
        raise ValueError("magnetic_cell_sites takes one configuration (N, 3)")
    sf = structure_factor(graph, spins)
    peaks = sf.peaks(threshold)
    size = sf.size
    q_index = np.array([p["index"] for p in peaks], dtype=np.int64).reshape(-1, len(size))
    if np.linalg.matrix_rank(q_index) < len(size):
        raise ValueError(f"the structure-factor peaks {[p['index'] for p in peaks]} do not span "
                         f"{len(size)} dimensions: no finite magnetic unit cell")
    gens = np.concatenate([q_index, np.diag(size).astype(np.int64)])
    # [Z^d : M] for the lattice M spanned by integer vectors = gcd of all d x d minors; by
    # duality it is the number of magnetic unit cells in the supercell
    cells = 0
    for rows in itertools.combinations(range(len(gens)), len(size)):
        cells = math.gcd(cells, abs(int(round(np.linalg.det(gens[list(rows)])))))
    return graph.num_nodes // cells


# ------------------------------------------------------------------------------- locality

@dataclass
class Locality:
    """Result of :func:`locality`: per site, the distance to the rotated spin and |dB| / |B|.

    Attributes:
        distance: (N,) minimum-image distance to the rotated site.
        ratio: (N,) |B'_r - B_r| / |B_r|.
        site: the rotated site.
    """

    distance: torch.Tensor
    ratio: torch.Tensor
    site: int

    def profile(self, decimals: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct distances (ascending) and the largest ratio at each: (D,), (D,)."""
        shells, inverse = torch.unique(torch.round(self.distance * 10 ** decimals) / 10 ** decimals,
                                       return_inverse=True)
        top = torch.zeros(len(shells), dtype=self.ratio.dtype, device=self.ratio.device).scatter_reduce(
            0, inverse, self.ratio, reduce="amax", include_self=False)
        return shells, top


def minimum_image_distance(graph: HoppingGraph, site: int) -> torch.Tensor:
    """(N,) distance of every site to ``site`` through the nearest periodic image."""
    delta = graph.pos - graph.pos[site]  # (N, 3)
    periodic = list(graph.description.get("periodic", []))
    rows = [graph.cell[k] for k in range(len(periodic)) if periodic[k] and graph.cell[k].any()]
    if not rows:
        return delta.norm(dim=-1)
    cell = torch.stack(rows)  # (p, 3)
    frac = delta @ torch.linalg.pinv(cell)  # (N, p)
    delta = delta - torch.round(frac) @ cell
    # skewed cells: the nearest image can be one cell further
    shifts = torch.tensor(list(itertools.product((-1, 0, 1), repeat=len(rows))), dtype=cell.dtype)
    return (delta[:, None, :] + (shifts @ cell)[None]).norm(dim=-1).min(1).values


@dataclass
class LocalityFloor:
    """Result of :func:`locality_floor`.

    Attributes:
        hops: (D,) the reaches d tested.
        floor: (D,) RMSE per field component at the site that no model seeing only the spins
            within d hops can beat; exactly 0 where no site lies further than d hops.
        samples: configurations averaged over.
        site: the site whose field is predicted.
    """

    hops: torch.Tensor
    floor: torch.Tensor
    samples: int
    site: int


def locality_floor(provider, graph: HoppingGraph, hops, samples: int = 8, site: int = 0,
                   seed: int = 0, device=None) -> LocalityFloor:
    """The field error that no model of reach d can beat, on random configurations.

    For each of ``samples`` random configurations, a second random configuration replaces every
    spin more than d hops from ``site``, and the field at ``site`` is computed again. The best
    prediction from the spins within d hops is the mean over the far spins, whose mean square
    error is half the mean square change between two independent draws; the floor is its root,
    per field component, in the units of ``rmse_field``. All reaches d use the same two draws
    per sample, so the floors of several d are compared on the same configurations and do not
    depend on which other d are asked for.

    Compare it with a model's RMSE on random configurations of the same lattice and solver, for
    the d of the model's reach (:func:`hop_distance`). On a periodic lattice no larger than the
    reach every spin is seen and the floor is 0: measure it on a lattice whose largest hop
    distance exceeds d. Unlike :func:`locality` (one spin rotated), this adds up the whole far
    region, as a random configuration does.

    Args:
        provider: force provider (ED, a model, ...).
        graph: the lattice graph.
        hops: reaches d to test (integers >= 0).
        samples: random configurations (1 + D provider calls each, fewer where d reaches every site).
        site: the site whose field is predicted.
        seed: seed of the random configurations.
        device: where the configurations (and so the provider) live (default: the CPU).

    Returns:
        :class:`LocalityFloor`.
    """
    hops = torch.as_tensor(hops).cpu()
    if hops.dim() != 1 or len(hops) == 0 or hops.dtype == torch.bool or hops.is_floating_point() \
            or (hops < 0).any():
        raise ValueError(f"hops must be a non-empty list of integers >= 0, got {hops.tolist()}")
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples}")
    distance = hop_distance(graph, site)
    # the sites each reach leaves unseen (unreachable ones too); None where it sees every spin
    far_of = [far.to(device)[:, None] if far.any() else None
              for far in ((distance > d) | (distance < 0) for d in hops.tolist())]
    p = as_provider(provider)
    generator = torch.Generator().manual_seed(int(seed))
    square = torch.zeros(len(hops), dtype=torch.float64)
    for _ in range(int(samples)):
        spins = random_spins(graph, generator=generator).to(device)
        fresh = random_spins(graph, generator=generator).to(device)
        _, field = p.energy_and_field(spins)
        for k, far in enumerate(far_of):
            if far is None:
                continue
            _, other = p.energy_and_field(torch.where(far, fresh, spins))
            square[k] += (field[site] - other[site]).double().pow(2).mean().cpu() / 2
    return LocalityFloor(hops=hops, floor=(square / int(samples)).sqrt(), samples=int(samples), site=site)


def locality(provider, graph: HoppingGraph, spins: torch.Tensor, site: int = 0,
             angle: float = math.pi / 2, axis=None) -> Locality:
    """Locality test of the effective field (paper Fig. S3): rotate the spin at ``site`` by
    ``angle`` and measure how much the field changes at distance d.

    Args:
        provider: force provider (ED, a model, ...).
        graph: the lattice graph (positions and supercell for the distances).
        spins: one configuration (N, 3).
        site: the site whose spin is rotated.
        angle: rotation angle (default pi / 2).
        axis: rotation axis (default: perpendicular to the spin, in the plane of S and z, or x
            if S is along z).

    Returns:
        :class:`Locality` with distances and |dB| / |B| per site.
    """
    spins = _spins(graph, spins)
    if spins.dim() != 2:
        raise ValueError("locality takes one configuration (N, 3)")
    if not 0 <= site < graph.num_nodes:
        raise ValueError(f"site must lie in [0, {graph.num_nodes}), got {site}")
    s = spins[site].to(torch.float64)
    if axis is None:
        axis = torch.linalg.cross(s, s.new_tensor([0.0, 0.0, 1.0]))
        if axis.norm() < 1e-8:
            axis = s.new_tensor([1.0, 0.0, 0.0])
    axis = torch.as_tensor(axis, dtype=torch.float64, device=s.device)
    axis = axis / axis.norm()
    # Rodrigues rotation of one spin
    rotated = (s * math.cos(angle) + torch.linalg.cross(axis, s) * math.sin(angle)
               + axis * (axis @ s) * (1 - math.cos(angle)))
    moved = spins.clone()
    moved[site] = rotated.to(spins.dtype)
    p = as_provider(provider)
    _, before = p.energy_and_field(spins)
    _, after = p.energy_and_field(moved)
    ratio = (after - before).norm(dim=-1) / before.norm(dim=-1)
    distance = minimum_image_distance(graph, site).to(dtype=ratio.dtype, device=ratio.device)
    return Locality(distance=distance, ratio=ratio.detach(), site=site)

"""Spin configurations on a hopping graph: random, ferromagnetic, multiple-Q spirals, skyrmion crystals.

Every function returns unit vectors of shape (N, 3) (or (batch, N, 3) for
:func:`random_spins` with ``batch``) in float64 unless ``dtype`` says otherwise.
Ordering vectors are Cartesian (the graph's ``pos`` units, lattice constant 1 for the built-ins).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .graph import HoppingGraph, vector3

__all__ = ["random_spins", "ferromagnet", "spiral", "multi_q", "triple_q_vectors", "skyrmion_crystal", "double_skyrmion_crystal", "tile_spins", "transverse_part"]


def _num_sites(graph_or_n) -> int:
    return graph_or_n.num_nodes if isinstance(graph_or_n, HoppingGraph) else int(graph_or_n)


def random_spins(graph_or_n: HoppingGraph | int, batch: int | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Independent spins uniform on the unit sphere.

    Args:
        graph_or_n: a graph or the number of sites N.
        batch: number of configurations (None: one, shape (N, 3)).
        seed: seed of a fresh generator (reproducible); ignored if ``generator`` is given.
        generator: a torch.Generator to draw from.

    Returns:
        (N, 3) or (batch, N, 3).
    """
    n = _num_sites(graph_or_n)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    shape = (n, 3) if batch is None else (int(batch), n, 3)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    # a Gaussian vector has direction uniform on the sphere; its norm vanishes with probability 0
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype=dtype, device=device)


def ferromagnet(graph_or_n: HoppingGraph | int, direction: Sequence[float] = (0.0, 0.0, 1.0),
                dtype=torch.float64, device=None) -> torch.Tensor:
    """All spins along ``direction`` (normalised). Returns (N, 3)."""
    d = torch.as_tensor(direction, dtype=torch.float64)
    if d.shape != (3,) or not torch.isfinite(d).all() or d.norm() == 0:
        raise ValueError(f"direction must be a non-zero 3-vector, got {direction}")
    return (d / d.norm()).expand(_num_sites(graph_or_n), 3).to(dtype=dtype, device=device).clone()


def _positions(graph: HoppingGraph) -> torch.Tensor:
    pos = graph.pos.to(torch.float64)
    if graph.num_nodes > 1 and not pos.abs().sum():
        raise ValueError("the graph has no site positions (all zero); spirals need positions")
    return pos


def _normalise(s: torch.Tensor, what: str) -> torch.Tensor:
    norm = s.norm(dim=-1, keepdim=True)
    if (norm < 1e-10).any():
        sites = (norm[:, 0] < 1e-10).nonzero()[:5, 0].tolist()
        raise ValueError(f"the {what} vanishes at sites {sites}: change the phases or the offset")
    return s / norm


def multi_q(graph: HoppingGraph, qs: Sequence, planes: Sequence | None = None,
            phases: Sequence[float] | None = None, uniform: Sequence[float] = (0.0, 0.0, 0.0),
            dtype=torch.float64, device=None) -> torch.Tensor:
    """Superposition of helices, normalised on every site:

        S_r ~ uniform + sum_k [cos(Q_k . r + phi_k) u_k + sin(Q_k . r + phi_k) v_k].

    Args:
        graph: graph with positions.
        qs: ordering vectors Q_k (each 2 or 3 Cartesian components).
        planes: pairs (u_k, v_k) spanning each helix (default: u = z, v = Q_k / |Q_k|, a
            cycloid in the plane of Q_k and z; u = z, v = x for Q_k = 0).
        phases: phi_k (default 0).
        uniform: constant vector added before normalising (e.g. a magnetisation along z).

    Returns:
        (N, 3) unit vectors.
    """
    pos = _positions(graph)
    qs = [vector3(q, "Q", allow_2d=True) for q in qs]
    if not qs:
        raise ValueError("give at least one ordering vector")
    phases = [0.0] * len(qs) if phases is None else list(phases)
    if len(phases) != len(qs):
        raise ValueError(f"{len(phases)} phases for {len(qs)} ordering vectors")
    if planes is None:
        z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        planes = [(z, q / q.norm() if q.norm() > 0 else torch.tensor([1.0, 0, 0], dtype=torch.float64))
                  for q in qs]
    if len(planes) != len(qs):
        raise ValueError(f"{len(planes)} planes for {len(qs)} ordering vectors")
    s = vector3(uniform, "uniform", allow_2d=True).expand(graph.num_nodes, 3).clone()
    for q, (u, v), phi in zip(qs, planes, phases):
        angle = pos @ q + float(phi)
        s += torch.cos(angle)[:, None] * vector3(u, "u", allow_2d=True) + torch.sin(angle)[:, None] * vector3(v, "v", allow_2d=True)
    return _normalise(s, "multiple-Q ansatz").to(dtype=dtype, device=device)


def spiral(graph: HoppingGraph, q: Sequence[float], plane: Sequence | None = None, phase: float = 0.0,
           dtype=torch.float64, device=None) -> torch.Tensor:
    """Single-Q spiral S_r = cos(Q . r + phase) u + sin(Q . r + phase) v, by default in the xy plane."""
    plane = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)) if plane is None else plane
    u, v = vector3(plane[0], "u", allow_2d=True), vector3(plane[1], "v", allow_2d=True)
    if abs(float(u @ v)) > 1e-12 or abs(float(u.norm()) - 1) > 1e-12 or abs(float(v.norm()) - 1) > 1e-12:
        raise ValueError("the spiral plane needs two orthonormal vectors")
    return multi_q(graph, [q], planes=[(u, v)], phases=[phase], dtype=dtype, device=device)


def triple_q_vectors(q: float, angle: float = 0.0) -> list[torch.Tensor]:
    """Three ordering vectors of length q at angle, angle + 120 deg, angle + 240 deg (Cartesian)."""
    return [torch.tensor([q * math.cos(angle + k * 2 * math.pi / 3), q * math.sin(angle + k * 2 * math.pi / 3), 0.0],
                         dtype=torch.float64) for k in range(3)]


def skyrmion_crystal(graph: HoppingGraph, qs: Sequence | None = None, q: float = math.pi / 3,
                     m_z: float = 0.0, helicity: float = 0.0, phases: Sequence[float] | None = None,
                     dtype=torch.float64, device=None) -> torch.Tensor:
    """Triple-Q skyrmion-crystal ansatz with a uniform magnetisation offset:

        S_r ~ sum_k sin(Q_k . r + phi_k) e_k - z sum_k cos(Q_k . r + phi_k) + m_z z,
        e_k = cos(helicity) Q_k / |Q_k| + sin(helicity) z x Q_k / |Q_k|,

    helicity 0 for Neel, pi/2 for Bloch skyrmions. Skyrmion cores (S antiparallel to z) sit
    where all three cosines are 1; each magnetic unit cell holds one skyrmion.

    Args:
        graph: graph with positions (a 2D lattice).
        qs: the three ordering vectors (default: :func:`triple_q_vectors` of length ``q``;
            q = pi/3 is the triangular model of DESIGN.md section 1).
        m_z: uniform offset along z (in units of one helix amplitude).
        helicity: rotation of the in-plane components about z.
        phases: phi_k (default 0).

    Returns:
        (N, 3) unit vectors.
    """
    qs = triple_q_vectors(q) if qs is None else [vector3(x, "Q", allow_2d=True) for x in qs]
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    planes = []
    for qk in qs:
        if qk.norm() == 0:
            raise ValueError("ordering vectors of a skyrmion crystal must be non-zero")
        e = qk / qk.norm()
        e = math.cos(helicity) * e + math.sin(helicity) * torch.linalg.cross(z, e)
        planes.append((-z, e))
    return multi_q(graph, qs, planes=planes, phases=phases, uniform=(0.0, 0.0, m_z), dtype=dtype, device=device)


def double_skyrmion_crystal(graph: HoppingGraph, qs: Sequence | None = None, q: float = math.pi / 3,
                            m_z: float = 0.0, phases: Sequence[float] | None = None,
                            dtype=torch.float64, device=None) -> torch.Tensor:
    """Triple-Q crystal with two skyrmions per magnetic unit cell (|n_sk| = 2):

        S_r ~ R (cos(Q_1 . r + phi_1), cos(Q_2 . r + phi_2), cos(Q_3 . r + phi_3)) + m_z z,

    each helix along its own axis of a spin-space frame, R the rotation that takes (1, 1, 1) / sqrt(3)
    to z. It is the n_sk = 2 skyrmion crystal of the triangular Kondo lattice model at low field
    (R. Ozawa, S. Hayami and Y. Motome, Phys. Rev. Lett. 118, 147205 (2017)). |n_sk| = 2 per
    magnetic cell for |m_z| below about 1 (tests/test_spins.py); larger offsets unwind it to a
    topologically trivial triple-Q state.

    Args:
        graph: graph with positions (a 2D lattice).
        qs: the three ordering vectors (default: :func:`triple_q_vectors` of length ``q``).
        m_z: uniform offset along z (in units of one helix amplitude).
        phases: phi_k (default 0).

    Returns:
        (N, 3) unit vectors.
    """
    qs = triple_q_vectors(q) if qs is None else [vector3(x, "Q", allow_2d=True) for x in qs]
    if len(qs) != 3:
        raise ValueError(f"a triple-Q crystal needs three ordering vectors, got {len(qs)}")
    s2, s3, s6 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0)
    # the columns of R: the images of the spin-space axes x, y, z
    axes = [(1 / s2, 1 / s6, 1 / s3), (-1 / s2, 1 / s6, 1 / s3), (0.0, -2 / s6, 1 / s3)]
    planes = [(axis, (0.0, 0.0, 0.0)) for axis in axes]
    return multi_q(graph, qs, planes=planes, phases=phases, uniform=(0.0, 0.0, m_z), dtype=dtype, device=device)


def tile_spins(graph: HoppingGraph, spins: torch.Tensor, reps: Sequence[int]) -> tuple[HoppingGraph, torch.Tensor]:
    """A configuration of a periodic Bravais-lattice graph repeated reps_1 x reps_2 (x reps_3) times.

    ED of the result equals k-grid ED of the original with ``k_grid=reps`` (energy divided by
    the number of copies; every copy's field equals the supercell's): the check that defines it.

    Args:
        graph: a periodic lattice graph (from a lattice builder).
        spins: (N, 3) or (B, N, 3) configuration of ``graph``.
        reps: copies along each primitive direction.

    Returns:
        (the tiled graph, its spins (N * prod(reps), 3) or (B, ...)). Site (I, b) of the tiled
        lattice carries the spin of site (I mod L, b).

    Raises:
        ValueError: for a graph that is not a periodic Bravais lattice, or bad ``reps``.
    """
    tiled, index = tiling(graph, reps)
    return tiled, spins[..., index.to(spins.device), :]


def tiling(graph: HoppingGraph, reps: Sequence[int]) -> tuple[HoppingGraph, torch.Tensor]:
    """The lattice of ``graph`` repeated ``reps`` times, and (N * prod(reps),) the site of
    ``graph`` that each of its sites is a copy of (see :func:`tile_spins`)."""
    from .lattice import lattice_from_description

    description = graph.description
    if "vectors" not in description or not all(description.get("periodic", [False])):
        raise ValueError("tile_spins needs a periodic Bravais-lattice graph (from a lattice builder)")
    size = [int(x) for x in description["size"]]
    reps = [int(r) for r in reps]
    if len(reps) != len(size) or any(r < 1 for r in reps):
        raise ValueError(f"reps must be {len(size)} positive integers, got {reps}")
    lattice = lattice_from_description(description)
    big_size = [s * r for s, r in zip(size, reps)]
    cells = torch.cartesian_prod(*[torch.arange(n) for n in big_size]).reshape(-1, len(size))
    small = cells % torch.tensor(size)
    strides = torch.tensor([math.prod(size[k + 1:]) for k in range(len(size))])
    nb = lattice.num_basis
    index = ((small @ strides)[:, None] * nb + torch.arange(nb)).reshape(-1)
    return lattice.graph(big_size), index


def transverse_part(vectors: torch.Tensor, spins: torch.Tensor) -> torch.Tensor:
    """The part of ``vectors`` perpendicular to each (unit) spin: v - (v . S) S.

    For a field (or a field's error) it is the part that enters the LLG torque S x B; the part
    along S does not move a spin of fixed length.

    Shapes:
        vectors, spins: (..., N, 3), broadcastable; returns their broadcast shape.
    """
    return vectors - (vectors * spins).sum(-1, keepdim=True) * spins

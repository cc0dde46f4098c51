"""Spin configurations for other tools: OVF 2.0 and VTK.

* OVF 2.0 (the OOMMF vector-field format read by ubermag's discretisedfield, mumax3's tools and
  Spirit): lattices with one site per cell and axis-aligned primitive vectors (square, cubic,
  rectangular) become a rectangular mesh, one cell per site, x fastest, cell sizes the lattice
  constants; any other graph an irregular mesh listing each site's position with its spin (the
  OVF 2.0 ``irregular`` mesh type of OOMMF; discretisedfield and mumax read rectangular meshes
  only). Binary 8 data (float64, little-endian, with the format's check value). Lengths are in
  units of the lattice constant (``meshunit`` says so, as ``a``).
* VTK unstructured grid (``.vtu``, through meshio): one vertex per site at its position, with
  point data ``spins`` (3 components) and ``Sz``, for ParaView (glyphs for arrows).

Shapes: spins (N, 3); positions (N, 3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import atomic_path
from .lattice import lattice_from_description
from .trajectory import snapshot_at

__all__ = ["write_ovf", "write_vtu", "export_snapshot", "rectangular_mesh", "FORMATS"]

FORMATS = ("ovf", "vtu")
_OVF_CHECK = 123456789012345.0  # the check value of OVF 2.0 "Binary 8" data


def rectangular_mesh(description: dict) -> tuple[list[int], list[float]] | None:
    """(nodes (3,), cell sizes (3,)) of the rectangular mesh whose cell k is site k, or None
    when the lattice is not one (more than one site per cell, or primitive vectors not along
    the axes in order)."""
    vectors = np.asarray(description.get("vectors", []), dtype=float)
    if len(vectors) == 0 or len(description.get("basis", [])) != 1:
        return None
    vectors = np.pad(vectors, ((0, 0), (0, 3 - vectors.shape[1])))
    diagonal = np.diag(np.diag(vectors[:, : len(vectors)]))
    if not np.allclose(vectors[:, : len(vectors)], diagonal) or np.abs(vectors[:, len(vectors):]).max(initial=0) > 0 \
            or (np.diag(diagonal) <= 0).any():
        return None
    size = list(description["size"]) + [1] * (3 - len(vectors))
    steps = list(np.diag(diagonal)) + [1.0] * (3 - len(vectors))
    return [int(s) for s in size], [float(s) for s in steps]


def _site_order(size: list[int]) -> np.ndarray:
    """Site index of each OVF cell (x fastest); klmgraph numbers cells row-major, i1 slowest."""
    nx, ny, nz = size
    ix, iy, iz = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    site = (ix * ny + iy) * nz + iz  # (nx, ny, nz)
    return site.transpose(2, 1, 0).reshape(-1)  # z slowest, x fastest


def write_ovf(description: dict, spins, path, positions=None, title: str = "klmgraph spins") -> str:
    """Write an OVF 2.0 file (a rectangular mesh where the lattice allows one, else irregular).

    Args:
        description: the graph's description (``graph.description``).
        spins: (N, 3) configuration.
        path: output file (written under a temporary name first).
        positions: (N, 3) site positions, needed for an irregular mesh.
        title: the OVF title.

    Returns:
        "rectangular" or "irregular".

    Raises:
        ValueError: if an irregular mesh is needed and no positions are given, or shapes differ.
    """
    spins = np.asarray(torch.as_tensor(spins, dtype=torch.float64).cpu(), dtype="<f8")
    if spins.ndim != 2 or spins.shape[1] != 3:
        raise ValueError(f"spins must have shape (N, 3), got {spins.shape}")
    mesh = rectangular_mesh(description)
    header = ["OOMMF OVF 2.0", "", "Segment count: 1", "", "Begin: Segment", "Begin: Header", "",
              f"Title: {title}", f"Desc: {description.get('lattice', 'graph')} "
              f"{'x'.join(map(str, description.get('size', [len(spins)])))}; lengths in lattice constants"]
    if mesh is not None:
        nodes, steps = mesh
        if int(np.prod(nodes)) != len(spins):
            raise ValueError(f"{len(spins)} spins for a {nodes} mesh")
        header += ["meshtype: rectangular", "meshunit: a",
                   "xmin: 0", "ymin: 0", "zmin: 0",
                   *[f"{a}max: {n * s:.17g}" for a, n, s in zip("xyz", nodes, steps)],
                   "valuedim: 3", "valuelabels: S_x S_y S_z", "valueunits: 1 1 1",
                   *[f"{a}base: {s / 2:.17g}" for a, s in zip("xyz", steps)],
                   *[f"{a}nodes: {n}" for a, n in zip("xyz", nodes)],
                   *[f"{a}stepsize: {s:.17g}" for a, s in zip("xyz", steps)]]
        values = spins[_site_order(nodes)]
        kind = "rectangular"
    else:
        if positions is None:
            raise ValueError("this lattice needs an irregular OVF mesh: give the site positions")
        positions = np.asarray(torch.as_tensor(positions, dtype=torch.float64).cpu(), dtype="<f8")
        if positions.shape != spins.shape:
            raise ValueError(f"positions {positions.shape} and spins {spins.shape} differ in shape")
        low, high = positions.min(0), positions.max(0)
        header += ["meshtype: irregular", "meshunit: a", f"pointcount: {len(spins)}",
                   *[f"{a}min: {v:.17g}" for a, v in zip("xyz", low)],
                   *[f"{a}max: {v:.17g}" for a, v in zip("xyz", high)],
                   "valuedim: 3", "valuelabels: S_x S_y S_z", "valueunits: 1 1 1"]
        values = np.concatenate([positions, spins], 1)  # x y z S_x S_y S_z per point
        kind = "irregular"
    header += ["", "End: Header", "", "Begin: Data Binary 8"]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write("".join(f"# {line}\n" if line else "#\n" for line in header).encode("ascii"))
            f.write(np.asarray([_OVF_CHECK], dtype="<f8").tobytes())
            f.write(np.ascontiguousarray(values, dtype="<f8").tobytes())
            f.write(b"\n# End: Data Binary 8\n# End: Segment\n")
    return kind


def write_vtu(spins, positions, path) -> None:
    """Write a VTK unstructured grid: one vertex per site, point data ``spins`` and ``Sz``.

    Shapes:
        spins, positions: (N, 3)
    """
    import meshio

    spins = np.asarray(torch.as_tensor(spins, dtype=torch.float64).cpu())
    positions = np.asarray(torch.as_tensor(positions, dtype=torch.float64).cpu())
    if spins.shape != positions.shape or spins.ndim != 2 or spins.shape[1] != 3:
        raise ValueError(f"spins {spins.shape} and positions {positions.shape} must both be (N, 3)")
    mesh = meshio.Mesh(positions, [("vertex", np.arange(len(spins))[:, None])],
                       point_data={"spins": spins, "Sz": spins[:, 2].copy()})
    path = Path(path)
    with atomic_path(path) as tmp:
        meshio.write(tmp, mesh, file_format="vtu")


def export_snapshot(trajectory, out, fmt: str, step: int | None = None) -> dict:
    """Write a stored configuration of a trajectory as OVF 2.0 (``fmt="ovf"``) or VTK (``"vtu"``).

    Args:
        trajectory: a ``trajectory.h5`` written by klmgraph.
        out: the output file.
        fmt: "ovf" or "vtu".
        step: the snapshot's step (default: the last committed one).

    Returns:
        dict with ``path``, ``step``, ``sites`` and ``mesh`` (what was written).

    Raises:
        ValueError: for an unknown format, a step without a snapshot, or a graph whose
            positions the file does not hold (a networkx graph: use write_ovf / write_vtu with
            the graph's positions).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {FORMATS}")
    snapshot, description = snapshot_at(trajectory, step)
    spins = snapshot.spins
    if spins.dim() != 2:
        raise ValueError(f"the snapshot holds a batch of configurations {tuple(spins.shape)}; export takes one")
    positions = None
    if fmt == "vtu" or rectangular_mesh(description) is None:
        if "vectors" not in description:
            raise ValueError(f"{trajectory} is a run on a {description.get('lattice', 'graph')} graph, whose site "
                             "positions the file does not hold: call klmgraph.export.write_ovf / write_vtu with "
                             "graph.pos")
        graph = lattice_from_description(description).graph(description["size"], description["periodic"],
                                                              symmetries=False)
        positions = graph.pos
    if fmt == "ovf":
        mesh = write_ovf(description, spins, out, positions, title=f"klmgraph spins at step {snapshot.step}")
    else:
        write_vtu(spins, positions, out)
        mesh = "VTK unstructured points"
    return {"path": str(out), "step": snapshot.step, "sites": len(spins), "mesh": f"{mesh} mesh" if fmt == "ovf" else mesh}

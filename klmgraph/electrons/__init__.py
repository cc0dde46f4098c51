"""Electronic solvers of the Kondo lattice model on a hopping graph: energies and fields B = -dE/dS.

* :class:`ExactDiagonalization`: dense ED at Gamma, or on a k-grid of twisted boundary
  conditions (the supercell of an infinite lattice), O(N^3) per configuration and k-point.
* :class:`KPM`: kernel polynomial method with distance-coloured probe vectors, O(N) per
  configuration; the field is the exact gradient of its energy estimate.
* :class:`FoldedED`: ED of configurations that repeat a smaller lattice, solved on it (Bloch).
* :func:`richardson` and the linear tetrahedron method (``ExactDiagonalization.energy(...,
  integration="tetrahedron")``): T = 0 energies on k-grids that converge smoothly, 1 / n^2.
"""
from .ed import ExactDiagonalization
from .folded import FoldedED
from .kpm import KPM
from .tetrahedron import richardson

__all__ = ["ExactDiagonalization", "FoldedED", "KPM", "richardson"]

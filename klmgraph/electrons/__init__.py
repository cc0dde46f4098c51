"""Electronic solvers of the Kondo lattice model on a hopping graph: energies and fields B = -dE/dS.

* :class:`ExactDiagonalization`: dense ED at Gamma, or on a k-grid of twisted boundary
  conditions (the supercell of an infinite lattice), O(N^3) per configuration and k-point.
"""
from .ed import ExactDiagonalization

__all__ = ["ExactDiagonalization"]

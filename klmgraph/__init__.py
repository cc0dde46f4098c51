"""klmgraph: machine-learning accelerated spin dynamics of Kondo lattice magnets on any lattice."""
from .graph import HoppingGraph
from .lattice import (BravaisLattice, Hopping, cubic, cubic_lattice, graph_from_description,
                      honeycomb, honeycomb_lattice, kagome, kagome_lattice, site_permutation,
                      square, square_lattice, triangular, triangular_lattice)
from .graph import from_networkx
from .ed import ExactDiagonalization, check_spins
from .spins import ferromagnet, multi_q, random_spins, skyrmion_crystal, spiral, triple_q_vectors
from .nn import ECNN, compute_field
from .compat import load_ecnn4klm
from .io import load_model

__version__ = "0.1.0"

__all__ = [
    "HoppingGraph", "BravaisLattice", "Hopping",
    "square", "triangular", "honeycomb", "kagome", "cubic",
    "square_lattice", "triangular_lattice", "honeycomb_lattice", "kagome_lattice", "cubic_lattice",
    "graph_from_description", "site_permutation", "from_networkx",
    "ExactDiagonalization", "check_spins",
    "random_spins", "ferromagnet", "spiral", "multi_q", "triple_q_vectors", "skyrmion_crystal",
    "ECNN", "compute_field", "load_ecnn4klm", "load_model",
]

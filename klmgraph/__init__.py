"""klmgraph: machine-learning accelerated spin dynamics of Kondo lattice magnets on any lattice."""
from .graph import HoppingGraph
from .lattice import (BravaisLattice, Hopping, cubic, cubic_lattice, graph_from_description,
                      honeycomb, honeycomb_lattice, kagome, kagome_lattice, site_permutation,
                      square, square_lattice, triangular, triangular_lattice)
from .graph import from_networkx
from .checks import check_spins
from .electrons import KPM, ExactDiagonalization, FoldedED, richardson
from .data import SpinDataset, generate_dataset, load_dataset, read_spins
from .spins import (double_skyrmion_crystal, ferromagnet, multi_q, random_spins, skyrmion_crystal, spiral,
                    tile_spins, transverse_part, triple_q_vectors)
from .providers import Heisenberg, Provider, SingleIonAnisotropy, Zeeman, as_provider
from .dynamics import LLG, DivergenceError
from .measure import (abs_mz, energy_per_site, hop_distance, locality, locality_floor, magnetic_cell_sites, magnetization,
                      skyrmion_number, skyrmion_number_per_cell, structure_factor)
from .trajectory import Trajectory, TrajectoryWriter, read_trajectory
from .nn import ECNN, compute_field
from .compat import load_ecnn4klm
from .io import load_model
from .pretrained import model_card, pretrained
from .simulation import SimulationResult, simulate
from .sweep import scan
from .distributed import simulate_distributed
from .export import export_snapshot
from .nn.committee import Committee
from .learn import load_learn_config, run_learning

__version__ = "0.1.0"

__all__ = [
    "HoppingGraph", "BravaisLattice", "Hopping",
    "square", "triangular", "honeycomb", "kagome", "cubic",
    "square_lattice", "triangular_lattice", "honeycomb_lattice", "kagome_lattice", "cubic_lattice",
    "graph_from_description", "site_permutation", "from_networkx",
    "ExactDiagonalization", "FoldedED", "KPM", "richardson", "check_spins",
    "generate_dataset", "load_dataset", "SpinDataset", "read_spins",
    "random_spins", "ferromagnet", "spiral", "multi_q", "triple_q_vectors", "skyrmion_crystal", "double_skyrmion_crystal",
    "tile_spins", "transverse_part",
    "LLG", "DivergenceError", "Provider", "as_provider", "Zeeman", "SingleIonAnisotropy", "Heisenberg",
    "energy_per_site", "magnetization", "abs_mz", "skyrmion_number", "skyrmion_number_per_cell",
    "structure_factor", "magnetic_cell_sites", "locality", "locality_floor", "hop_distance",
    "TrajectoryWriter", "Trajectory", "read_trajectory",
    "ECNN", "compute_field", "load_ecnn4klm", "load_model", "pretrained", "model_card",
    "simulate", "SimulationResult", "scan", "simulate_distributed", "export_snapshot",
    "Committee", "run_learning", "load_learn_config",
]

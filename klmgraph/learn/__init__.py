"""Trust at scale: the active-learning loop (``klmgraph learn``) and its parts.

The committee itself (one model file of M members, its uncertainty and calibration) is
:class:`klmgraph.nn.committee.Committee`, a network layer that :mod:`klmgraph.io` loads; this
subpackage holds what builds on it: the configuration, the selection of explored states, the
loop and its report.
"""
from ..nn.committee import BoundCommittee, Committee, Uncertainty, calibration_factor
from .config import LearnConfig, load_learn_config, learn_config_from_dict
from .loop import STAGES, run_learning
from .selection import draw_holdout, select_by_spread

__all__ = ["Committee", "BoundCommittee", "Uncertainty", "calibration_factor", "LearnConfig",
           "load_learn_config", "learn_config_from_dict", "run_learning", "STAGES", "select_by_spread",
           "draw_holdout"]

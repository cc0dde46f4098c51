"""Equivariant networks on hopping graphs (DESIGN.md section 3)."""
from .blocks import InteractionBlock, OutputBlock, SiLUNormActivation, norm_activation
from .conv import IMPLEMENTATIONS, SpinConvolution, TypedNeighbours, filter_irreps
from .ecnn import ECNN, BoundModel
from .forces import compute_field
from .ifnn import IFNN
from .threads import ThreadChoice

__all__ = ["SpinConvolution", "TypedNeighbours", "IMPLEMENTATIONS", "filter_irreps",
           "InteractionBlock", "OutputBlock", "SiLUNormActivation", "norm_activation",
           "ECNN", "BoundModel", "compute_field", "IFNN", "ThreadChoice"]

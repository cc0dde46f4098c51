"""A model bound to one graph (the force-provider protocol) and the model-graph compatibility check.

Layering: this module imports the models' protocol only (``num_classes``, ``edge_classes``,
``lattice``, ``prepare(graph)``, ``energy(spins, prepared)``); :mod:`klmgraph.io` imports it,
never the other way round.
"""
from __future__ import annotations

import contextlib
import json

import torch
from torch import nn

from ..checks import check_spins
from .forces import compute_field

__all__ = ["BoundModel", "check_graph", "SIZE_KEYS"]

# description entries that may differ between a model and the graph it runs on
SIZE_KEYS = ("size", "periodic", "nodes", "edges")


def _lattice_key(description: dict | None):
    if description is None:
        return None
    return json.dumps({k: v for k, v in description.items() if k not in SIZE_KEYS}, sort_keys=True)


def check_graph(model, graph) -> None:
    """Raise ValueError unless ``graph`` is the lattice (any size) with the classes ``model`` was built for."""
    if model.num_classes is not None and graph.num_edge_types != model.num_classes:
        raise ValueError(f"the model was built for {model.num_classes} neighbour classes, the graph has "
                         f"{graph.num_edge_types}: {graph.edge_classes}")
    if model.edge_classes is not None and list(graph.edge_classes) != list(model.edge_classes):
        raise ValueError(f"the model was built for neighbour classes {model.edge_classes}, the graph has "
                         f"{graph.edge_classes}")
    mine, theirs = _lattice_key(model.lattice), _lattice_key(getattr(graph, "description", None))
    if mine is not None and theirs is not None and mine != theirs:
        raise ValueError(f"the model was built for the lattice {mine}, the graph is {theirs} "
                         "(only the size may differ)")


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """Parameters not requiring grad for the duration: autograd then keeps only what dB/dS
    needs (e.g. not the gathered neighbour features that dE/dW would need), which roughly
    halves the memory of an energy + field evaluation. Flags are restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class BoundModel:
    """A model applied to one graph: the force-provider protocol of ExactDiagonalization.

    The graph's neighbour table (``model.prepare(graph)``) is built once here and lives as
    long as this object; it moves to the model's device at the first call on that device (a
    model moved later is followed, the table is copied once per move, never per call).
    Computation happens in the model's dtype and device; results come back in the spins'
    dtype and device. During a call the weights are frozen (requires_grad off, restored
    afterwards) so that autograd keeps only what dB/dS needs; do not train the same model from
    another thread at the same time, nor evaluate one BoundModel from two threads at once.

    Args:
        model: an :class:`~klmgraph.ECNN` or :class:`~klmgraph.nn.IFNN` (any module with
            ``num_classes``, ``prepare(graph)`` and ``energy(spins, prepared)``).
        graph: the hopping graph; its number of classes must match the model's, and so must
            the class names when the model knows them.
        deterministic: sums without atomic additions (bit-identical reruns on a GPU).

    Raises:
        ValueError: if the graph's neighbour classes do not match the model's, or
            ``deterministic`` is asked of a model or graph that has no such path.
    """

    def __init__(self, model: nn.Module, graph, deterministic: bool = False):
        check_graph(model, graph)
        self.model = model
        self.graph = graph
        self.num_sites = graph.num_nodes
        self.deterministic = bool(deterministic)
        self._neighbours = model.prepare(graph, deterministic=True) if deterministic else model.prepare(graph)

    def _reference_param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def neighbours(self, device) -> object:
        """The graph's prepared table on ``device`` (moved there once)."""
        self._neighbours = self._neighbours.to(device)
        return self._neighbours

    def _check_shape(self, spins: torch.Tensor) -> None:
        if spins.dim() not in (2, 3) or tuple(spins.shape[-2:]) != (self.num_sites, 3):
            raise ValueError(f"spins must have shape ({self.num_sites}, 3) or (B, {self.num_sites}, 3), "
                             f"got {tuple(spins.shape)}")

    def energy(self, spins: torch.Tensor) -> torch.Tensor:
        """Energy without the field (no autograd graph). Shapes: (N, 3) or (B, N, 3) -> () or (B,)."""
        spins = check_spins(spins, self.num_sites)
        p = self._reference_param()
        with torch.no_grad():
            return self.model.energy(spins.to(p), self.neighbours(p.device)).to(spins)

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and effective field B = -dE/dS (spins validated: two host synchronisations).

        Shapes:
            spins: (N, 3) or (B, N, 3) unit vectors -> E: () or (B,), B: spins' shape.
        """
        return self.energy_and_field_unchecked(check_spins(spins, self.num_sites))

    def energy_and_field_unchecked(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`energy_and_field` for spins the caller has validated (the integrator's hot
        path: shapes are checked, values are not, and nothing synchronises with the host)."""
        self._check_shape(spins)
        p = self._reference_param()
        # a model may offer a compiled path (ECNN: nn/fused.py); None where it does not apply
        fused = getattr(self.model, "fused_energy_and_field", None)
        result = fused(spins.detach().to(p), self.neighbours(p.device)) if fused is not None else None
        if result is not None:
            return result[0].to(spins), result[1].to(spins)
        s = spins.detach().to(p).requires_grad_(True)
        with torch.enable_grad(), _frozen(self.model):
            energy = self.model.energy(s, self.neighbours(p.device))
            field = compute_field(energy, s, training=False)
        return energy.detach().to(spins), field.detach().to(spins)

    def __call__(self, spins):
        return self.energy_and_field(spins)

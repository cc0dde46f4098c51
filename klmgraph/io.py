"""Saving and loading models: JSON configuration + format version + state dict, never a pickled module.

File layout (a ``torch.save`` of plain containers, read back with ``weights_only=True``)::

    {"format": "klmgraph-model", "format_version": 1, "architecture": "ECNN",
     "config": "<JSON: hyper-parameters, edge classes, lattice description, Hamiltonian>",
     "dtype": "float32", "state_dict": {name: tensor}}

:func:`build_model` is the one function that turns a configuration into a module; loading is
build_model(config) + load_state_dict, so a file stays readable when classes move.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .files import atomic_path

from .nn.ecnn import ECNN
from .nn.ifnn import IFNN

__all__ = ["FORMAT", "FORMAT_VERSION", "build_model", "save_model", "load_model", "check_graph"]

FORMAT = "klmgraph-model"
FORMAT_VERSION = 1
_ARCHITECTURES = {"ECNN": ECNN, "IFNN": IFNN}
# description entries that may differ between a model and the graph it runs on
_SIZE_KEYS = ("size", "periodic", "nodes", "edges")


def build_model(config: dict, architecture: str = "ECNN") -> torch.nn.Module:
    """Build an untrained model from its configuration (``model.config``)."""
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(_ARCHITECTURES)}")
    try:
        return _ARCHITECTURES[architecture](**config)
    except TypeError as exc:
        raise ValueError(f"invalid {architecture} configuration {config}: {exc}") from exc


def save_model(model: torch.nn.Module, path) -> Path:
    """Write ``model`` (an :class:`~klmgraph.ECNN` or IFNN) to ``path``; returns the path.

    The file is written under a temporary name and renamed, so ``path`` always holds a
    complete model, also when the writer is interrupted.
    """
    architecture = type(model).__name__
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"cannot save a {architecture}; known architectures: {sorted(_ARCHITECTURES)}")
    dtype = next(model.parameters()).dtype
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": json.dumps(model.config, sort_keys=True),
        "dtype": str(dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _lattice_key(description: dict | None):
    if description is None:
        return None
    return json.dumps({k: v for k, v in description.items() if k not in _SIZE_KEYS}, sort_keys=True)


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


def load_model(path, graph=None, map_location="cpu") -> torch.nn.Module:
    """Read a model written by :func:`save_model` / ``model.save``.

    Args:
        path: the file.
        graph: if given, the model must belong to this graph's lattice and neighbour classes
            (any size); see :func:`check_graph`.
        map_location: device for the weights.

    Raises:
        ValueError: for an unreadable or corrupted file, an unknown format version, or a
            graph of another lattice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupted or not a torch file at all
        raise ValueError(f"{path} is not a readable klmgraph model file (corrupted?): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a klmgraph model file (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(f"{path} has model format version {version!r}; this klmgraph reads up to "
                         f"{FORMAT_VERSION} (upgrade klmgraph)")
    try:
        config = json.loads(payload["config"])
        state = payload["state_dict"]
        dtype = getattr(torch, payload.get("dtype", "float32"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: corrupted model file header: {exc}") from exc
    model = build_model(config, payload.get("architecture", "ECNN")).to(dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the stored configuration: {exc}") from exc
    if graph is not None:
        check_graph(model, graph)
    return model.to(map_location)

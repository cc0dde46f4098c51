"""Loading models: the file layout of :mod:`klmgraph.nn.modelfile`, rebuilt by one builder.

:func:`build_network` is the one function that turns a configuration into a module; loading is
build_network(config) + load_state_dict, so a file stays readable when classes move. Layering:
io imports nn (the architectures, the writer and the graph check); nn never imports io.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .nn.binding import check_graph
from .nn.committee import Committee
from .nn.ecnn import ECNN
from .nn.ifnn import IFNN
from .nn.modelfile import FORMAT, FORMAT_VERSION, save_model

__all__ = ["FORMAT", "FORMAT_VERSION", "build_network", "build_model", "save_model", "load_model", "check_graph"]

_ARCHITECTURES = {"ECNN": ECNN, "IFNN": IFNN}


def build_network(config: dict, architecture: str = "ECNN") -> torch.nn.Module:
    """Build an untrained network from its configuration (``model.config``).

    IFNN files written before issue 16 name the lattice ``description`` in their configuration;
    it is read as ``lattice``, the key of every architecture now.
    """
    if architecture == "Committee":
        return _build_committee(config)
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(_ARCHITECTURES)}")
    config = dict(config)
    if "description" in config and "lattice" not in config:
        config["lattice"] = config.pop("description")
    try:
        return _ARCHITECTURES[architecture](**config)
    except TypeError as exc:
        raise ValueError(f"invalid {architecture} configuration {config}: {exc}") from exc


def _build_committee(config: dict) -> Committee:
    try:
        size, arch, member = int(config["size"]), config["member_architecture"], config["member_config"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"invalid committee configuration {config}: {exc}") from exc
    if arch == "Committee":
        raise ValueError("a committee's members cannot be committees")
    return Committee([build_network(member, arch) for _ in range(size)],
                     calibration=config.get("calibration", 1.0), threshold=config.get("threshold"),
                     site_threshold=config.get("site_threshold"))


build_model = build_network  # its name before issue 16 (the CLI's ED builder is now cli.build_solver)


def load_model(path, graph=None, map_location="cpu") -> torch.nn.Module:
    """Read a model written by :func:`save_model` / ``model.save``: a network, or a
    :class:`~klmgraph.nn.committee.Committee` (whose ``bind`` gives a provider with ``uncertainty``).

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
    model = build_network(config, payload.get("architecture", "ECNN")).to(dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the stored configuration: {exc}") from exc
    if graph is not None:
        check_graph(model, graph)
    return model.to(map_location)

"""Writing a model file: JSON configuration + format version + state dict, never a pickled module.

File layout (a ``torch.save`` of plain containers, read back with ``weights_only=True`` by
:func:`klmgraph.io.load_model`)::

    {"format": "klmgraph-model", "format_version": 1, "architecture": "ECNN",
     "config": "<JSON: hyper-parameters, edge classes, lattice description, Hamiltonian>",
     "dtype": "float32", "state_dict": {name: tensor}}

A committee (:class:`~klmgraph.nn.committee.Committee`) is one file of format version 2 with
``"architecture": "Committee"``, a config holding ``size``, ``member_architecture``,
``member_config``, ``calibration`` and ``threshold``, and the stacked weights (M, ...) of its
members under ``weights.<name>``. Single networks are still written as version 1, so older
klmgraph versions read them; an older klmgraph refuses a committee file naming its version.

It sits in nn/ so that a model can save itself (``model.save``) without nn importing io; io,
which knows every architecture to rebuild one, imports this module.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files import atomic_path

__all__ = ["FORMAT", "FORMAT_VERSION", "ARCHITECTURES", "save_model"]

FORMAT = "klmgraph-model"
FORMAT_VERSION = 2  # the newest this klmgraph reads; version 2 = committees
ARCHITECTURES = ("ECNN", "IFNN", "Committee")


def save_model(model: torch.nn.Module, path) -> Path:
    """Write ``model`` (an :class:`~klmgraph.ECNN`, IFNN or Committee) to ``path``; returns the path.

    The file is written under a temporary name and renamed, so ``path`` always holds a
    complete model, also when the writer is interrupted.
    """
    architecture = type(model).__name__
    if architecture not in ARCHITECTURES:
        raise ValueError(f"cannot save a {architecture}; known architectures: {sorted(ARCHITECTURES)}")
    dtype = next(model.parameters()).dtype
    payload = {
        "format": FORMAT,
        "format_version": 2 if architecture == "Committee" else 1,
        "architecture": architecture,
        "config": json.dumps(model.config, sort_keys=True),
        "dtype": str(dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path

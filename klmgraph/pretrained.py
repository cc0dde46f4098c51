"""Models trained by klmgraph and shipped with it (data/models/), each with its card.

A shipped model is two files in a models folder: ``<name>.pt`` in klmgraph's model format
(:func:`klmgraph.io.load_model`: JSON configuration + state dict, read with
``weights_only=True``) and ``<name>.json``, its card: the data it was trained on (lattice,
Hamiltonian, solver and k-grid), the training configuration, the metrics reached on held-out
sets, and the date.

Where they are found, first match wins: the ``data/models`` folder of a source checkout (an
editable install), then ``share/klmgraph/models`` under the installation prefix (where
``pip install .`` puts them, setup.cfg ``data_files``) and under the user base (``pip install
--user``).
"""
from __future__ import annotations

import json
import site
import sys
import sysconfig
from pathlib import Path

from .io import load_model

__all__ = ["pretrained", "model_card", "model_folders", "describe"]

SHARE = ("share", "klmgraph", "models")


def model_folders() -> list[Path]:
    """The folders searched for shipped models, in order (existing ones only)."""
    candidates = [Path(__file__).resolve().parents[1] / "data" / "models"]
    for prefix in (sysconfig.get_path("data"), sys.prefix, site.getuserbase()):
        if prefix:
            candidates.append(Path(prefix).joinpath(*SHARE))
    seen, folders = set(), []
    for folder in candidates:
        key = folder.resolve() if folder.exists() else None
        if key is not None and key not in seen:
            seen.add(key)
            folders.append(folder)
    return folders


def _models(directory=None) -> dict[str, Path]:
    """{name: model file} of every model with a card, first folder first."""
    folders = [Path(directory)] if directory is not None else model_folders()
    found = {}
    for folder in folders:
        for path in sorted(folder.glob("*.pt")):
            if path.with_suffix(".json").is_file():
                found.setdefault(path.stem, path)
    return found


def _find(name: str, directory=None) -> Path:
    models = _models(directory)
    if name not in models:
        where = str(directory) if directory is not None else ", ".join(map(str, model_folders())) or "no folder found"
        raise ValueError(f"no shipped model named {name!r}; available: {sorted(models) or 'none'} (searched {where})")
    return models[name]


def model_card(name: str, directory=None) -> dict:
    """The card of shipped model ``name`` (a dict read from ``<name>.json``).

    Raises:
        ValueError: for an unknown name (the message lists the available ones).
    """
    return json.loads(_find(name, directory).with_suffix(".json").read_text())


def pretrained(name: str | None = None, graph=None, map_location="cpu", directory=None):
    """A model shipped with klmgraph, as :func:`klmgraph.load_model` returns it; without a name,
    the sorted list of available names.

    Args:
        name: the model's name (see ``klmgraph.pretrained()`` or ``klmgraph models``).
        graph: if given, the model must belong to this graph's lattice (any size).
        map_location: device for the weights.
        directory: look only in this folder instead of the shipped ones.

    Example::

        model = klmgraph.pretrained("square-paper")
        provider = model.bind(klmgraph.square(96, 96))

    Raises:
        ValueError: for an unknown name (the message lists the available ones).
    """
    if name is None:
        return sorted(_models(directory))
    return load_model(_find(name, directory), graph=graph, map_location=map_location)


def _metric_lines(name: str, metrics: dict, indent: str) -> list[str]:
    """``name: k v, ...`` for the scalars of ``metrics``, then one deeper line per nested dict
    (a card's per-field or all-state metrics), so no dict is printed raw."""
    def value(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    scalars = ", ".join(f"{k} {value(v)}" for k, v in metrics.items() if not isinstance(v, dict))
    lines = [f"{indent}{name}: {scalars}" if scalars else f"{indent}{name}:"]
    for k, v in metrics.items():
        if isinstance(v, dict):
            lines.extend(_metric_lines(k, v, indent + "  "))
    return lines


def describe(name: str, directory=None) -> str:
    """One paragraph of a card's key facts (for ``klmgraph models``)."""
    card = model_card(name, directory)
    lines = [f"{name}: {card.get('summary', '(no summary)')}"]
    for key in ("lattice", "solver", "date"):
        if key in card:
            lines.append(f"  {key}: {card[key]}")
    if "hamiltonian" in card:
        lines.append("  hamiltonian: " + ", ".join(f"{k} = {v}" for k, v in card["hamiltonian"].items()))
    for split, metrics in card.get("metrics", {}).items():
        lines.extend(_metric_lines(split, metrics, "  "))
    if "note" in card:
        lines.append(f"  note: {card['note']}")
    lines.append(f"  file: {_find(name, directory)}")
    return "\n".join(lines)


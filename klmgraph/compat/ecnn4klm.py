"""Import of the published ecnn4klm checkpoints (DESIGN.md section 4).

A published convolution is an e3nn TensorProduct over K_pub "columns", column k holding the
features of site r + delta_k. In klmgraph a class named by the lattice offset d holds the
features of the edge source r' = r + d for the centre r, so column delta maps onto the class
named delta. Columns with the same offset (the five centre columns of the square model) act
on the same features: their weight blocks add. Finally e3nn's path normalisation divides by
sqrt(fan-in), which grows with the number of columns, so weights are rescaled by
sqrt(K / K_pub) when the graph has fewer classes than the checkpoint has columns.

The mapping (and the spherical-harmonics normalisation) is verified against exact
diagonalization in tests/test_import.py: the imported triangular model reproduces ED fields
to RMSE ~8e-3 on random 12x12 configurations (~2e-3 on 24x24; it was trained on 36x36), the
square one to ~0.05.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ..nn.ecnn import ECNN

__all__ = ["load_ecnn4klm", "PUBLISHED"]

# lattice name -> (lattice offsets of the K_pub columns, hoppings, Hamiltonian of the training data)
PUBLISHED = {
    "square": {
        "columns": [(0, 0)] * 5 + [(-1, 0), (1, 0), (0, -1), (0, 1)],
        "params": {"t1": 1.0, "t2": 0.0, "t3": 0.0},
        "hamiltonian": {"J": 7.0, "filling": 0.48, "mu": None, "temperature": 0.0},
    },
    "triangular": {
        "columns": [(0, 0)] + [(k * a, k * b) for k in (1, 2)
                               for a, b in ((1, 1), (1, 0), (0, -1), (-1, -1), (-1, 0), (0, 1))],
        "params": {"t1": 1.0, "t2": 0.0, "t3": -0.85},
        "hamiltonian": {"J": -1.0, "filling": None, "mu": -3.5, "temperature": 0.0},
    },
}

_CONVS = ["conv1", "conv2", "conv3", "conv4", "convout"]
_LINEARS = ["selfintout1", "selfintout2", "selfintout3"]


def _offset_name(offset) -> str:
    return "(" + ", ".join(str(int(d)) for d in offset) + ")"


def _read_state(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ecnn4klm checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or not a torch file
        raise ValueError(f"{path} is not a readable ecnn4klm checkpoint: {exc}") from exc
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    missing = [f"{c}.tp.weight" for c in _CONVS if not isinstance(state, dict) or f"{c}.tp.weight" not in state]
    if missing:
        raise ValueError(f"{path} does not look like an ecnn4klm checkpoint: missing {missing}")
    return state


def load_ecnn4klm(path, graph, implementation: str = "fast", time_reversal: bool = False) -> ECNN:
    """Load a published ecnn4klm checkpoint as an :class:`~klmgraph.ECNN` for ``graph``.

    Works on square and triangular graphs of any size; bind the result to a graph to use it:
    ``load_ecnn4klm(path, graph).bind(graph).energy_and_field(spins)``.

    Args:
        path: ``square_param.cpt`` or ``triangle_param.cpt``.
        graph: a square (t1 only) or triangular (t1 and t3) :class:`~klmgraph.HoppingGraph`;
            its neighbour classes must be exactly the checkpoint's column offsets.
        implementation: ``"fast"`` or ``"reference"`` convolutions.
        time_reversal: symmetrise the imported energy under S -> -S (not part of the
            published model; changes its predictions slightly).

    Returns:
        an ECNN in float32 (the checkpoint's precision) whose ``hamiltonian`` names the model
        the weights were trained on.

    Raises:
        ValueError: when the checkpoint's columns do not match the graph's neighbour classes,
            or the file is not an ecnn4klm checkpoint.
    """
    state = _read_state(path)
    # conv1: 1x0e+1x1e+1x2e (x) 0e+1e -> 8x(0e+1e+2e) has 9 paths of 8 weights per column
    per_column = 9 * 8
    k_pub, rest = divmod(state["conv1.tp.weight"].numel(), per_column)
    kinds = {len(v["columns"]): name for name, v in PUBLISHED.items()}
    if rest or k_pub not in kinds:
        raise ValueError(f"{path}: conv1 has {state['conv1.tp.weight'].numel()} weights, which matches "
                         f"neither published model (9 or 13 columns of {per_column})")
    kind = kinds[k_pub]
    spec = PUBLISHED[kind]

    # --- the graph must have exactly the checkpoint's neighbour classes
    description = getattr(graph, "description", {}) or {}
    lattice = description.get("lattice")
    wanted = {_offset_name(d) for d in spec["columns"] if any(d)}
    have = [c for c in graph.edge_classes if c != "self"]
    if (graph.edge_classes[0] != "self" or len(have) != len(set(have)) or set(have) != wanted
            or lattice != kind):
        raise ValueError(
            f"the {kind} checkpoint {Path(path).name} has columns for the neighbour offsets "
            f"{sorted(wanted)} of a {kind} lattice; the graph ({lattice}) has classes "
            f"{graph.edge_classes}. Build the graph with klmgraph.{kind}(L1, L2, "
            + ", ".join(f"{k}={v}" for k, v in spec["params"].items()) + ")")
    params = description.get("params", {})
    differs = {k: (params.get(k), v) for k, v in spec["params"].items()
               if params.get(k) is not None and abs(float(params[k]) - v) > 1e-12}
    if differs:
        warnings.warn(f"the {kind} checkpoint was trained with {spec['params']}; the graph has "
                      f"{ {k: a for k, (a, _) in differs.items()} }: its predictions are for the published model",
                      stacklevel=2)

    model = ECNN.for_graph(graph, hamiltonian={**spec["hamiltonian"], "source": "ecnn4klm " + kind},
                           implementation=implementation, time_reversal=time_reversal)
    k = model.num_classes
    class_of = {name: i for i, name in enumerate(graph.edge_classes)}
    column_class = [class_of["self" if not any(d) else _offset_name(d)] for d in spec["columns"]]
    scale = math.sqrt(k / k_pub)  # e3nn 'element' normalisation: 1/sqrt(fan-in), fan-in ~ columns

    convs = [b.conv for b in model.blocks] + [model.output.conv]
    with torch.no_grad():
        for name, conv in zip(_CONVS, convs):
            w = state[f"{name}.tp.weight"].to(torch.float64)
            if w.numel() != k_pub * conv._block_numel:
                raise ValueError(f"{name}: {w.numel()} weights, expected {k_pub} x {conv._block_numel}")
            # (K_pub, block) -> (K, block): columns of one class add up
            merged = torch.zeros(k, conv._block_numel, dtype=torch.float64)
            merged.index_add_(0, torch.tensor(column_class), w.view(k_pub, conv._block_numel))
            conv.weight.copy_((merged * scale).reshape(-1))
        for name, linear in zip(_LINEARS, model.output.linears):
            for part in ("weight", "bias"):
                value, target = state[f"{name}.selfinteract.{part}"], getattr(linear, part)
                if value.shape != target.shape:
                    raise ValueError(f"{name}.{part}: shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                target.copy_(value)
    return model

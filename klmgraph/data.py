"""Exact-diagonalization data sets in HDF5, and reading them back as PyG ``Data`` objects.

File layout (format "klmgraph-dataset", version 1)::

    /spins   (M, N, 3) float64   written in full when the file is created
    /energy  (M,)      float64   E_el, NaN until computed
    /field   (M, N, 3) float64   B = -dE/dS, NaN until computed
    /graph/  edge_index, edge_type, hopping, edge_vec, pos, cell, symmetry_perm, symmetry_rotation
    attrs:   format, format_version, graph (JSON description), edge_classes (JSON),
             hamiltonian (JSON: J, filling, mu, temperature, num_electrons), num_samples,
             num_done, source, seed

Optional ``/provenance/`` group (data sets written by :func:`merge_datasets`, e.g. by the
learning loop): ``iteration`` (M,) int64 (-1: not from the loop), ``condition`` (M,) int64
(index into the JSON attribute ``conditions``; -1: random configuration), ``step`` (M,) int64
(LLG step of an explored state; -1: none).

Samples 0 .. num_done - 1 are complete. Labels are written and flushed before ``num_done`` is
advanced, so an interrupted run leaves at most unfinished samples beyond ``num_done``; those
are never read back, and :func:`generate_dataset` on the same path resumes after them.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from .checks import check_spins
from .electrons import ExactDiagonalization
from .files import atomic_path
from .graph import HoppingGraph
from .lattice import graph_from_description
from .spins import random_spins

__all__ = ["generate_dataset", "load_dataset", "merge_datasets", "SpinDataset", "read_spins", "PROVENANCE"]

FORMAT = "klmgraph-dataset"
FORMAT_VERSION = 1
PROVENANCE = ("iteration", "condition", "step")
# /graph's mark of files written since mirrors joined the point group (2026-12-04): their
# symmetry_perm is the writing graph's as it was (rotations and mirrors, or what symmetries= chose)
POINT_GROUP = "rotations and mirrors"
_GRAPH_KEYS = ("edge_index", "edge_type", "hopping", "edge_vec", "pos", "cell", "symmetry_perm", "symmetry_rotation")


def _h5py():
    import h5py

    return h5py


def generate_dataset(path: str | Path, ed: ExactDiagonalization, num_samples: int | None = None,
                     spins: torch.Tensor | None = None, seed: int = 0, batch_size: int = 1,
                     progress: bool = True, overwrite: bool = False, device=None) -> Path:
    """Write (spins, E_el, B) of random or given configurations to an HDF5 data set.

    Re-running on an existing, unfinished file with the same settings resumes it; a finished
    one is left as it is. Settings that differ from the file's raise ValueError (pass
    ``overwrite=True`` to start afresh).

    Args:
        path: output file (.h5).
        ed: the electronic solver (:class:`~klmgraph.ExactDiagonalization`, or :class:`~klmgraph.KPM`,
            whose parameters name it); its graph and parameters are stored as metadata.
        num_samples: number of random configurations (uniform on the sphere, from ``seed``).
        spins: (M, N, 3) configurations to label instead of random ones.
        seed: seed of the random configurations.
        batch_size: configurations diagonalised together.
        progress: show a tqdm progress bar.
        overwrite: replace an existing file with different settings.
        device: where the solver runs (default: the device of ``spins``, else the CPU). Random
            configurations are drawn on the CPU, so a seed gives the same data set on any device.

    Returns:
        The path written.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    graph = ed.graph
    if (num_samples is None) == (spins is None):
        raise ValueError("give exactly one of num_samples (random configurations) and spins")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if spins is None:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        spins = random_spins(graph, batch=int(num_samples), seed=seed)
        source = "random"
    else:
        if device is None and torch.is_tensor(spins):
            device = spins.device
        # the file holds them, so they live on the host; only the solver runs on ``device``
        spins = check_spins(torch.as_tensor(spins, dtype=torch.float64).detach().cpu(), graph.num_nodes)
        spins = spins.reshape(-1, graph.num_nodes, 3)
        source = "given"
        seed = -1
    settings = {
        "graph": json.dumps(graph.description, sort_keys=True),
        "hamiltonian": json.dumps(ed.parameters(), sort_keys=True),
        "num_samples": len(spins),
        "source": source,
        "seed": int(seed),
    }
    if path.exists() and not overwrite:
        with _open(path, "r") as f:
            _check_settings(f, path, settings, spins)
    else:
        _create(path, graph, settings, spins)

    with _open(path, "r+") as f:
        done, total = int(f.attrs["num_done"]), len(spins)
        bar = tqdm(total=total, initial=done, desc="ED", unit="config", disable=not progress)
        while done < total:
            stop = min(done + batch_size, total)
            energy, field = ed.energy_and_field(spins[done:stop].to(device or "cpu"))
            f["energy"][done:stop] = energy.cpu().numpy()
            f["field"][done:stop] = field.cpu().numpy()
            f.flush()
            f.attrs["num_done"] = stop  # only after the labels are on disk
            f.flush()
            bar.update(stop - done)
            done = stop
        bar.close()
    return path


def _open(path: Path, mode: str, what: str = "data set"):
    h5py = _h5py()
    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise ValueError(f"cannot {'read' if mode == 'r' else 'open'} {what} {path}: {err}") from None


def _create(path: Path, graph: HoppingGraph, settings: dict, spins: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a file that exists under its name is always well-formed
    with atomic_path(path) as tmp, _h5py().File(tmp, "w") as f:
        _fill(f, graph, settings, spins)


def _fill(f, graph: HoppingGraph, settings: dict, spins: torch.Tensor) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["edge_classes"] = json.dumps(graph.edge_classes)
    for key, value in settings.items():
        f.attrs[key] = value
    f.attrs["num_done"] = 0
    m, n = spins.shape[:2]
    f.create_dataset("spins", data=spins.numpy())
    f.create_dataset("energy", data=np.full(m, np.nan))
    f.create_dataset("field", data=np.full((m, n, 3), np.nan), chunks=(1, n, 3))
    g = f.create_group("graph")
    for key in _GRAPH_KEYS:
        g.create_dataset(key, data=getattr(graph, key).numpy())
    g.attrs["point_group"] = POINT_GROUP


def _check_settings(f, path: Path, settings: dict, spins: torch.Tensor) -> None:
    if f.attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not a klmgraph data set; choose another path or overwrite=True "
                         "(klmgraph generate --overwrite)")
    for key, value in settings.items():
        stored = f.attrs.get(key)
        if isinstance(stored, bytes):
            stored = stored.decode()
        if stored != value and not (isinstance(value, int) and stored is not None and int(stored) == value):
            raise ValueError(f"{path} exists with different {key} ({stored} vs {value}); "
                             "choose another path or pass overwrite=True (klmgraph generate --overwrite)")
    if not np.array_equal(f["spins"][()], spins.numpy()):
        raise ValueError(f"{path} exists with different spin configurations; choose another path or "
                         "overwrite=True (klmgraph generate --overwrite)")


class SpinDataset(torch.utils.data.Dataset):
    """Labelled spin configurations on one graph; items are PyG ``Data`` ready to batch.

    Attributes:
        graph: the :class:`HoppingGraph`.
        spins: (M, N, 3); energy: (M,); field: (M, N, 3) (float64).
        hamiltonian: dict of the ED parameters.
        provenance: dict of (M,) int64 tensors ``iteration``, ``condition``, ``step`` and the
            list ``conditions`` (see the module docstring), or None.

    Each item is a shallow copy of the graph with ``spins`` (N, 3), ``energy`` (1,) and
    ``field`` (N, 3), so ``torch_geometric.loader.DataLoader`` batches them.
    """

    def __init__(self, graph: HoppingGraph, spins: torch.Tensor, energy: torch.Tensor, field: torch.Tensor,
                 hamiltonian: dict | None = None, provenance: dict | None = None):
        if spins.shape != field.shape or spins.shape[:1] != energy.shape or spins.shape[1] != graph.num_nodes:
            raise ValueError(f"inconsistent shapes: spins {tuple(spins.shape)}, energy {tuple(energy.shape)}, "
                             f"field {tuple(field.shape)} on a graph of {graph.num_nodes} sites")
        self.graph, self.spins, self.energy, self.field = graph, spins, energy, field
        self.hamiltonian = dict(hamiltonian or {})
        self.provenance = provenance

    def __len__(self) -> int:
        return len(self.spins)

    def __getitem__(self, index: int) -> HoppingGraph:
        data = copy.copy(self.graph)
        data.spins = self.spins[index]
        data.energy = self.energy[index].reshape(1)
        data.field = self.field[index]
        return data


def load_dataset(path: str | Path, graph: HoppingGraph | None = None, allow_partial: bool = False) -> SpinDataset:
    """Read a data set written by :func:`generate_dataset`.

    Args:
        path: the HDF5 file.
        graph: if given, the data set must have been generated on this lattice.
        allow_partial: read the complete samples of an unfinished file instead of refusing it.

    Raises:
        ValueError: unreadable or foreign file, unfinished file, or another lattice.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data set {path} does not exist")
    with _open(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a klmgraph data set (no format attribute '{FORMAT}')")
        if int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise ValueError(f"{path} has format version {f.attrs['format_version']}; this klmgraph reads "
                             f"up to {FORMAT_VERSION}: upgrade klmgraph")
        try:
            done, total = int(f.attrs["num_done"]), int(f.attrs["num_samples"])
            description = json.loads(f.attrs["graph"])
            arrays = {key: torch.from_numpy(f["graph"][key][()]) for key in _GRAPH_KEYS}
            before_mirrors = "point_group" not in f["graph"].attrs
            classes = json.loads(f.attrs["edge_classes"])
            hamiltonian = json.loads(f.attrs["hamiltonian"])
            spins = torch.from_numpy(f["spins"][:done])
            energy = torch.from_numpy(f["energy"][:done])
            field = torch.from_numpy(f["field"][:done])
            provenance = None
            if "provenance" in f:
                provenance = {key: torch.from_numpy(f["provenance"][key][:done]) for key in PROVENANCE}
                provenance["conditions"] = json.loads(f["provenance"].attrs["conditions"])
        except KeyError as err:
            raise ValueError(f"{path} is damaged: missing {err}") from None
    if done < total and not allow_partial:
        raise ValueError(f"{path} is unfinished ({done} of {total} samples): run generate on it again "
                         "to resume, or pass allow_partial=True")
    stored = HoppingGraph(**arrays, num_nodes=arrays["pos"].shape[0])
    stored.edge_classes = classes
    stored.description = description
    if graph is None and before_mirrors and "vectors" in description:
        # written before mirrors joined the point group (2026-12-04): its rotations alone, so
        # training on it would augment with only part of the operations the labels obey
        current = graph_from_description(description)
        if torch.equal(current.pos, stored.pos):
            stored.symmetry_perm, stored.symmetry_rotation = current.symmetry_perm, current.symmetry_rotation
    if graph is not None and not graph.same_lattice(description):
        raise ValueError(f"{path} was generated on {stored.describe()}, not on {graph.describe()}")
    if not (torch.isfinite(energy).all() and torch.isfinite(field).all()):
        raise ValueError(f"{path} holds non-finite labels among its complete samples: the file is damaged")
    return SpinDataset(graph if graph is not None else stored, spins, energy, field, hamiltonian, provenance)


def merge_datasets(path: str | Path, parts: list, conditions: list | None = None) -> Path:
    """Write complete data sets of one lattice and Hamiltonian into one file, with provenance.

    Args:
        path: the new file (written under a temporary name and renamed: all or nothing).
        parts: list of (data set path, provenance) pairs; provenance is None (random
            configurations: iteration, condition and step -1), a dict of (M,) sequences
            ``iteration``/``condition``/``step`` for that file's configurations, or "stored"
            (take the file's own provenance group).
        conditions: JSON-able descriptions of the conditions the indices refer to.

    Raises:
        ValueError: for parts of other lattices or Hamiltonians, or provenance of a wrong length.
    """
    path = Path(path)
    sets = [load_dataset(p) for p, _ in parts]
    first = sets[0]
    for (p, _), d in zip(parts, sets):
        if not first.graph.same_lattice(d.graph.description) or d.graph.num_nodes != first.graph.num_nodes \
                or d.hamiltonian != first.hamiltonian:
            raise ValueError(f"{p} holds another lattice or Hamiltonian than {parts[0][0]}")
    columns = {key: [] for key in PROVENANCE}
    for (p, prov), d in zip(parts, sets):
        if prov == "stored":
            prov = d.provenance
        for key in PROVENANCE:
            values = torch.full((len(d),), -1, dtype=torch.long) if prov is None else torch.as_tensor(prov[key])
            if values.shape != (len(d),):
                raise ValueError(f"provenance {key} of {p} has {values.numel()} entries for {len(d)} configurations")
            columns[key].append(values.long())
    spins = torch.cat([d.spins for d in sets])
    with _open(parts[0][0], "r") as f:
        settings = {key: f.attrs[key] for key in ("graph", "hamiltonian")}
    settings.update(num_samples=len(spins), source="merged", seed=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with _h5py().File(tmp, "w") as f:
            _fill(f, first.graph, settings, spins)
            f["energy"][:] = torch.cat([d.energy for d in sets]).numpy()
            f["field"][:] = torch.cat([d.field for d in sets]).numpy()
            g = f.create_group("provenance")
            g.attrs["conditions"] = json.dumps(conditions or [])
            for key, values in columns.items():
                g.create_dataset(key, data=torch.cat(values).numpy())
            f.attrs["num_done"] = len(spins)
    return path


def read_spins(path: str | Path, graph: HoppingGraph | None = None) -> torch.Tensor:
    """Spin configurations from .npy, .npz (key 'spins') or HDF5 (data set 'spins'; of a
    trajectory, the committed snapshots only): (M, N, 3) float64.

    With ``graph``: checked to be configurations of its sites (finite, no zero spin) and
    normalised to unit length (a float32 file's spins are not quite).

    Raises:
        ValueError: for a missing or unreadable file, or configurations that do not fit ``graph``.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"spin file {path} does not exist")
    if path.suffix in (".npy", ".npz"):
        try:
            if path.suffix == ".npy":
                array = np.load(path, allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as z:
                    array = z["spins"]
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"cannot read spins from {path}: {err}") from None
    else:
        with _open(path, "r", what="spin file") as f:
            if "spins" not in f:
                raise ValueError(f"spin file {path} holds no data set 'spins'")
            # a trajectory's snapshots beyond its commit counter may be half written
            valid = int(f.attrs["num_snapshots"]) if "num_snapshots" in f.attrs else len(f["spins"])
            array = f["spins"][:valid]
    if len(array) == 0:
        raise ValueError(f"spin file {path} holds no complete configuration")
    spins = torch.as_tensor(array, dtype=torch.float64)
    spins = spins[None] if spins.dim() == 2 else spins
    if graph is None:
        return spins
    if spins.dim() != 3 or spins.shape[1:] != (graph.num_nodes, 3):
        raise ValueError(f"{path} holds configurations of shape {tuple(spins.shape[1:])}; the lattice "
                         f"({graph.describe()}) needs ({graph.num_nodes}, 3)")
    norm = spins.norm(dim=-1, keepdim=True)
    if not bool(torch.isfinite(spins).all()) or bool((norm < 1e-6).any()):
        raise ValueError(f"{path} holds a non-finite or zero spin")
    return spins / norm

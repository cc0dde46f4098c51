"""HDF5 trajectories of LLG runs: spins and observables over time, with the lattice and the
integrator's settings stored next to them so a file says what it holds.

Layout (format version 1), M records of one configuration or a batch of B:

==========================  =====================  ==========================================
dataset                     shape                  meaning
==========================  =====================  ==========================================
``time``                    (M,) float64           t = step * dt + start_time
``step``                    (M,) int64             step of the record
``energy``                  (M,) or (M, B)         total energy (provider + Zeeman term)
``magnetization``           (M, 3) or (M, B, 3)    per site
``skyrmion_number``         (M,) or (M, B)         total, Berg-Luscher (2D lattices only)
``spins``                   (M, N, 3) or           every ``spins_every``-th record only
                            (M', B, N, 3)          (``spins_step`` holds their steps)
==========================  =====================  ==========================================

File attributes: ``format`` ("klmgraph-trajectory"), ``format_version``, ``klmgraph_version``,
``graph`` (the graph description as JSON), ``llg`` (dt, alpha, temperature, field, integrator,
iterations as JSON), and ``metadata`` (JSON of anything the user passes).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import h5py
import numpy as np
import torch

from .graph import HoppingGraph
from .measure import skyrmion_number

__all__ = ["TrajectoryWriter", "Trajectory", "read_trajectory"]

FORMAT = "klmgraph-trajectory"
FORMAT_VERSION = 1


class TrajectoryWriter:
    """Append LLG records to an HDF5 file; use it as the ``callback`` of :meth:`LLG.run`.

    Args:
        path: file to create (an existing file is refused unless ``overwrite``).
        graph: the lattice graph (its description is stored; skyrmion numbers use it).
        llg: the :class:`~klmgraph.LLG` integrator (settings stored; its dt converts steps to
            times).
        spins_every: store the configuration at every this-many-th record (0: never; the
            observables are stored at every record).
        skyrmions: also store skyrmion numbers (default: when the graph is a 2D lattice).
        start_time: time of step 0 (to continue a run in a new file).
        metadata: JSON-able dict stored as the ``metadata`` attribute.
        overwrite: replace an existing file.
        dtype: storage dtype of the spins (float32 halves the file; observables stay float64).

    Example::

        with klmgraph.TrajectoryWriter("run.h5", graph, llg, spins_every=10) as writer:
            llg.run(spins, steps=10000, record_every=100, callback=writer, seed=0)
    """

    def __init__(self, path, graph: HoppingGraph, llg, spins_every: int = 1, skyrmions: bool | None = None,
                 start_time: float = 0.0, metadata: dict | None = None, overwrite: bool = False,
                 dtype=np.float32):
        if not isinstance(spins_every, int) or spins_every < 0:
            raise ValueError(f"spins_every must be a non-negative integer, got {spins_every!r}")
        if not math.isfinite(float(start_time)):
            raise ValueError(f"start_time must be finite, got {start_time}")
        self.graph = graph
        self.llg = llg
        self.spins_every = spins_every
        self.start_time = float(start_time)
        self.dtype = np.dtype(dtype)
        vectors = graph.description.get("vectors", [])
        can = len(vectors) == 2
        if skyrmions and not can:
            raise ValueError("skyrmion numbers need a 2D lattice graph")
        self.skyrmions = can if skyrmions is None else bool(skyrmions)
        self._file = h5py.File(path, "w" if overwrite else "w-")
        attrs = self._file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        from . import __version__
        attrs["klmgraph_version"] = __version__
        attrs["graph"] = json.dumps(graph.description, sort_keys=True)
        attrs["llg"] = json.dumps({"dt": llg.dt, "alpha": llg.alpha, "temperature": llg.temperature,
                                   "field": list(llg.field), "integrator": llg.integrator,
                                   "iterations": llg.iterations, "provider": repr(llg.provider)})
        attrs["metadata"] = json.dumps(metadata or {})
        self._records = 0

    def _append(self, name: str, value: np.ndarray, dtype) -> None:
        value = np.asarray(value, dtype=dtype)
        if name not in self._file:
            self._file.create_dataset(name, shape=(0, *value.shape), maxshape=(None, *value.shape),
                                      dtype=dtype, chunks=(1, *value.shape) if value.size > 4096 else True)
        ds = self._file[name]
        if ds.shape[1:] != value.shape:
            raise ValueError(f"record of {name} has shape {value.shape}; the file holds {ds.shape[1:]} "
                             "(one writer per configuration shape)")
        ds.resize(ds.shape[0] + 1, axis=0)
        ds[-1] = value

    def __call__(self, step: int, spins: torch.Tensor, energy: torch.Tensor) -> None:
        """Write one record (the signature of :meth:`LLG.run`'s callback).

        Shapes:
            spins: (N, 3) or (B, N, 3); energy: () or (B,)
        """
        if self._file is None:
            raise ValueError("the trajectory file is closed")
        spins = spins.detach()
        self._append("step", int(step), np.int64)
        self._append("time", self.start_time + step * self.llg.dt, np.float64)
        self._append("energy", energy.detach().cpu().double().numpy(), np.float64)
        self._append("magnetization", spins.mean(-2).cpu().double().numpy(), np.float64)
        if self.skyrmions:
            self._append("skyrmion_number", skyrmion_number(self.graph, spins).cpu().double().numpy(),
                         np.float64)
        if self.spins_every and self._records % self.spins_every == 0:
            self._append("spins", spins.cpu().numpy(), self.dtype)
            self._append("spins_step", int(step), np.int64)
        self._records += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Trajectory:
    """A trajectory read back by :func:`read_trajectory` (numpy arrays; see the module table).

    Attributes:
        time, step, energy, magnetization, skyrmion_number (None if not stored),
        spins and spins_step (None if not stored), graph (description dict), llg (settings
        dict), metadata (dict).
    """

    time: np.ndarray
    step: np.ndarray
    energy: np.ndarray
    magnetization: np.ndarray
    skyrmion_number: np.ndarray | None
    spins: np.ndarray | None
    spins_step: np.ndarray | None
    graph: dict
    llg: dict
    metadata: dict

    @property
    def num_sites(self) -> int:
        """N, from the graph description's size and basis (or the stored spins)."""
        if self.spins is not None:
            return self.spins.shape[-2]
        return int(np.prod(self.graph["size"])) * len(self.graph.get("basis", [0]))


def read_trajectory(path) -> Trajectory:
    """Read a file written by :class:`TrajectoryWriter`.

    Raises:
        ValueError: if the file is not a klmgraph trajectory or has a newer format version.
    """
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a klmgraph trajectory (format attribute "
                             f"{f.attrs.get('format')!r})")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"{path} has trajectory format {version}; this klmgraph reads up to "
                             f"{FORMAT_VERSION}: upgrade klmgraph")

        def get(name):
            return f[name][()] if name in f else None

        return Trajectory(time=get("time"), step=get("step"), energy=get("energy"),
                          magnetization=get("magnetization"), skyrmion_number=get("skyrmion_number"),
                          spins=get("spins"), spins_step=get("spins_step"),
                          graph=json.loads(f.attrs["graph"]), llg=json.loads(f.attrs["llg"]),
                          metadata=json.loads(f.attrs["metadata"]))

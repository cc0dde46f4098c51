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
``spins``                   (M', N, 3) or          every ``spins_every``-th record only
                            (M', B, N, 3)          (``spins_step`` holds their steps)
``rng_state``               (M', bytes) uint8      state of the noise generator at each snapshot
                                                   (only when the writer was given it)
any other name              (M,) or (M, B)         extra observables passed to the writer, e.g.
                                                   a committee's ``predicted_field_error``
                                                   (RMS over sites) and
                                                   ``predicted_field_error_max``
==========================  =====================  ==========================================

Configurations of more than 4096 numbers are stored in chunks of one snapshot and at most 2^16
sites, byte-shuffled and deflated (gzip level 1; any HDF5 reader decompresses them, and older
uncompressed files read and continue as before).

File attributes: ``format`` ("klmgraph-trajectory"), ``format_version``, ``klmgraph_version``,
``graph`` (the graph description as JSON), ``llg`` (dt, alpha, temperature, field, integrator,
iterations as JSON), ``metadata`` (JSON of anything the user passes), and the commit counters
``num_records`` and ``num_snapshots``.

Writing: the observables of every record are computed on the run's device and kept there; the
writer copies them to the host and appends them to the file together, once per snapshot (and
on ``flush``/``close``), so a step costs no host synchronisation and no HDF5 write.

Consistency: the counters are advanced only after the data they count are flushed (at every
snapshot and on closing), and readers ignore anything beyond them, so a run killed between
two snapshots leaves a file that reads as the run up to its last commit. A writer opened with
``resume=True`` cuts the file back to its last snapshot and continues from there: with the
generator state stored next to the snapshot, the continued run draws the same noise as an
uninterrupted one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .graph import HoppingGraph
from .measure import solid_angle_sum, triangles_on

__all__ = ["TrajectoryWriter", "Trajectory", "Snapshot", "read_trajectory", "last_snapshot", "snapshot_at",
           "stored_metadata"]

FORMAT = "klmgraph-trajectory"


def _h5py():
    # imported on first use: h5py is a quarter of klmgraph's own import time
    import h5py

    return h5py

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
                 dtype=np.float32, generator: torch.Generator | None = None, resume: bool = False,
                 final_step: int | None = None):
        if not isinstance(spins_every, int) or spins_every < 0:
            raise ValueError(f"spins_every must be a non-negative integer, got {spins_every!r}")
        if not math.isfinite(float(start_time)):
            raise ValueError(f"start_time must be finite, got {start_time}")
        if resume and overwrite:
            raise ValueError("give resume or overwrite, not both")
        self.graph = graph
        self.llg = llg
        self.spins_every = spins_every
        self.start_time = float(start_time)
        self.dtype = np.dtype(dtype)
        self.generator = generator
        self.final_step = final_step
        vectors = graph.description.get("vectors", [])
        can = len(vectors) == 2
        if skyrmions and not can:
            raise ValueError("skyrmion numbers need a 2D lattice graph")
        self.skyrmions = can if skyrmions is None else bool(skyrmions)
        from . import __version__
        self._settings = {"graph": json.dumps(graph.description, sort_keys=True),
                          "llg": json.dumps(_llg_settings(llg)), "metadata": json.dumps(metadata or {})}
        self._records = 0
        self._pending = []  # records not yet in the file: (step, time, energy, magnetization[, n_sk], *extra)
        self._extra_names = None  # names of the extra observables, fixed by the first record
        self._triangles = None  # (T, 3) on the spins' device, made at the first record
        self._since_snapshot = 0
        self._skip_snapshot_at = None
        self.last_snapshot: Snapshot | None = None
        self._file = None
        path = Path(path)
        if resume and path.exists():
            self._file = _open(path, "r+")
            self._resume(path)
            return
        self._file = _h5py().File(path, "w" if overwrite else "w-")
        attrs = self._file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["klmgraph_version"] = __version__
        for key, value in self._settings.items():
            attrs[key] = value
        attrs["num_records"] = 0
        attrs["num_snapshots"] = 0
        self._file.flush()

    def _resume(self, path: Path) -> None:
        """Check that the file holds this run, read its last snapshot and cut it back to there."""
        f = self._file
        if f.attrs.get("format") != FORMAT:
            self.close()
            raise ValueError(f"{path} is not a klmgraph trajectory; choose another path")
        for key, mine in self._settings.items():
            stored = f.attrs.get(key)
            if key == "llg":  # the provider's repr may hold a memory address: compare the rest
                stored, mine = (json.dumps({k: v for k, v in json.loads(x).items() if k != "provider"},
                                           sort_keys=True) for x in (stored, mine))
            if stored != mine:
                self.close()
                raise ValueError(f"{path} holds a run with other {key} settings ({stored} vs {mine}): "
                                 "resume it with the same settings, or overwrite it / choose another path")
        records, snapshots = _committed(f)
        if snapshots:
            k = snapshots - 1
            step = int(f["spins_step"][k])
            rng = f["rng_state"][k] if "rng_state" in f and len(f["rng_state"]) > k else None
            self.last_snapshot = Snapshot(step=step, spins=torch.from_numpy(f["spins"][k]),
                                          rng_state=None if rng is None else torch.from_numpy(rng))
            # the record of the snapshot's step is written again by the continued run
            steps = f["step"][:records]
            records = int(np.searchsorted(steps, step)) if len(steps) else 0
            self._skip_snapshot_at = step
        else:
            records = 0
        for name in list(f):
            if name in ("spins", "spins_step", "rng_state"):
                f[name].resize(snapshots, axis=0)
            else:
                f[name].resize(records, axis=0)
        self._records = records
        self._commit()

    def _write_pending(self) -> None:
        """Append the buffered records: one host copy and one write per dataset."""
        if not self._pending:
            return
        steps, times, *observables = zip(*self._pending)
        self._pending = []
        sizes = [o[0].numel() for o in observables]
        # one transfer for every record and observable: (records, sum of sizes) float64
        flat = torch.stack([torch.cat([o.reshape(-1).double() for o in rec]) for rec in zip(*observables)])
        flat = flat.cpu().numpy()
        shapes = [tuple(o[0].shape) for o in observables]
        self._extend("step", np.asarray(steps, dtype=np.int64), np.int64)
        self._extend("time", np.asarray(times, dtype=np.float64), np.float64)
        names = (["energy", "magnetization", "skyrmion_number"][:2 + self.skyrmions]
                 + list(self._extra_names or []))
        offset = 0
        for name, size, shape in zip(names, sizes, shapes):
            self._extend(name, flat[:, offset:offset + size].reshape(len(steps), *shape), np.float64)
            offset += size

    def _commit(self) -> None:
        """Flush the data, then advance the counters that make them valid."""
        self._write_pending()
        self._file.flush()
        self._file.attrs["num_records"] = self._records
        self._file.attrs["num_snapshots"] = len(self._file["spins_step"]) if "spins_step" in self._file else 0
        self._file.flush()

    def _append(self, name: str, value: np.ndarray, dtype) -> None:
        value = np.asarray(value, dtype=dtype)
        self._extend(name, value[None], dtype)

    def _extend(self, name: str, values: np.ndarray, dtype) -> None:
        """Append the rows ``values`` (M, ...) to dataset ``name``: one resize and one write."""
        values = np.asarray(values, dtype=dtype)
        shape = values.shape[1:]
        if name not in self._file:
            options = {"chunks": True}
            if values[0].size > 4096:
                # large configurations: chunks of at most 2^16 sites (an HDF5 chunk is read whole;
                # the limit is 4 GB), byte-shuffled and deflated (readers need nothing extra)
                rows = min(shape[-2], 2 ** 16) if len(shape) >= 2 else shape[-1]
                options = {"chunks": (1, *shape[:-2], rows, shape[-1]) if len(shape) >= 2 else (1, *shape),
                           "compression": "gzip", "compression_opts": 1, "shuffle": True}
            self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, **options)
        ds = self._file[name]
        if ds.shape[1:] != shape:
            raise ValueError(f"record of {name} has shape {shape}; the file holds {ds.shape[1:]} "
                             "(one writer per configuration shape)")
        ds.resize(ds.shape[0] + len(values), axis=0)
        ds[-len(values):] = values

    def __call__(self, step: int, spins: torch.Tensor, energy: torch.Tensor, extra: dict | None = None,
                 snapshot: bool = False) -> None:
        """Write one record (the signature of :meth:`LLG.run`'s callback).

        Args:
            extra: further observables of this record, name -> tensor of energy's shape; every
                record of a file must give the same names.
            snapshot: store the spins now, whatever ``spins_every`` says (e.g. a run stopping
                at this record).

        Shapes:
            spins: (N, 3) or (B, N, 3); energy: () or (B,)
        """
        if self._file is None:
            raise ValueError("the trajectory file is closed")
        spins = spins.detach()
        if self._pending and tuple(self._pending[0][3].shape) != tuple(spins.shape[:-2]) + (3,):
            raise ValueError(f"record of spins of shape {tuple(spins.shape)} after records of "
                             f"{tuple(self._pending[0][3].shape[:-1])} configurations (one writer per "
                             "configuration shape)")
        observables = [torch.as_tensor(energy).detach().to(spins.device), spins.mean(-2)]
        if self.skyrmions:
            # the spins come from the integrator, validated at its start: no per-record check
            if self._triangles is None:
                self._triangles = triangles_on(self.graph, spins.device)
            observables.append(solid_angle_sum(spins, self._triangles) / (4 * math.pi))
        self._add(step, observables, spins, extra, snapshot)

    def wants_spins(self, step: int) -> bool:
        """Whether the record of ``step`` (the next one) stores the configuration."""
        return self._snapshot_due(step) and step != self._skip_snapshot_at

    def _snapshot_due(self, step: int) -> bool:
        return bool(self.spins_every) and (self._since_snapshot % self.spins_every == 0 or step == self.final_step)

    def record(self, step: int, energy: torch.Tensor, magnetization: torch.Tensor,
               skyrmion_number: torch.Tensor | None = None, spins: torch.Tensor | None = None) -> None:
        """Write one record whose observables were computed elsewhere (the processes of a split
        lattice reduce them; :mod:`klmgraph.distributed`).

        Args:
            step: the step.
            energy: total energy; magnetization: (3,) per site; skyrmion_number: total (when
                the writer stores them).
            spins: the configuration, needed when :meth:`wants_spins` says so.

        Shapes:
            energy (), magnetization (3,), skyrmion_number (), spins (N, 3)
        """
        if self._file is None:
            raise ValueError("the trajectory file is closed")
        if self.skyrmions and skyrmion_number is None:
            raise ValueError("this trajectory stores skyrmion numbers: give skyrmion_number")
        if spins is None and self.wants_spins(step):
            raise ValueError(f"the record of step {step} stores the spins: give them")
        observables = [torch.as_tensor(energy), torch.as_tensor(magnetization)]
        if self.skyrmions:
            observables.append(torch.as_tensor(skyrmion_number))
        self._add(step, [o.detach().to(observables[0].device) for o in observables], spins)

    def _add(self, step: int, observables: list, spins: torch.Tensor | None, extra: dict | None = None,
             snapshot: bool = False) -> None:
        names = tuple(extra or ())
        if self._extra_names is None:
            self._extra_names = names
        elif names != self._extra_names:
            raise ValueError(f"record with extra observables {list(names)} after records with "
                             f"{list(self._extra_names)} (every record must give the same)")
        observables = observables + [torch.as_tensor(extra[k]).detach().to(observables[0].device) for k in names]
        self._pending.append((int(step), self.start_time + step * self.llg.dt, *observables))
        self._records += 1
        if snapshot or self._snapshot_due(step):
            if step != self._skip_snapshot_at:  # a resumed run starts on a stored snapshot
                self._append("spins", spins.detach().cpu().numpy(), self.dtype)
                self._append("spins_step", int(step), np.int64)
                if self.generator is not None:
                    self._append("rng_state", self.generator.get_state().cpu().numpy(), np.uint8)
            self._since_snapshot = 0
            self._commit()
        self._since_snapshot += 1

    def flush(self) -> None:
        """Flush and commit every record written so far."""
        self._commit()

    def close(self) -> None:
        if self._file is not None:
            if self._file.mode != "r":
                self._commit()
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _llg_settings(llg) -> dict:
    return {"dt": llg.dt, "alpha": llg.alpha, "temperature": llg.temperature,
            "field": list(llg.field), "integrator": llg.integrator,
            "iterations": llg.iterations, "provider": repr(llg.provider)}


def _open(path, mode: str):
    try:
        return _h5py().File(path, mode)
    except OSError as err:
        raise ValueError(f"cannot open trajectory {path} ({err}); if it is damaged, overwrite it") from None


def _committed(f) -> tuple[int, int]:
    """(records, snapshots) that are valid: the counters, or everything in files without them."""
    records = len(f["step"]) if "step" in f else 0
    snapshots = min(len(f["spins_step"]), len(f["spins"])) if "spins_step" in f else 0
    records = min(records, int(f.attrs.get("num_records", records)))
    snapshots = min(snapshots, int(f.attrs.get("num_snapshots", snapshots)))
    if "rng_state" in f:
        snapshots = min(snapshots, len(f["rng_state"]))
    return records, snapshots


@dataclass
class Snapshot:
    """A stored configuration to continue a run from.

    Attributes:
        step: its step.
        spins: (N, 3) or (B, N, 3) in the stored dtype.
        rng_state: the noise generator's state before that step's noise (uint8), or None.
    """

    step: int
    spins: torch.Tensor
    rng_state: torch.Tensor | None


def stored_metadata(path) -> dict | None:
    """The ``metadata`` attribute of a klmgraph trajectory (None if the file is not one)."""
    try:
        with _h5py().File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                return None
            return json.loads(f.attrs.get("metadata", "{}"))
    except (OSError, ValueError):
        return None


def last_snapshot(path) -> Snapshot | None:
    """The last committed snapshot of a trajectory file (None if it holds none)."""
    with _open(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a klmgraph trajectory")
        _, k = _committed(f)
        if not k:
            return None
        rng = f["rng_state"][k - 1] if "rng_state" in f else None
        return Snapshot(step=int(f["spins_step"][k - 1]), spins=torch.from_numpy(f["spins"][k - 1]),
                        rng_state=None if rng is None else torch.from_numpy(rng))


def snapshot_at(path, step: int | None = None) -> tuple[Snapshot, dict]:
    """One committed snapshot (default: the last) and the graph description, reading only it
    (a large run's file holds many).

    Raises:
        ValueError: if the file is not a trajectory, holds no snapshot, or none at ``step``
            (the message lists the stored steps).
    """
    with _open(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a klmgraph trajectory")
        _, k = _committed(f)
        if not k:
            raise ValueError(f"{path} holds no snapshot")
        steps = f["spins_step"][:k]
        if step is None:
            index = k - 1
        else:
            found = np.nonzero(steps == int(step))[0]
            if not len(found):
                shown = ", ".join(map(str, steps[:10])) + (", ..." if k > 10 else "")
                raise ValueError(f"{path} holds no snapshot at step {step}; its snapshots are at steps {shown} "
                                 f"(last {int(steps[-1])})")
            index = int(found[0])
        return (Snapshot(step=int(steps[index]), spins=torch.from_numpy(f["spins"][index]), rng_state=None),
                json.loads(f.attrs["graph"]))


@dataclass
class Trajectory:
    """A trajectory read back by :func:`read_trajectory` (numpy arrays; see the module table).

    Attributes:
        time, step, energy, magnetization, skyrmion_number (None if not stored),
        spins and spins_step (None if not stored), graph (description dict), llg (settings
        dict), metadata (dict), extra (dict name -> array of further observables, e.g. a
        committee's ``predicted_field_error``).
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
    extra: dict = None

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
    with _h5py().File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a klmgraph trajectory (format attribute "
                             f"{f.attrs.get('format')!r})")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"{path} has trajectory format {version}; this klmgraph reads up to "
                             f"{FORMAT_VERSION}: upgrade klmgraph")

        records, snapshots = _committed(f)

        def get(name):
            if name not in f:
                return None
            return f[name][:snapshots] if name in ("spins", "spins_step") else f[name][:records]

        standard = {"time", "step", "energy", "magnetization", "skyrmion_number", "spins", "spins_step",
                    "rng_state"}
        return Trajectory(time=get("time"), step=get("step"), energy=get("energy"),
                          magnetization=get("magnetization"), skyrmion_number=get("skyrmion_number"),
                          spins=get("spins"), spins_step=get("spins_step"),
                          graph=json.loads(f.attrs["graph"]), llg=json.loads(f.attrs["llg"]),
                          metadata=json.loads(f.attrs["metadata"]),
                          extra={name: get(name) for name in f if name not in standard})

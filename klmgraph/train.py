"""Training a model on ED data sets: configuration, loss, trainer with checkpoints, evaluation.

Loss (Miyazaki 2023, eq. 7): mean squared error of the field components plus
``energy_weight`` (lambda) times the squared error of the energy per site,

    L = < (B_pred - B_ED)^2 >_{configs, sites, components} + lambda < ((E_pred - E_ED) / N)^2 >_configs,

with B_pred = -dE_pred/dS by autograd (double backward during training). The paper uses
lambda = 0 for the square model and 1 for the triangular one.

A run folder holds ``config.json`` (the fully resolved configuration), ``augmentation.json``
(the point-group operations the augmentation draws from, written at the start), ``log.csv`` (one row
per epoch), ``last.pt`` (training state, for resuming), and ``best.pt`` / ``final.pt`` (models
readable by :func:`klmgraph.load_model`). Every file is written to a temporary name and
renamed, so an interrupted run never leaves a half-written checkpoint.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch_geometric.data import Batch

from .data import SpinDataset, load_dataset
from .files import atomic_path
from .nn.forces import compute_field
from .spins import transverse_part

__all__ = ["DataConfig", "ModelConfig", "OptimizerConfig", "TrainingConfig", "RunConfig",
           "load_config", "train", "evaluate", "loss_terms", "augment", "augmentation_record", "recorded_augmentation",
           "load_matching_model"]


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class DataConfig:
    """[data]: where the ED data sets are.

    Attributes:
        train: training data set (HDF5 from ``klmgraph generate``). Required.
        validation: validation data set (default: none, see validation_fraction).
        validation_fraction: share of the training set held out for validation when no
            validation file is given (default 0.0: validate on nothing, monitor the training loss).
        augment: apply a random point-group operation of the lattice, a rotation or a mirror (a
            site permutation, to spins and fields together), to every training configuration
            each epoch (default true).
    """

    train: str = ""
    validation: str = ""
    validation_fraction: float = 0.0
    augment: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """[model]: ``type`` = "ecnn" (default) or "ifnn"; every other key is a hyper-parameter of
    that model (see :class:`klmgraph.ECNN` and :class:`klmgraph.nn.IFNN`; defaults: published),
    except two that make a committee (:class:`klmgraph.nn.committee.Committee`):

    Attributes:
        committee: number of members M (default 1: one network). Members differ in their
            initial weights, shuffling and augmentation; all train together in one batched loop.
        bootstrap: each member trains on its own resampling (with replacement) of the training
            set (default false).
        threshold_margin: the committee's uncertainty thresholds are this factor times the largest
            predicted RMSE of B of a training configuration, and of a site (default 1.1).
    """

    type: str = "ecnn"
    params: dict = field(default_factory=dict)
    committee: int = 1
    bootstrap: bool = False
    threshold_margin: float = 1.1


@dataclass(frozen=True)
class OptimizerConfig:
    """[optimizer]

    Attributes:
        name: "adagrad" (default, the paper's) or "adam".
        lr: learning rate (default 0.1, the paper's AdaGrad rate; use ~1e-3 with adam).
        schedule: "plateau" (default: multiply lr by plateau_factor after plateau_patience epochs
            without improvement, the paper's), "cosine", "onecycle" or "none".
        plateau_patience: epochs without improvement before the lr drops (default 20).
        plateau_factor: lr factor of a drop (default 0.5).
        early_stopping: stop after this many epochs without improvement (default 100; 0 = never).
        weight_decay: L2 penalty (default 0).
    """

    name: str = "adagrad"
    lr: float = 0.1
    schedule: str = "plateau"
    plateau_patience: int = 20
    plateau_factor: float = 0.5
    early_stopping: int = 100
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    """[training]

    Attributes:
        out: run folder (default "klmgraph-run").
        epochs: maximum number of epochs (default 1000).
        minutes: wall-clock budget in minutes, checked after each epoch (default 0 = none).
        batch_size: configurations per optimizer step (default 1).
        energy_weight: lambda, weight of the energy-per-site term (default 0.0).
        dtype: "float32" (default) or "float64".
        device: "cpu" (default), "cuda", "cuda:1", ...
        seed: seed of the initial weights, shuffling and augmentation (default 0).
        threads: torch CPU threads (default 0: torch's choice, one per core). On a machine that
            other jobs share, 1 is often several times faster than competing for every core.
        deterministic: sums without atomic additions, so a run on a GPU is bit-identical when
            repeated (ECNN on lattice graphs; refused with a message elsewhere). Default false.
        init: a model file whose weights start the run (fine-tuning; default "": fresh weights
            from ``seed``). It must be the configured model: same type, hyper-parameters and
            committee size.
    """

    out: str = "klmgraph-run"
    epochs: int = 1000
    minutes: float = 0.0
    batch_size: int = 1
    energy_weight: float = 0.0
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    threads: int = 0
    deterministic: bool = False
    init: str = ""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self):
        if not self.data.train:
            raise ValueError("[data] train: a training data set is required")
        if not 0.0 <= self.data.validation_fraction < 1.0:
            raise ValueError(f"[data] validation_fraction must lie in [0, 1), got {self.data.validation_fraction}")
        m = self.model
        if isinstance(m.committee, bool) or not isinstance(m.committee, int) or m.committee < 1:
            raise ValueError(f"[model] committee must be an integer >= 1 (members), got {m.committee!r}")
        if not isinstance(m.bootstrap, bool):
            raise ValueError(f"[model] bootstrap must be true or false, got {m.bootstrap!r}")
        if m.bootstrap and m.committee == 1:
            raise ValueError("[model] bootstrap needs committee >= 2 (it resamples the data per member)")
        if not m.threshold_margin >= 1.0:
            raise ValueError(f"[model] threshold_margin must be >= 1, got {m.threshold_margin}")
        if self.model.type not in _MODEL_TYPES:
            raise ValueError(f"[model] type must be one of {sorted(_MODEL_TYPES)}, got {self.model.type!r}")
        if self.optimizer.name not in ("adagrad", "adam"):
            raise ValueError(f"[optimizer] name must be 'adagrad' or 'adam', got {self.optimizer.name!r}")
        if self.optimizer.schedule not in ("plateau", "cosine", "onecycle", "none"):
            raise ValueError("[optimizer] schedule must be 'plateau', 'cosine', 'onecycle' or 'none', "
                             f"got {self.optimizer.schedule!r}")
        if not self.optimizer.lr > 0:
            raise ValueError(f"[optimizer] lr must be > 0, got {self.optimizer.lr}")
        t = self.training
        if t.epochs < 1 or t.batch_size < 1 or t.minutes < 0 or t.energy_weight < 0:
            raise ValueError("[training] needs epochs >= 1, batch_size >= 1, minutes >= 0, energy_weight >= 0")
        if t.dtype not in ("float32", "float64"):
            raise ValueError(f"[training] dtype must be 'float32' or 'float64', got {t.dtype!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = {"type": self.model.type, **self.model.params}
        # committee keys only where set: checkpoints written before them still resume
        for key, default in _COMMITTEE_KEYS.items():
            if getattr(self.model, key) != default:
                d["model"][key] = getattr(self.model, key)
        return d


_SECTIONS = {"data": DataConfig, "optimizer": OptimizerConfig, "training": TrainingConfig}
_MODEL_TYPES = ("ecnn", "ifnn")
_COMMITTEE_KEYS = {"committee": 1, "bootstrap": False, "threshold_margin": 1.1}


def check_section_keys(name: str, cls, section: dict) -> None:
    """Raise ValueError naming the keys of the TOML section ``[name]`` that the dataclass ``cls`` lacks."""
    known = {f.name for f in dataclasses.fields(cls)}
    bad = set(section) - known
    if bad:
        raise ValueError(f"unknown key(s) {sorted(bad)} in [{name}]; known keys: {sorted(known)}")


def config_from_dict(raw: dict) -> RunConfig:
    """A RunConfig from nested dicts (as read from TOML); unknown sections or keys raise ValueError."""
    unknown = set(raw) - set(_SECTIONS) - {"model"}
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: data, model, optimizer, training")
    parts = {}
    for name, cls in _SECTIONS.items():
        section = dict(raw.get(name, {}))
        check_section_keys(name, cls, section)
        parts[name] = cls(**section)
    model = dict(raw.get("model", {}))
    model_type = model.pop("type", "ecnn")
    committee = {key: model.pop(key) for key in _COMMITTEE_KEYS if key in model}
    if model_type in _MODEL_TYPES:
        _check_model_params(model_type, model)
    parts["model"] = ModelConfig(model_type, model, **committee)
    return RunConfig(**parts)


def _check_model_params(model_type: str, params: dict) -> None:
    import inspect

    cls = _model_class(model_type)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "num_classes", "edge_classes",
                                                                 "lattice", "hamiltonian", "graph"}
    bad = set(params) - allowed
    if bad:
        raise ValueError(f"unknown key(s) {sorted(bad)} in [model] for type {model_type!r}; known keys: "
                         f"{sorted(allowed)}")


def read_toml(path: str | Path) -> dict:
    """The nested dicts of a TOML file; a missing or malformed file is a ValueError naming it."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from None


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a TOML run configuration (see the dataclasses of this module for every key)."""
    path = Path(path)
    raw = read_toml(path)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    # relative data paths are relative to the config file
    for section, key in (("data", "train"), ("data", "validation"), ("training", "init")):
        value = raw.get(section, {}).get(key)
        if value and not Path(value).is_absolute():
            raw[section][key] = str(path.parent / value)
    return config_from_dict(raw)


def _model_class(model_type: str):
    from .nn import ECNN, IFNN

    return {"ecnn": ECNN, "ifnn": IFNN}[model_type]


# ------------------------------------------------------------------------------ loss, augmentation

def predict(model: torch.nn.Module, batch: Batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (num_graphs,) and fields (N_total, 3) of a batch; fields by autograd."""
    spins = batch.spins.detach().requires_grad_(True)
    batch.spins = spins
    with torch.enable_grad():
        energy = model(batch)
        field = compute_field(energy, spins, training=training)
    return energy, field


def loss_terms(energy_pred, field_pred, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error of field components and of the energy per site.

    Shapes:
        energy_pred: (num_graphs,); field_pred: (N_total, 3) -> two scalars.
    """
    sites = torch.bincount(batch.batch, minlength=batch.num_graphs).to(energy_pred)
    field_mse = ((field_pred - batch.field) ** 2).mean()
    energy_mse = (((energy_pred - batch.energy) / sites) ** 2).mean()
    return field_mse, energy_mse


def augment(items: list, generator: torch.Generator) -> list:
    """Apply a random point-group operation (from the graph's ``symmetry_perm``) to each item.

    The spin of site n moves to site perm[n], and so does its field: without spin-orbit
    coupling the ED labels of the moved configuration are the moved labels.
    """
    moved = []
    for data in items:
        perms = data.symmetry_perm
        g = int(torch.randint(len(perms), (1,), generator=generator))
        if g == 0:
            moved.append(data)
            continue
        perm = perms[g]
        new = copy.copy(data)  # shares the graph tensors; only spins and field are replaced
        new.spins = torch.empty_like(data.spins)
        new.spins[perm] = data.spins
        new.field = torch.empty_like(data.field)
        new.field[perm] = data.field
        moved.append(new)
    return moved


def augmentation_record(graph, enabled: bool) -> dict:
    """What a run's augmentation draws from, as ``<out>/augmentation.json`` records it: the number
    of point-group operations of the training graph (``symmetry_perm``), whether mirrors are among
    them (an operation whose ``symmetry_rotation`` has determinant -1), and one sentence for
    model cards. Written when a run starts, so that a card shipped later says what the model was
    trained with, not what the data set holds by then."""
    perms = getattr(graph, "symmetry_perm", None)
    operations = 1 if perms is None else int(perms.shape[0])
    applied = enabled and operations > 1
    if not applied:
        text = "none" if not enabled else "none: the training graph has no point-group operation but the identity"
        return {"applied": False, "operations": 1, "mirrors": False, "text": text}
    rotations = getattr(graph, "symmetry_rotation", None)
    # a graph built by hand may carry permutations without their Cartesian matrices
    mirrors = None if rotations is None else bool((torch.linalg.det(rotations) < 0).any())
    kind = {True: "rotations and mirrors", False: "rotations only", None: "whether mirrors are among them is not known"}
    return {"applied": True, "operations": operations, "mirrors": mirrors,
            "text": f"each configuration under a random one of the lattice's {operations} point-group operations "
                    f"({kind[mirrors]})"}


def recorded_augmentation(run_folder) -> str:
    """The sentence of ``<run_folder>/augmentation.json``, or a statement that the run left no
    record (it was trained before klmgraph wrote one, or its model was not trained there)."""
    path = Path(run_folder) / "augmentation.json"
    if not path.is_file():  # no path in the sentence: it goes into model cards shipped elsewhere
        return ("not recorded (no augmentation.json in the training run's folder: the model was trained "
                "before klmgraph recorded its augmentation, or not there)")
    return json.loads(path.read_text())["text"]


class StackedBatch:
    """Configurations of one graph as stacked tensors: what a data set of one lattice needs.

    Attributes:
        spins, field: (B, N, 3); energy: (B,); num_graphs: B.
    """

    def __init__(self, spins, field, energy):
        self.spins, self.field, self.energy = spins, field, energy
        self.num_graphs = spins.shape[0]


class StackedData:
    """A :class:`~klmgraph.SpinDataset` on the training device, once: its tensors in the model's
    dtype, the graph's neighbour table (``model.prepare``) and the inverse symmetry
    permutations. A batch is then an index into device tensors: no PyG collation, no copy of
    graph tensors and no neighbour table per step (a PyG Batch of B copies of one graph would
    rebuild a B-times larger table every step, with several host synchronisations).

    Args:
        model: the ECNN or IFNN (``prepare(graph)``, ``energy(spins, prepared)``).
        dataset: configurations on one graph.
        dtype, device: of the model.
        deterministic: a neighbour table without atomic sums (``model.prepare``).
    """

    def __init__(self, model, dataset: SpinDataset, dtype, device, deterministic: bool = False):
        self.spins = dataset.spins.to(device=device, dtype=dtype)
        self.field = dataset.field.to(device=device, dtype=dtype)
        self.energy = dataset.energy.to(device=device, dtype=dtype)
        self.num_sites = dataset.graph.num_nodes
        self.prepared = (model.prepare(dataset.graph, deterministic=True) if deterministic
                         else model.prepare(dataset.graph)).to(device)
        perms = getattr(dataset.graph, "symmetry_perm", None)
        self.num_symmetries = 0 if perms is None else len(perms)
        if perms is not None:
            # an operation moves the spin of site n to perm[n]: new[perm[n]] = old[n], a gather
            # new[m] = old[inverse[m]] (no scatter, so no atomics on a GPU)
            inverse = torch.empty_like(perms)
            inverse.scatter_(1, perms, torch.arange(perms.shape[1]).expand_as(perms))
            self.inverse = inverse.to(device)

    def batches(self, indices, batch_size, generator=None, augment_data=False):
        """StackedBatch per ``batch_size`` indices; with ``augment_data`` each configuration gets
        the operation g drawn from ``generator`` (CPU) exactly as :func:`augment` draws it.

        ``indices`` (M, n), one row per committee member, gives batches of (M, B, N, 3)."""
        indices = torch.as_tensor(indices)
        on_device = indices.to(self.spins.device)
        for start in range(0, indices.shape[-1], batch_size):
            rows = on_device[..., start:start + batch_size]
            spins, field, energy = self.spins[rows], self.field[rows], self.energy[rows]
            if augment_data and self.num_symmetries:
                g = torch.tensor([int(torch.randint(self.num_symmetries, (1,), generator=generator))
                                  for _ in range(rows.numel())])  # CPU draws, as augment() makes them
                gather = self.inverse[g.to(self.inverse.device)][..., None].expand(-1, -1, 3)  # (B', N, 3)
                gather = gather.reshape(*rows.shape, *gather.shape[1:])
                spins, field = spins.gather(-2, gather), field.gather(-2, gather)
            yield StackedBatch(spins, field, energy)


def predict_stacked(model, prepared, batch: StackedBatch, training: bool,
                    members: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (B,) and fields (B, N, 3) of configurations sharing one graph's table; with
    ``members`` (a committee) member m on batch.spins[m]: (M, B) and (M, B, N, 3)."""
    spins = batch.spins.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = model.member_energies(spins, prepared) if members else model.energy(spins, prepared)
        field = compute_field(energy, spins, training=training)
    return energy, field


def stacked_loss_terms(energy_pred, field_pred, batch: StackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`loss_terms` of a :class:`StackedBatch`. Shapes: (B,), (B, N, 3) -> two scalars."""
    field_mse = ((field_pred - batch.field) ** 2).mean()
    energy_mse = (((energy_pred - batch.energy) / batch.spins.shape[-2]) ** 2).mean()
    return field_mse, energy_mse


def _batches(dataset, indices, batch_size, dtype, device, generator=None, augment_data=False):
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start:start + batch_size]]
        if augment_data:
            items = augment(items, generator)
        # augmentation has used the symmetry permutations already; leaving them out lets graphs
        # with different numbers of symmetry operations share a batch
        batch = Batch.from_data_list(items, exclude_keys=["symmetry_perm", "symmetry_rotation"])
        for key in ("spins", "field", "energy"):
            batch[key] = batch[key].to(dtype)
        yield batch.to(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SpinDataset, batch_size: int = 4, indices=None) -> dict:
    """RMSE of the field components and of the energy per site, with the predictions.
    ``rmse_field_transverse``: the RMSE of the field error's part perpendicular to the spins
    (:func:`klmgraph.transverse_part`), the part that drives the dynamics.

    Returns:
        dict with ``rmse_field``, ``rmse_energy_per_site``, ``field_pred``/``field_true``
        (M, N, 3) and ``energy_pred``/``energy_true`` (M,) as float64 CPU tensors.
    """
    p = next(model.parameters())
    indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)
    was_training = model.training
    model.eval()
    stacked = StackedData(model, dataset, p.dtype, p.device)
    e_pred, b_pred = [], []
    for batch in stacked.batches(indices, batch_size):
        energy, field = predict_stacked(model, stacked.prepared, batch, training=False)
        e_pred.append(energy.detach())
        b_pred.append(field.detach())
    e_pred, b_pred = [torch.cat(x).double().cpu() for x in (e_pred, b_pred)]  # one copy each
    model.train(was_training)
    n = dataset.graph.num_nodes
    energy_pred, field_pred = e_pred, b_pred
    energy_true, field_true = dataset.energy[indices].double(), dataset.field[indices].double()
    transverse = transverse_part(field_pred - field_true, dataset.spins[indices].double())
    return {
        "rmse_field": float(((field_pred - field_true) ** 2).mean().sqrt()),
        "rmse_field_transverse": float(transverse.pow(2).mean().sqrt()),
        "rmse_energy_per_site": float((((energy_pred - energy_true) / n) ** 2).mean().sqrt()),
        "energy_pred": energy_pred, "energy_true": energy_true,
        "field_pred": field_pred, "field_true": field_true,
    }


# ------------------------------------------------------------------------------------- trainer

# --------------------------------------------------------------------------- committee calibration

@torch.no_grad()
def committee_spread(committee, dataset: SpinDataset, indices=None, batch_size: int = 4) -> dict:
    """The committee's mean field and uncalibrated site spread on (part of) a data set.

    Returns:
        dict with ``spread`` (M', N) (:func:`~klmgraph.nn.committee.raw_spread`), ``error``
        (M', N, 3) mean field minus the data set's field, float64 CPU tensors.
    """
    from .nn.committee import raw_spread

    indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)
    bound = committee.bind(dataset.graph)
    p = next(committee.parameters())
    spread, error = [], []
    for start in range(0, len(indices), batch_size):
        rows = indices[start:start + batch_size]
        _, fields = bound.member_energies_and_fields(dataset.spins[rows].to(p))
        spread.append(raw_spread(fields).double().cpu())
        error.append((fields.mean(0).double().cpu() - dataset.field[rows].double()))
    return {"spread": torch.cat(spread), "error": torch.cat(error)}


def calibrate_file(path, train_set, train_idx, val_set, val_idx, margin: float = 1.1, batch_size: int = 4):
    """Fit a committee file's calibration factor on held-out data and set its threshold.

    The factor makes the predicted RMSE of B equal the measured one on the validation
    configurations (on the training ones when there are none: then the prediction is
    optimistic). The thresholds are ``margin`` times the largest calibrated RMSE of B predicted
    for a training configuration, and the largest for a site: the range seen in training.
    """
    from .io import load_model
    from .nn.committee import calibration_factor

    committee = load_model(path)
    held_out = (val_set, val_idx) if len(val_idx) else (train_set, train_idx)
    measured = committee_spread(committee, *held_out, batch_size=batch_size)
    committee.calibration = calibration_factor(measured["spread"], measured["error"])
    seen = committee.calibration * committee_spread(committee, train_set, train_idx, batch_size=batch_size)["spread"]
    committee.threshold = float(margin * seen.pow(2).mean(-1).sqrt().max())
    committee.site_threshold = float(margin * seen.max())
    committee.save(path)
    return committee


def _make_optimizer(params, cfg: OptimizerConfig):
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(optimizer, cfg: OptimizerConfig, epochs: int, steps_per_epoch: int):
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch)
    return None


def build(config: RunConfig, dataset: SpinDataset) -> torch.nn.Module:
    """The model named in ``config.model`` for the data set's graph and Hamiltonian (a
    :class:`~klmgraph.nn.committee.Committee` when ``committee`` > 1, member m initialised
    from the seed ``training.seed + m``)."""
    cls = _model_class(config.model.type)

    def one():
        return cls.for_graph(dataset.graph, hamiltonian=dataset.hamiltonian, **config.model.params)

    if config.model.committee == 1:
        return one()
    from .nn.committee import Committee

    members = []
    for m in range(config.model.committee):
        torch.manual_seed(config.training.seed + m)
        members.append(one())
    return Committee(members)


def _member_orders(config: RunConfig, train_idx: torch.Tensor, generator) -> torch.Tensor:
    """The training order of an epoch: (n,) for one network; (M, n) for a committee, each
    member with its own shuffling (and its own fixed bootstrap resampling of the data)."""
    m = config.model.committee
    if m == 1:
        return train_idx[torch.randperm(len(train_idx), generator=generator)]
    rows = []
    for k in range(m):
        idx = train_idx
        if config.model.bootstrap:  # fixed per member over the run
            draw = torch.Generator().manual_seed(config.training.seed * 7919 + k)
            idx = train_idx[torch.randint(len(train_idx), (len(train_idx),), generator=draw)]
        rows.append(idx[torch.randperm(len(idx), generator=generator)])
    return torch.stack(rows)


def _split(config: RunConfig, train_set: SpinDataset):
    """Training and validation (dataset, indices); validation may be empty."""
    if config.data.validation:
        val_set = load_dataset(config.data.validation, graph=train_set.graph)
        if val_set.hamiltonian != train_set.hamiltonian:
            raise ValueError(f"validation set {config.data.validation} has another Hamiltonian "
                             f"({val_set.hamiltonian}) than the training set ({train_set.hamiltonian})")
        return torch.arange(len(train_set)), val_set, torch.arange(len(val_set))
    n_val = int(round(config.data.validation_fraction * len(train_set)))
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.training.seed))
    return order[n_val:], train_set, order[:n_val]


def load_matching_model(path, model: torch.nn.Module, what: str) -> torch.nn.Module:
    """The model in the file ``path``, which must be ``model``'s architecture and configuration
    (its calibration and thresholds aside: they are refitted after training).

    Raises:
        ValueError: starting with ``what`` (the configuration key), for a missing or unreadable
            file or another model.
    """
    from .io import load_model

    try:
        start = load_model(path)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"{what}: {err}") from None
    fitted = {"calibration": 0, "threshold": 0, "site_threshold": 0}
    if type(start) is not type(model) or start.config | fitted != model.config | fitted:
        raise ValueError(f"{what}: {path} holds another model ({type(start).__name__}, "
                         f"{start.config}) than the configured one ({type(model).__name__}, {model.config})")
    return start


def _start_from(model: torch.nn.Module, path: str) -> None:
    """Load the weights of the model file ``path`` into ``model`` ([training] init)."""
    model.load_state_dict(load_matching_model(path, model, "[training] init").state_dict())


def _without_budget(resolved: dict) -> dict:
    """The configuration less its budget, which a resumed run may enlarge (minutes always, epochs
    unless the learning-rate schedule is laid out over them: cosine, one-cycle), and with its file
    paths taken relative to the run folder, so that a run folder moved or copied together with its
    data, or resumed from another working directory, still resumes."""
    # threads change the speed (and the rounding), not the run: a run may resume with another count
    budget = ("minutes",) if resolved["optimizer"]["schedule"] in ("cosine", "onecycle") else ("epochs", "minutes")
    budget = budget + ("threads", "out")
    out = Path(resolved["training"]["out"]).absolute()
    training = {k: v for k, v in resolved["training"].items() if k not in budget}
    training.setdefault("deterministic", False)  # checkpoints written before the setting
    training.setdefault("init", "")
    training["init"] = _relative_to(training["init"], out)
    data = {k: _relative_to(v, out) if k in ("train", "validation") else v for k, v in resolved["data"].items()}
    return {**resolved, "data": data, "training": training}


def _relative_to(path: str, folder: Path) -> str:
    """``path`` as seen from ``folder`` ("" stays "")."""
    return os.path.relpath(Path(path).absolute(), folder) if path else ""


def train(config: RunConfig, resume: bool = True, progress: bool = True) -> dict:
    """Train the configured model; resumes from ``<out>/last.pt`` when it exists and ``resume``
    (the configuration must match, except for the budget: minutes, and epochs unless the
    schedule is cosine or one-cycle, may grow).

    Returns:
        dict with ``model`` (the best model, on CPU), ``best_epoch``, ``epochs_run``,
        ``history`` (list of per-epoch dicts) and ``out`` (the run folder).
    """
    from tqdm.auto import tqdm

    from .io import load_model

    t = config.training
    if t.threads < 0:
        raise ValueError(f"[training] threads must be >= 0 (0 = torch's default), got {t.threads}")
    if t.threads:
        torch.set_num_threads(t.threads)
    out = Path(t.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, t.dtype)
    device = torch.device(t.device)
    train_set = load_dataset(config.data.train)
    train_idx, val_set, val_idx = _split(config, train_set)
    if len(train_idx) == 0:
        raise ValueError("no training configurations left after the validation split")

    torch.manual_seed(t.seed)
    model = build(config, train_set).to(device=device, dtype=dtype)
    if t.init:
        _start_from(model, t.init)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("train: the model has no trainable parameters (every one has requires_grad=False)")
    optimizer = _make_optimizer(model.parameters(), config.optimizer)
    steps = math.ceil(len(train_idx) / t.batch_size)
    scheduler = _make_scheduler(optimizer, config.optimizer, t.epochs, steps)

    state = {"epoch": 0, "best": math.inf, "best_epoch": 0, "elapsed": 0.0}
    last, resolved = out / "last.pt", config.to_dict()
    if resume and last.exists():
        try:
            ckpt = torch.load(last, map_location=device, weights_only=True)
            saved = json.loads(ckpt["config"])
        except Exception as err:  # any unreadable checkpoint is reported the same way
            raise ValueError(f"cannot resume from {last}: the checkpoint is damaged ({err}); "
                             "delete it to start afresh") from None
        if _without_budget(saved) != _without_budget(json.loads(json.dumps(resolved))):
            raise ValueError(f"{last} belongs to a run with another configuration; use another "
                             "[training] out folder or delete the checkpoint")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
    (out / "config.json").write_text(json.dumps(resolved, indent=2))
    if state["epoch"] == 0:  # a resumed run keeps what it started with (or, if older, no record)
        with atomic_path(out / "augmentation.json") as tmp:
            tmp.write_text(json.dumps(augmentation_record(train_set.graph, config.data.augment), indent=2))

    log_path = out / "log.csv"
    columns = ["epoch", "lr", "train_loss", "train_rmse_field", "val_rmse_field", "val_rmse_energy_per_site",
               "elapsed_s"]
    if state["epoch"] == 0 or not log_path.exists():
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(columns)

    history = []
    bad_epochs = state["epoch"] - state["best_epoch"]
    # a resumed run that already met its stopping rule stays finished (a larger budget reopens it)
    stopped = bool((config.optimizer.early_stopping and bad_epochs >= config.optimizer.early_stopping)
                   or (t.minutes and state["elapsed"] > 60 * t.minutes))
    start_time = time.perf_counter() - state["elapsed"]
    bar = tqdm(total=t.epochs, initial=state["epoch"], desc="train", unit="epoch", disable=not progress)
    model.train()
    # data, neighbour table and permutations on the device, once
    stacked = StackedData(model, train_set, dtype, device, t.deterministic)
    while state["epoch"] < t.epochs and not stopped:
        epoch = state["epoch"] + 1
        generator = torch.Generator().manual_seed(t.seed * 100_003 + epoch)  # resumable: no carried state
        order = _member_orders(config, train_idx, generator)
        members = config.model.committee > 1
        # the sums stay on the device: one host synchronisation per epoch, not two per step
        totals, count = torch.zeros(2, dtype=torch.float64, device=device), 0
        for batch in stacked.batches(order, t.batch_size, generator, config.data.augment):
            energy, field_pred = predict_stacked(model, stacked.prepared, batch, training=True, members=members)
            field_mse, energy_mse = stacked_loss_terms(energy, field_pred, batch)
            loss = field_mse + t.energy_weight * energy_mse
            if members:  # the sum of the members' losses: each member's gradient is its own
                loss = loss * config.model.committee
            optimizer.zero_grad(set_to_none=True)
            # the parameters' gradient only: the spins' (a leaf of the field's graph) is not needed,
            # and the compiled kernel then skips its second derivatives to the inputs
            loss.backward(inputs=trainable)
            optimizer.step()
            if config.optimizer.schedule == "onecycle":
                scheduler.step()
            totals += torch.stack([loss.detach() / config.model.committee,
                                   field_mse.detach()]).double() * batch.energy.shape[-1]
            count += batch.energy.shape[-1]
        total_loss, total_field = totals.tolist()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": total_loss / count,
               "train_rmse_field": math.sqrt(total_field / count)}
        if len(val_idx):
            metrics = evaluate(model, val_set, t.batch_size, val_idx)
            row["val_rmse_field"] = metrics["rmse_field"]
            row["val_rmse_energy_per_site"] = metrics["rmse_energy_per_site"]
            monitored = metrics["rmse_field"] ** 2 + t.energy_weight * metrics["rmse_energy_per_site"] ** 2
        else:
            row["val_rmse_field"] = row["val_rmse_energy_per_site"] = float("nan")
            monitored = row["train_loss"]
        if config.optimizer.schedule == "plateau":
            scheduler.step(monitored)
        elif config.optimizer.schedule == "cosine":
            scheduler.step()
        state["epoch"] = epoch
        state["elapsed"] = time.perf_counter() - start_time
        row["elapsed_s"] = state["elapsed"]
        if monitored < state["best"]:
            state["best"], state["best_epoch"], bad_epochs = monitored, epoch, 0
            model.save(out / "best.pt")
        else:
            bad_epochs += 1
        with atomic_path(last) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else {},
                        "state": state, "config": json.dumps(resolved)}, tmp)
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in columns])
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.3g}", val_B=f"{row['val_rmse_field']:.3g}")
        if config.optimizer.early_stopping and bad_epochs >= config.optimizer.early_stopping:
            break
        if t.minutes and state["elapsed"] > 60 * t.minutes:
            break
    bar.close()
    model.save(out / "final.pt")
    if config.model.committee > 1:
        for name in ("best.pt", "final.pt"):
            calibrate_file(out / name, train_set, train_idx, val_set, val_idx, config.model.threshold_margin,
                           t.batch_size)
    best = load_model(out / "best.pt")
    return {"model": best, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
            "history": history, "out": out}

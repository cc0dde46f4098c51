"""The configuration of ``klmgraph learn``: one frozen dataclass per section of learn.toml.

Every key is optional except the lattice and Hamiltonian of ``[system]``; an unknown section or
key is an error naming it, and so is a setting the loop cannot run (docs/learning.md lists
every key). ``[model]``, ``[optimizer]`` and ``[training]`` are those of ``klmgraph train``
(docs/training.md); ``[quick]`` holds dotted overrides (``"explore.steps" = 60``) applied by
``--quick``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import lattice as lattices
from ..electrons import ExactDiagonalization
from ..train import check_section_keys, config_from_dict

__all__ = ["SystemConfig", "InitialConfig", "FinetuneConfig", "Condition", "ExploreConfig", "SelectConfig",
           "LoopConfig", "LearnConfig", "SELECT_BY", "load_learn_config", "learn_config_from_dict",
           "check_candidates"]

_LATTICES = ("square", "triangular", "honeycomb", "kagome", "cubic")


@dataclass(frozen=True)
class SystemConfig:
    """[system]: the ED-sized lattice the loop labels and explores on, and its Hamiltonian.

    Attributes:
        lattice: "square", "triangular", "honeycomb", "kagome" or "cubic". Required.
        size: cells per direction (e.g. [12, 12]). Required.
        t1, t2, t3: hoppings (default 1, 0, 0; t2, t3 where the lattice has them).
        J: Kondo coupling. Required.
        filling: canonical ensemble; mu: grand canonical (exactly one of the two).
        temperature: electronic temperature (default 0).
        k_grid: ED labels on this k-grid of twisted boundary conditions (default []: Gamma only).
    """

    lattice: str = ""
    size: list = field(default_factory=list)
    t1: float = 1.0
    t2: float = 0.0
    t3: float = 0.0
    J: float | None = None
    filling: float | None = None
    mu: float | None = None
    temperature: float = 0.0
    k_grid: list = field(default_factory=list)

    def solver(self) -> ExactDiagonalization:
        """The ED solver of the labels on the configured lattice."""
        builder = getattr(lattices, f"{self.lattice}_lattice")
        import inspect
        names = inspect.signature(builder).parameters
        hoppings = {k: getattr(self, k) for k in ("t1", "t2", "t3") if k in names}
        graph = builder(**hoppings).graph(list(self.size))
        return ExactDiagonalization(graph, J=self.J, filling=self.filling, mu=self.mu,
                                    temperature=self.temperature, k_grid=list(self.k_grid) or None)


@dataclass(frozen=True)
class InitialConfig:
    """[initial]: the configurations labelled before the loop.

    Attributes:
        train_samples: random configurations to train on (default 40).
        validation_samples: random configurations to validate on (default 20).
        seed: seed of the configurations (the validation set uses seed + 1; default 0).
        data: labelled data sets to train on beside the random configurations from the first
            training on (default none): klmgraph data sets of the loop's lattice and
            Hamiltonian, e.g. ED-LLG snapshots near the states of interest (the paper trained on
            random configurations and such snapshots). Relative paths are relative to the
            configuration file.
        model: a committee file (klmgraph train's best.pt, a loop's iterNNN/model.pt, a shipped
            model such as data/models/triangular-paper.pt) that is iteration 0's committee
            instead of one trained on the random configurations (default "": train one), so that
            learning continues from a model one has, e.g. on the states of a phase diagram
            ([explore] init = "file:PATH"). [model] must describe it: the fine-tunings start
            from it. Relative to the configuration file.
    """

    train_samples: int = 40
    validation_samples: int = 20
    seed: int = 0
    data: list = field(default_factory=list)
    model: str = ""


@dataclass(frozen=True)
class FinetuneConfig:
    """[finetune]: each iteration continues the newest committee on random + explored data.

    Attributes:
        epochs: epochs per iteration (default 100).
        minutes: wall-clock cap per iteration (default 2).
        lr: learning rate (default 0: the [optimizer] lr).
        energy_weight: lambda of the fine-tuning's loss (default: [training] energy_weight). The
            energy of a relaxed state is off by much more than a random one's (an error of the
            field integrated along the relaxation), and with lambda = 1 its term weighs little
            beside the field's; a larger lambda here fixes E/N on the explored states.
    """

    epochs: int = 100
    minutes: float = 2.0
    lr: float = 0.0
    energy_weight: float | None = None


@dataclass(frozen=True)
class Condition:
    """One condition of the exploration (an entry of [explore] conditions).

    Attributes:
        hz: field along z (default 0); T: temperature of the LLG noise (default 0);
        alpha: damping (default: [explore] alpha); init: initial state "random" (default),
        "ferromagnet", "ansatz" (triple-Q skyrmion crystal, |Q| = pi/3), each [explore] runs
        times, or "file:PATH": every configuration of a .npy/.npz/.h5 spin file
        (:func:`~klmgraph.read_spins`; a relative PATH is read from the configuration file's
        folder) starts one run, so that the committee relaxes given states, e.g. the candidate
        states of a phase diagram, and its errors there are measured and labelled.
    """

    hz: float = 0.0
    T: float = 0.0
    alpha: float | None = None
    init: str = "random"

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExploreConfig:
    """[explore]: committee-driven ML-LLG on the ED-sized lattice.

    Attributes:
        conditions: list of tables {hz, T, alpha, init} (default: one, Hz = 0, T = 0).
        runs: independent runs per condition, integrated as one batch (default 4).
        steps: LLG steps per run (default 200); dt: time step (default 1); alpha: damping
            (default 1); integrator: "heun" (default) or "midpoint".
        snapshot_every: candidate states every this many steps (default 10).
        first_step: candidates from this step on (default 0).
    """

    conditions: list = field(default_factory=lambda: [Condition()])
    runs: int = 4
    steps: int = 200
    dt: float = 1.0
    alpha: float = 1.0
    integrator: str = "heun"
    snapshot_every: int = 10
    first_step: int = 0


@dataclass(frozen=True)
class SelectConfig:
    """[select]: which explored states are labelled.

    Attributes:
        labels: states labelled per iteration and added to the training data, highest committee
            spread first (default 20).
        holdout: further states per iteration, drawn at random among the rest, labelled to measure
            the true error and never trained on (default 8).
        min_gap: two selected states of one run are at least this many steps apart (default 20).
        by: the spread that ranks the candidates: "rmse_field" (default: the predicted RMSE of B
            over the sites) or "max_site_error" (the largest predicted site error: a state whose
            uncertainty sits on a few sites, such as a domain wall or vortex in an ordered
            background, ranks by those sites instead of being averaged away).
        min_distance: a candidate within this RMS spin difference per site of a selected
            state (of any run) counts as that state and is passed over (default 0: off), as
            one within min_gap steps is; when too few candidates are left, the passed-over ones
            fill up the labels by spread. A relaxation that has converged sits at one state for
            many snapshots; without it, that state is labelled once per min_gap steps.
    """

    labels: int = 20
    holdout: int = 8
    min_gap: int = 20
    by: str = "rmse_field"
    min_distance: float = 0.0


@dataclass(frozen=True)
class LoopConfig:
    """[loop]: when the loop stops.

    Attributes:
        iterations: fine-tunings at most (default 3); the committee after the last one explores
            once more, to measure it.
        target_rmse_field: stop when the committee's predicted RMSE of B on the explored states
            is below this (default 0: never).
        ed_budget: stop before ED would label more configurations than this in total, random
            ones included (default 0: no limit).
        seed: seed of the exploration noise, initial states and the hold-out draw (default 0).
    """

    iterations: int = 3
    target_rmse_field: float = 0.0
    ed_budget: int = 0
    seed: int = 0


# [select] by -> the key of explore.npz that ranks the candidates
SELECT_BY = {"rmse_field": "predicted_rmse_field", "max_site_error": "max_site_error"}
_SECTIONS = {"system": SystemConfig, "initial": InitialConfig, "finetune": FinetuneConfig,
             "explore": ExploreConfig, "select": SelectConfig, "loop": LoopConfig}
_TRAIN_SECTIONS = ("model", "optimizer", "training")


@dataclass(frozen=True)
class LearnConfig:
    """The whole learn.toml (see the section classes)."""

    system: SystemConfig
    initial: InitialConfig = field(default_factory=InitialConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    train: dict = field(default_factory=dict)  # [model], [optimizer], [training] of klmgraph train

    def to_dict(self) -> dict:
        d = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        if d["select"]["by"] == "rmse_field":  # the default: loops stored before the key still resume
            del d["select"]["by"]
        if not d["select"]["min_distance"]:  # likewise
            del d["select"]["min_distance"]
        if d["finetune"]["energy_weight"] is None:  # unset: loops stored before the key still resume
            del d["finetune"]["energy_weight"]
        for key in ("data", "model"):  # likewise
            if not d["initial"][key]:
                del d["initial"][key]
        d.update(self.train)
        return d


def _positive_int(section: str, key: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"[{section}] {key} must be an integer >= {low}, got {value!r}")


def _check(config: LearnConfig) -> None:
    s = config.system
    if s.lattice not in _LATTICES:
        raise ValueError(f"[system] lattice must be one of {list(_LATTICES)}, got {s.lattice!r}")
    if not s.size or not all(isinstance(x, int) and x >= 1 for x in s.size):
        raise ValueError(f"[system] size must be a list of positive integers (cells per direction), got {s.size!r}")
    if s.J is None:
        raise ValueError("[system] J (the Kondo coupling) is required")
    if (s.filling is None) == (s.mu is None):
        raise ValueError("[system] give exactly one of filling (canonical) and mu (grand canonical)")
    i = config.initial
    _positive_int("initial", "train_samples", i.train_samples)
    _positive_int("initial", "validation_samples", i.validation_samples)
    if not isinstance(i.data, list) or not all(isinstance(x, str) and x for x in i.data):
        raise ValueError(f"[initial] data must be a list of data set paths, got {i.data!r}")
    if not isinstance(i.model, str):
        raise ValueError(f"[initial] model must be the path of a committee file, got {i.model!r}")
    f = config.finetune
    _positive_int("finetune", "epochs", f.epochs)
    if f.minutes <= 0 or f.lr < 0:
        raise ValueError(f"[finetune] minutes must be > 0 and lr >= 0, got {f.minutes} and {f.lr}")
    if f.energy_weight is not None and not (isinstance(f.energy_weight, (int, float)) and f.energy_weight >= 0):
        raise ValueError(f"[finetune] energy_weight must be a number >= 0, got {f.energy_weight!r}")
    e = config.explore
    if not e.conditions:
        raise ValueError("[explore] conditions must list at least one condition")
    for key in ("runs", "steps", "snapshot_every"):
        _positive_int("explore", key, getattr(e, key))
    _positive_int("explore", "first_step", e.first_step, low=0)
    if e.first_step > e.steps:
        raise ValueError(f"[explore] first_step ({e.first_step}) is after the last step ({e.steps}): no candidates")
    if e.dt <= 0 or e.alpha < 0:
        raise ValueError(f"[explore] dt must be > 0 and alpha >= 0, got {e.dt} and {e.alpha}")
    for k, c in enumerate(e.conditions):
        if not isinstance(c.init, str) or (c.init not in ("random", "ferromagnet", "ansatz")
                                           and not (c.init.startswith("file:") and c.init[5:])):
            raise ValueError(f"[explore] conditions[{k}].init must be random, ferromagnet, ansatz or file:PATH, "
                             f"got {c.init!r}")
        if c.T < 0 or (c.T > 0 and (c.alpha if c.alpha is not None else e.alpha) <= 0):
            raise ValueError(f"[explore] conditions[{k}]: T must be >= 0, and T > 0 needs alpha > 0")
    sel = config.select
    _positive_int("select", "labels", sel.labels)
    _positive_int("select", "holdout", sel.holdout)
    _positive_int("select", "min_gap", sel.min_gap, low=0)
    if not isinstance(sel.min_distance, (int, float)) or isinstance(sel.min_distance, bool) \
            or not 0 <= sel.min_distance < 2:
        raise ValueError(f"[select] min_distance must be a number in [0, 2) (an RMS spin difference per site), "
                         f"got {sel.min_distance!r}")
    if sel.by not in SELECT_BY:
        raise ValueError(f"[select] by must be one of {list(SELECT_BY)}, got {sel.by!r}")
    if not any(c.init.startswith("file:") for c in e.conditions):  # else the loop checks, knowing the files
        check_candidates(config, [e.runs] * len(e.conditions))
    lp = config.loop
    _positive_int("loop", "iterations", lp.iterations, low=0)
    _positive_int("loop", "ed_budget", lp.ed_budget, low=0)
    if lp.target_rmse_field < 0:
        raise ValueError(f"[loop] target_rmse_field must be >= 0, got {lp.target_rmse_field}")
    first = i.train_samples + i.validation_samples + sel.labels + sel.holdout
    if lp.ed_budget and lp.ed_budget < first:
        raise ValueError(f"[loop] ed_budget = {lp.ed_budget} is less than one iteration needs ({first}: "
                         "[initial] train_samples + validation_samples + [select] labels + holdout)")
    training = config.train.get("training", {})
    for key in ("out", "init"):
        if key in training:
            raise ValueError(f"[training] {key} is set by klmgraph learn (run folders inside --out); remove it")


def check_candidates(config: LearnConfig, runs: list) -> None:
    """Raise unless the exploration, ``runs[c]`` runs in condition c, yields the states that
    [select] takes per iteration."""
    e, sel = config.explore, config.select
    candidates = sum(runs) * len(range(e.first_step, e.steps + 1, e.snapshot_every))
    if sel.labels + sel.holdout > candidates:
        raise ValueError(f"[select] labels + holdout = {sel.labels + sel.holdout} but [explore] yields only "
                         f"{candidates} candidate states per iteration (runs x snapshots, over the conditions)")


def learn_config_from_dict(raw: dict, quick: bool = False) -> LearnConfig:
    """A LearnConfig from nested dicts (as read from TOML); ``quick`` applies ``[quick]``.

    Raises:
        ValueError: naming the section or key of an unknown or impossible setting.
    """
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    overrides = raw.pop("quick", {})
    unknown = set(raw) - set(_SECTIONS) - set(_TRAIN_SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS) + list(_TRAIN_SECTIONS) + ['quick']}")
    if quick:
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if not key or (section not in _SECTIONS and section not in _TRAIN_SECTIONS):
                raise ValueError(f"[quick] {dotted!r}: keys are 'section.key' of a known section")
            raw.setdefault(section, {})[key] = value
    parts = {}
    for name, cls in _SECTIONS.items():
        section = dict(raw.get(name, {}))
        check_section_keys(name, cls, section)
        if name == "explore" and "conditions" in section:
            conditions = []
            for k, c in enumerate(section["conditions"]):
                bad = set(c) - {f.name for f in dataclasses.fields(Condition)}
                if bad:
                    raise ValueError(f"unknown key(s) {sorted(bad)} in [explore] conditions[{k}]; known: "
                                     "hz, T, alpha, init")
                conditions.append(Condition(**c))
            section["conditions"] = conditions
        try:
            parts[name] = cls(**section)
        except TypeError as err:
            raise ValueError(f"[{name}]: {err}") from None
    train = {name: dict(raw.get(name, {})) for name in _TRAIN_SECTIONS}
    train["model"].setdefault("committee", 4)
    config = LearnConfig(**parts, train=train)
    _check(config)
    # the training sections are checked by klmgraph train's own parser (a placeholder data path)
    if config_from_dict({**train, "data": {"train": "-"}}).model.committee < 2:
        raise ValueError("[model] committee must be >= 2: the loop selects states by the committee's spread")
    return config


def load_learn_config(path, quick: bool = False) -> LearnConfig:
    """Read learn.toml (see :func:`learn_config_from_dict`)."""
    from pathlib import Path

    from ..train import read_toml

    path = Path(path)
    raw = read_toml(path)

    def resolve(name):  # file paths are relative to the configuration file, as klmgraph train's
        return str((path.parent / name).resolve()) if isinstance(name, str) and name else name

    initial = raw.get("initial", {})
    if isinstance(initial.get("data"), list):
        initial["data"] = [resolve(x) for x in initial["data"]]
    if "model" in initial:
        initial["model"] = resolve(initial["model"])
    conditions = raw.get("explore", {}).get("conditions")
    for c in conditions if isinstance(conditions, list) else []:  # the spin files that runs start from
        init = c.get("init") if isinstance(c, dict) else None
        if isinstance(init, str) and init.startswith("file:") and init[5:]:
            c["init"] = "file:" + resolve(init[5:])
    return learn_config_from_dict(raw, quick=quick)

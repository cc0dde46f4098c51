"""A committee of M networks of one architecture, evaluated as one batched (vmapped) call.

The members differ only in their weights (seeds of the initialisation, of the shuffling and,
optionally, a bootstrap resampling of the data). Their mean is the prediction; their spread is
the uncertainty (the query-by-committee estimate of machine-learned interatomic potentials):

    E = mean_m E_m,        B_r = -dE/dS_r = mean_m B_{m,r},
    sigma_r = c * sqrt( (1/3) sum_a var_m B_{m,r,a} )        (predicted field error of site r),

with the calibration factor c fitted on held-out data so that sqrt(mean_r sigma_r^2) matches
the RMSE of B against ED there (:func:`calibration_factor`). The weights of all members are
stacked along a leading axis (``torch.func.stack_module_state``) and one network, the template,
is applied to all of them at once with ``torch.func.vmap`` + ``functional_call``: the channel
mixing becomes one batched matmul and the neighbour gathers one gather, so M members cost
less than M networks called one after another (benchmarks/committee.py measures it).

Where the members' compiled CPU kernel applies (:mod:`klmgraph.nn.fused`: an ECNN on the CPU in
float32/float64, no torch.func transform around it), each member is evaluated with it instead:
a bound committee without autograd (:meth:`Committee.fused_member_energies_and_fields`), and
:meth:`Committee.member_energies` with autograd, the trainer's path (M kernel calls, each
differentiable twice, on views of the stacked weights). M kernel calls cost less than the
vmapped autograd path (1.9x per training step, docs/learning.md), which stays the path of
every case the kernel refuses and of ``fused = False``.

Layering: this module imports the models' protocol and :mod:`klmgraph.nn.binding` only;
:mod:`klmgraph.io` rebuilds a committee from its file, never the other way round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..checks import check_spins
from .binding import BoundModel
from .modelfile import save_model

__all__ = ["Committee", "BoundCommittee", "Uncertainty", "calibration_factor", "cross_fitted_rmse", "raw_spread"]


class _MemberEnergy(nn.Module):
    """``net.energy(spins, prepared)`` as a forward: what ``functional_call`` can apply."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, spins, prepared):
        return self.net.energy(spins, prepared)


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter names may not hold dots


class Committee(nn.Module):
    """M networks of one architecture and configuration, with stacked weights.

    Args:
        members: the M >= 2 networks (ECNN or IFNN, same class and ``config``); their weights
            are copied, the first one serves as the template the stacked weights are applied to.
        calibration: factor c of the predicted field error (module docstring); 1 = uncalibrated.
        threshold: predicted RMSE of B (over the sites of a configuration) above which the
            configuration counts as outside the range seen in training (None: not set).
        site_threshold: the same for the predicted error of a single site (None: not set).

    Attributes:
        size: M.
        weights: ``nn.ParameterDict`` of stacked weights (M, ...), one entry per member weight.

    Shapes:
        energy: spins (..., N, 3) -> (...) mean over members;
        member_energies: spins (M, ..., N, 3), member m on spins[m] -> (M, ...).

    Raises:
        ValueError: for fewer than two members or members of different classes/configurations.
    """

    def __init__(self, members: Sequence[nn.Module], calibration: float = 1.0, threshold: float | None = None,
                 site_threshold: float | None = None):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 members, got {len(members)}")
        kinds = {type(m).__name__ for m in members}
        if len(kinds) > 1 or any(m.config != members[0].config for m in members):
            raise ValueError(f"committee members must share class and configuration, got {sorted(kinds)}")
        if not (math.isfinite(calibration) and calibration > 0):
            raise ValueError(f"calibration must be a positive number, got {calibration}")
        for name, value in (("threshold", threshold), ("site_threshold", site_threshold)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None), got {value}")
        self.size = len(members)
        self.calibration = float(calibration)
        self.threshold = None if threshold is None else float(threshold)
        self.site_threshold = None if site_threshold is None else float(site_threshold)
        params, _ = stack_module_state(members)
        self.weights = nn.ParameterDict({_key(k): nn.Parameter(v.detach().clone()) for k, v in params.items()})
        self._names = {_key(k): "net." + k for k in params}
        # the template is not a submodule: its own weights are never used nor saved, but its
        # buffers (index tables, Clebsch-Gordan matrices) must follow .to(), see _apply
        template = members[0]
        self._shell = [_MemberEnergy(template)]
        self.member_architecture = type(template).__name__
        # evaluation and training take the members' compiled kernel where it applies; a runtime
        # switch as ECNN.fused (False: always the vmapped autograd path)
        self.fused = True
        self._member_cache = None  # (weight versions, separate member networks) for the kernel

    # ------------------------------------------------------------------ the members' protocol
    @property
    def template(self) -> nn.Module:
        return self._shell[0].net

    @property
    def num_classes(self):
        return self.template.num_classes

    @property
    def edge_classes(self):
        return self.template.edge_classes

    @property
    def lattice(self):
        return self.template.lattice

    @property
    def hamiltonian(self):
        return self.template.hamiltonian

    @property
    def member_config(self) -> dict:
        return self.template.config

    @property
    def config(self) -> dict:
        """What :func:`klmgraph.io.build_network` needs to rebuild the committee (JSON-able)."""
        return {"size": self.size, "member_architecture": self.member_architecture,
                "member_config": self.member_config, "calibration": self.calibration,
                "threshold": self.threshold, "site_threshold": self.site_threshold}

    def prepare(self, graph, deterministic: bool = False):
        return self.template.prepare(graph, deterministic=deterministic) if deterministic \
            else self.template.prepare(graph)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._shell[0]._apply(fn, *args, **kwargs)
        return self

    # ------------------------------------------------------------------ evaluation
    def member_energies(self, spins: torch.Tensor, prepared, frozen: bool = False) -> torch.Tensor:
        """Energy of member m on ``spins[m]``: M calls of the members' compiled kernel where it
        applies (:meth:`_kernel_applies`; training's path too), else all members in one vmapped call.

        Args:
            spins: configurations, one set per member.
            prepared: the graph's table (:meth:`prepare`).
            frozen: detach the weights, so that autograd keeps only what dB/dS needs (roughly
                half the memory of an evaluation that could also train).

        Shapes:
            spins: (M, ..., N, 3) -> (M, ...)
        """
        if spins.shape[0] != self.size:
            raise ValueError(f"member_energies takes spins of shape ({self.size}, ..., N, 3), got {tuple(spins.shape)}")
        weights = {self._names[k]: (v.detach() if frozen else v) for k, v in self.weights.items()}
        shell = self._shell[0]
        if self._kernel_applies(spins, prepared):
            # member m's weights are views of the stacked ones, so autograd (the field, and the
            # trainer's double backward) reaches the stacked weights through M kernel calls
            return torch.stack([functional_call(shell, {k: v[m] for k, v in weights.items()}, (spins[m], prepared))
                                for m in range(self.size)])
        return vmap(lambda w, s: functional_call(shell, w, (s, prepared)))(weights, spins)

    def _kernel_applies(self, spins: torch.Tensor, prepared) -> bool:
        """Whether :meth:`member_energies` evaluates the members one by one with their compiled
        kernel (``fused`` on and :meth:`ECNN.kernel_applies` for the template; spins (M, ..., N, 3))
        rather than in one vmapped eager call."""
        applies = getattr(self.template, "kernel_applies", None)
        return self.fused and applies is not None and applies(spins[0], prepared)

    def energy(self, spins: torch.Tensor, prepared) -> torch.Tensor:
        """Committee mean of the energy; its spin gradient is the mean field.

        Shapes:
            spins: (..., N, 3) -> (...)
        """
        return self.member_energies(spins.expand(self.size, *spins.shape), prepared).mean(0)

    def _kernel_members(self) -> list[nn.Module]:
        """:meth:`members`, kept until a stacked weight changes (in place or replaced)."""
        key = tuple((v.data_ptr(), v._version, v.dtype, v.device) for v in self.weights.values())
        if self._member_cache is None or self._member_cache[0] != key:
            with torch.no_grad():
                nets = self.members()
            for net in nets:
                net.requires_grad_(False)
            self._member_cache = (key, nets)
        return self._member_cache[1]

    def fused_member_energies_and_fields(self, spins: torch.Tensor, prepared, threads: int | None = None):
        """Every member's energy and field B = -dE/dS with the members' compiled kernel, or None
        where it does not apply (``fused`` off, members without a kernel, another device or
        dtype, torch.func transforms; see :mod:`klmgraph.nn.fused`). No autograd graph is kept.

        Shapes:
            spins: (..., N, 3) -> E (M, ...), B (M, ..., N, 3)
        """
        if not self.fused or not callable(getattr(self.template, "fused_energy_and_field", None)):
            return None
        energies, fields = [], []
        for net in self._kernel_members():
            result = net.fused_energy_and_field(spins, prepared, threads=threads)
            if result is None:
                return None
            energies.append(result[0])
            fields.append(result[1])
        return torch.stack(energies), torch.stack(fields)

    def fused_energy_and_field(self, spins: torch.Tensor, prepared, threads: int | None = None):
        """The committee mean of :meth:`fused_member_energies_and_fields` (None where that is
        None): the fast path of ``bind(graph).energy_and_field``.

        Shapes:
            spins: (..., N, 3) -> E (...), B (..., N, 3)
        """
        result = self.fused_member_energies_and_fields(spins, prepared, threads)
        return None if result is None else (result[0].mean(0), result[1].mean(0))

    def members(self) -> list[nn.Module]:
        """The M networks as separate modules (copies of the weights)."""
        out = []
        for m in range(self.size):
            net = type(self.template)(**self.member_config).to(next(self.parameters()))
            state = self.template.state_dict()  # the buffers; the weights are the member's
            state.update({self._names[k][4:]: v[m].detach() for k, v in self.weights.items()})
            net.load_state_dict(state)
            out.append(net)
        return out

    def save(self, path):
        """Write the committee (one file); read back with :func:`klmgraph.load_model`."""
        return save_model(self, path)

    def bind(self, graph, deterministic: bool = False, chunk_sites: int | str | None = None,
             halo_hops: int | None = None, threads: int | str = "auto") -> "BoundCommittee":
        """A force provider on ``graph`` returning the committee mean, with :meth:`BoundCommittee.uncertainty`
        (``threads``: the members' compiled kernel's threads, as in :meth:`ECNN.bind`).

        Raises:
            ValueError: for ``chunk_sites`` (a committee is evaluated on the whole lattice).
        """
        if chunk_sites is not None or halo_hops is not None:
            raise ValueError("a committee is evaluated on the whole lattice: chunk_sites (--chunk-sites) and split "
                             "runs (--nprocs) take a single model (one member: Committee.members())")
        return BoundCommittee(self, graph, deterministic, threads=threads)


@dataclass
class Uncertainty:
    """The committee's prediction and spread for configurations (see :class:`Committee`).

    Attributes:
        energy: (...) mean energy; field: (..., N, 3) mean field.
        field_error: (..., N) predicted error sigma_r of the field at each site (calibrated).
        energy_per_site_error: (...) standard deviation of E/N over the members (not calibrated).
        threshold: the committee's threshold of :attr:`rmse_field` (None if unset).
        site_threshold: its threshold of a site's error (None if unset).
    """

    energy: torch.Tensor
    field: torch.Tensor
    field_error: torch.Tensor
    energy_per_site_error: torch.Tensor
    threshold: float | None = None
    site_threshold: float | None = None

    @property
    def rmse_field(self) -> torch.Tensor:
        """Predicted RMSE of B over sites and components, sqrt(mean_r sigma_r^2). Shapes: (...)."""
        return self.field_error.pow(2).mean(-1).sqrt()

    @property
    def max_field(self) -> torch.Tensor:
        """Largest predicted site error. Shapes: (...)."""
        return self.field_error.amax(-1)

    def uncertain(self) -> torch.Tensor:
        """Boolean (...): configurations outside the range seen in training, i.e. whose predicted
        RMSE of B exceeds ``threshold`` or one of whose sites exceeds ``site_threshold``."""
        out = torch.zeros_like(self.rmse_field, dtype=torch.bool)
        if self.threshold is not None:
            out |= self.rmse_field > self.threshold
        if self.site_threshold is not None:
            out |= self.max_field > self.site_threshold
        return out


def raw_spread(fields: torch.Tensor) -> torch.Tensor:
    """Uncalibrated per-site spread sqrt((1/3) sum_a var_m B_{m,r,a}) (unbiased variance).

    Shapes:
        fields: (M, ..., N, 3) member fields -> (..., N)
    """
    return fields.var(0, unbiased=True).mean(-1).sqrt()


def calibration_factor(spread: torch.Tensor, error: torch.Tensor) -> float:
    """c such that the calibrated spread predicts the RMSE of the field: c = RMSE / RMS(spread).

    Args:
        spread: (..., N) uncalibrated site spreads (:func:`raw_spread`) on held-out data.
        error: (..., N, 3) committee-mean field minus the reference (ED) field there.

    Raises:
        ValueError: if the spread is zero everywhere (identical members cannot be calibrated).
    """
    spread_rms = float(spread.double().pow(2).mean().sqrt())
    if not spread_rms > 0:
        raise ValueError("the committee's spread is zero on the calibration data (identical members?): "
                         "no calibration factor can be fitted")
    return float(error.double().pow(2).mean().sqrt()) / spread_rms


def cross_fitted_rmse(spread: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Predicted RMSE of B of each configuration with the calibration factor fitted on the others
    (leave one out): an estimate of the error that never saw that configuration's own error, for
    a calibration set that is also the measurement set.

        predicted_j = c_(-j) * sqrt(mean_r spread_jr^2),  c_(-j) = calibration_factor(all but j)

    Args:
        spread: (K, N) uncalibrated site spreads of K >= 2 configurations.
        error: (K, N, 3) committee-mean field minus the reference field.

    Returns:
        (K,) float64.

    Raises:
        ValueError: for fewer than two configurations, or a spread that is zero on the others.
    """
    if spread.shape[0] < 2:
        raise ValueError(f"leave-one-out calibration needs at least 2 configurations, got {spread.shape[0]}")
    spread2 = spread.double().pow(2).mean(-1)  # (K,)
    error2 = error.double().pow(2).mean((-1, -2))  # (K,)
    others_spread, others_error = spread2.sum() - spread2, error2.sum() - error2
    if not bool((others_spread > 0).all()):
        raise ValueError("the committee's spread is zero on the calibration data (identical members?): "
                         "no calibration factor can be fitted")
    return (others_error / others_spread).sqrt() * spread2.sqrt()


class BoundCommittee(BoundModel):
    """A :class:`Committee` on one graph: ``energy_and_field`` is the committee mean (one
    vmapped call; the integrator's hot path), :meth:`uncertainty` adds the spread."""

    def member_energies_and_fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's energy and field in one batched call.

        Shapes:
            spins: (N, 3) or (B, N, 3) -> E: (M,) or (M, B); B: (M, *spins.shape)
        """
        spins = check_spins(spins, self.num_sites)
        self._check_shape(spins)
        p = self._reference_param()
        # not timed by self.threads (M members per call would skew its per-site times): the
        # count the mean's calls found faster
        fused = self.model.fused_member_energies_and_fields(spins.detach().to(p), self.neighbours(p.device),
                                                           threads=self.threads.chosen())
        if fused is not None:
            return fused[0].to(spins), fused[1].to(spins)
        m = self.model.size
        s = spins.detach().to(p).unsqueeze(0).expand(m, *spins.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            energy = self.model.member_energies(s, self.neighbours(p.device), frozen=True)
            (grad,) = torch.autograd.grad(energy.sum(), s)
        return energy.detach().to(spins), (-grad).to(spins)

    def uncertainty(self, spins: torch.Tensor) -> Uncertainty:
        """Mean prediction and predicted errors (see :class:`Uncertainty`).

        Shapes:
            spins: (N, 3) or (B, N, 3) -> field_error (N,) or (B, N)
        """
        energies, fields = self.member_energies_and_fields(spins)
        return Uncertainty(energy=energies.mean(0), field=fields.mean(0),
                           field_error=self.model.calibration * raw_spread(fields),
                           energy_per_site_error=energies.std(0, unbiased=True) / self.num_sites,
                           threshold=self.model.threshold, site_threshold=self.model.site_threshold)

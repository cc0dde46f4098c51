"""Stochastic Landau-Lifshitz-Gilbert dynamics: the integrator.

The equation of motion (DESIGN.md section 1; Miyazaki 2023, eq. 4), with gamma = 1 and unit
spins, in Gilbert form and solved for the time derivative:

    dS/dt = -S x (B + zeta) + alpha S x dS/dt
          = -[S x B' + alpha S x (S x B')] / (1 + alpha^2),        B' = B + zeta,

where B = -dE/dS comes from a *force provider* and zeta is Gaussian white noise with
<zeta^a_r(t) zeta^b_r'(t')> = 2 alpha T delta_rr' delta_ab delta(t - t'). The equation is read
in the Stratonovich sense, for which this noise gives the Boltzmann distribution exp(-E / T)
(W. F. Brown, Phys. Rev. 130, 1677 (1963)). Written as a rotation, dS/dt = W x S with
W = (B' + alpha S x B') / (1 + alpha^2); the midpoint scheme uses that form.

The force providers (anything with ``energy_and_field(spins) -> (E, B)``, and the spin-only
terms) live in :mod:`klmgraph.providers` and are re-exported here.

Host synchronisation: the spins are validated once per run (:meth:`LLG.run`), providers are
called through their unchecked hot path, and the finiteness check costs one synchronisation
per step. With ``seed`` the noise is the counter-based stream of :mod:`klmgraph.noise`: a
function of (seed, step, site, component), the same on every device and after any resume.

Shapes, everywhere in this module: spins (N, 3) or (B, N, 3); energy () or (B,); field like spins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Callable, Sequence

import torch

from .checks import check_spins
from .graph import vector3
from .noise import gaussian
from .providers import (FunctionProvider, Heisenberg, Provider, SingleIonAnisotropy, SumProvider, Zeeman,
                        as_provider, check_shape)

__all__ = ["Provider", "FunctionProvider", "SumProvider", "Zeeman", "SingleIonAnisotropy",
           "Heisenberg", "as_provider", "LLG", "LLGRun", "DivergenceError", "prepare_spins"]


# ------------------------------------------------------------------------------ integrator

_INTEGRATORS = ("heun", "midpoint")


@dataclass
class LLGRun:
    """Result of :meth:`LLG.run`.

    Attributes:
        spins: final configuration, (N, 3) or (B, N, 3).
        times: (M,) times of the records.
        energies: (M,) or (M, B) total energy (provider plus Zeeman term) at those times.
        snapshots: (M, N, 3) or (M, B, N, 3) configurations at those times, or None.
    """

    spins: torch.Tensor
    times: torch.Tensor
    energies: torch.Tensor
    snapshots: torch.Tensor | None = None


@dataclass(frozen=True)
class LLG:
    """Stochastic LLG integrator (see the module docstring for the equation and noise).

    Two schemes, both second order in dt for deterministic dynamics:

    * ``"heun"``: stochastic Heun, projected to unit length after predictor and corrector.
      One noise sample zeta = sqrt(2 alpha T / dt) xi, xi ~ N(0, 1), is drawn per step and
      used in both stages, so the scheme converges to the Stratonovich solution (weak order 1
      with noise). Two provider evaluations per step.
    * ``"midpoint"``: semi-implicit midpoint rule S1 = S0 + dt W(S_mid) x (S0 + S1) / 2,
      solved exactly for a given W by a Cayley rotation (norm preserved to rounding); W is
      evaluated at the normalised midpoint of the previous estimate, ``iterations`` times
      (the first at S0). iterations = 2 is the semi-implicit scheme B of J. H. Mentink et al.,
      J. Phys.: Condens. Matter 22, 176001 (2010), except that the field is taken at the
      *normalised* midpoint, because providers such as exact diagonalization accept unit
      spins only; like the original it integrates the Stratonovich noise (weak order 1, with
      the same noise sample in every iteration). More iterations approach the implicit
      midpoint rule. With noise it needs iterations >= 2 (a single evaluation at S0 would
      integrate the Ito equation, whose spurious drift breaks the Boltzmann distribution).
      Without damping the energy error stays bounded instead of drifting as with Heun
      (tests/test_dynamics.py measures both); prefer it for long alpha = 0 runs.

    Args:
        provider: force provider (see :func:`as_provider`).
        dt: time step > 0 (units of 1 / energy, gamma = 1).
        alpha: Gilbert damping >= 0.
        temperature: T >= 0 of the thermal noise; T > 0 needs alpha > 0.
        field: external field h added as a :class:`Zeeman` term.
        integrator: ``"heun"`` or ``"midpoint"``.
        iterations: provider evaluations per midpoint step (>= 1; ignored by Heun).
        domain: for one process of a split lattice (:mod:`klmgraph.distributed`): an object
            whose ``owned`` (N_owned,) holds the global index of each spin row (the counter-based
            noise is drawn per global site, so the trajectory does not depend on the split) and
            whose ``all_true(flag)`` combines a bool tensor over the processes (so that every
            process stops at the same step when one diverges). None (default): the whole lattice.

    Example::

        ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
        llg = klmgraph.LLG(ed, dt=0.01, alpha=0.1, temperature=0.01, field=(0, 0, 0.1))
        out = llg.run(spins, steps=1000, record_every=10, seed=0)

    Shapes:
        spins: (N, 3) or (B, N, 3) unit vectors, float32 or float64, any device.
    """

    provider: Any
    dt: float
    alpha: float = 1.0
    temperature: float = 0.0
    field: Sequence[float] = (0.0, 0.0, 0.0)
    integrator: str = "heun"
    iterations: int = 2
    domain: Any = dataclass_field(default=None, repr=False, compare=False)
    _total: Provider = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("dt", "alpha", "temperature"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.dt <= 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature > 0 and self.alpha == 0:
            raise ValueError("temperature > 0 needs alpha > 0: the noise strength 2 alpha T "
                             "vanishes without damping, and nothing would thermalise the spins")
        if self.integrator not in _INTEGRATORS:
            raise ValueError(f"integrator must be one of {_INTEGRATORS}, got {self.integrator!r}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")
        if self.integrator == "midpoint" and self.temperature > 0 and self.iterations < 2:
            raise ValueError("the midpoint scheme with one field evaluation per step integrates the "
                             "Ito equation, not the Stratonovich one: use iterations >= 2 or "
                             "integrator='heun' for temperature > 0")
        h = vector3(self.field, "field")
        object.__setattr__(self, "field", tuple(h.tolist()))
        total = as_provider(self.provider)
        if h.any():
            total = total + Zeeman(h)
        object.__setattr__(self, "_total", total)

    @property
    def noise_strength(self) -> float:
        """Standard deviation sqrt(2 alpha T / dt) of each noise component, held over one step."""
        return math.sqrt(2 * self.alpha * self.temperature / self.dt)

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and field of the provider plus the external field (input validated)."""
        energy, field = self._total.energy_and_field(spins)
        return energy.detach(), field.detach().to(spins.dtype)

    def _forces(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the hot path: spins validated at the start of the run and kept unit-length by the schemes
        energy, field = self._total.energy_and_field_unchecked(spins)
        return energy.detach(), field.detach().to(spins.dtype)

    def step(self, spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Advance by one time step dt.

        Args:
            spins: (N, 3) or (B, N, 3) unit vectors.
            generator: random generator for the noise (on the spins' device).

        Returns:
            the new spins, same shape and dtype.
        """
        return self._step(prepare_spins(spins), generator)[0]

    def run(self, spins: torch.Tensor, steps: int, record_every: int = 0, record_spins: bool = False,
            seed: int | None = None, generator: torch.Generator | None = None,
            callback: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
            start_step: int = 0, check_finite: bool = True) -> LLGRun:
        """Integrate ``steps`` time steps.

        Args:
            spins: initial (N, 3) or (B, N, 3) unit vectors.
            steps: number of steps >= 0.
            record_every: record time and energy every this many steps (0: only the start and
                the end). The energy at the start of a step is a by-product of the step; the
                final record costs one extra provider evaluation.
            record_spins: also keep the configurations at the records.
            seed: the noise is the counter-based stream :func:`klmgraph.noise.gaussian` of
                (seed, step, site, component): the same on every device, and a run continued
                from any step (``start_step``) draws what an uninterrupted one would. Ignored
                when ``generator`` is given.
            generator: a torch generator for the noise instead (device-specific numbers); with
                neither, torch's global generator is used.
            callback: called as ``callback(step, spins, energy)`` at every record, with the
                configuration at the start of that step. With a ``generator`` it is called
                before that step's noise is drawn (so ``generator.get_state()`` there is the
                state that continues the run exactly from that configuration).
            start_step: number of the first step (a run continued from step ``start_step``):
                steps, times and the record schedule count from 0 as if the run had never
                stopped.
            check_finite: stop with :class:`DivergenceError` at the first step whose energy,
                field or new spins are not finite (NaN or inf), before anything of that step is
                recorded. Costs one reduction and, on a GPU, one synchronisation per step (two
                with a ``generator``, whose record must come before the noise).

        Returns:
            :class:`LLGRun` with the final spins and the records.

        Raises:
            DivergenceError: (with ``check_finite``) naming the step that failed.
        """
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        if not isinstance(record_every, int) or record_every < 0:
            raise ValueError(f"record_every must be a non-negative integer, got {record_every!r}")
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}")
        spins = prepare_spins(spins)
        stateless = generator is None and seed is not None
        times, energies, snapshots = [], [], []

        def record(n, s, e):
            times.append(n * self.dt)
            energies.append(e)
            if record_spins:
                snapshots.append(s)
            if callback is not None:
                callback(n, s, e)

        end = start_step + steps
        for n in range(start_step, end):
            recording = n == start_step or (record_every and n % record_every == 0)
            energy, field = self._forces(spins)
            if stateless:
                # noise of step n is a function of n: check the whole step once, then record
                new = self._advance(spins, field, self._counter_noise(spins, seed, n))
                if check_finite:
                    _check_step(n, self.dt, energy, field, new, self.domain)
                if recording:
                    record(n, spins, energy)
            else:
                # the record (and its callback) sees the generator before the step's noise
                if check_finite:
                    _check_step(n, self.dt, energy, field, None, self.domain)
                if recording:
                    record(n, spins, energy)
                new = self._advance(spins, field, self._noise(spins, generator))
                if check_finite:
                    _check_step(n, self.dt, None, None, new, self.domain)
            spins = new
        energy = self._forces(spins)[0]
        if check_finite:
            _check_step(end, self.dt, energy, None, None, self.domain)
        record(end, spins, energy)
        return LLGRun(spins=spins, times=torch.tensor(times, dtype=torch.float64),
                      energies=torch.stack(energies) if energies else torch.empty(0),
                      snapshots=torch.stack(snapshots) if record_spins else None)

    # -- schemes ----------------------------------------------------------------------------

    def _noise(self, spins, generator):
        if self.temperature == 0:
            return None
        xi = torch.randn(spins.shape, generator=generator, dtype=spins.dtype, device=spins.device)
        return self.noise_strength * xi

    def _counter_noise(self, spins, seed, step):
        if self.temperature == 0:
            return None
        sites = None if self.domain is None else self.domain.owned
        return self.noise_strength * gaussian(seed, step, spins.shape, spins.dtype, spins.device, sites=sites)

    def _step(self, spins, generator):
        """(new spins, energy of the input spins)."""
        energy, field = self._forces(spins)
        return self._advance(spins, field, self._noise(spins, generator)), energy

    def _advance(self, spins, field, noise):
        """One step from spins whose (deterministic) field is already known."""
        if self.integrator == "heun":
            return self._heun(spins, field, noise)
        return self._midpoint(spins, field, noise)

    def _velocity(self, s, b):
        # dS/dt = -[S x B' + alpha S x (S x B')] / (1 + alpha^2)
        sxb = torch.linalg.cross(s, b, dim=-1)
        return -(sxb + self.alpha * torch.linalg.cross(s, sxb, dim=-1)) / (1 + self.alpha ** 2)

    def _heun(self, s0, b0, noise):
        if noise is not None:
            b0 = b0 + noise
        f0 = self._velocity(s0, b0)
        s1 = _normalise(s0 + self.dt * f0)
        _, b1 = self._forces(s1)
        if noise is not None:
            b1 = b1 + noise
        f1 = self._velocity(s1, b1)
        return _normalise(s0 + 0.5 * self.dt * (f0 + f1))

    def _rotation_vector(self, s, b):
        # dS/dt = W x S with W = (B' + alpha S x B') / (1 + alpha^2)
        return (b + self.alpha * torch.linalg.cross(s, b, dim=-1)) / (1 + self.alpha ** 2)

    def _midpoint(self, s0, b, noise):
        s_eval = s0
        for k in range(self.iterations):
            if k > 0:
                s_eval = _normalise(s0 + s1)
                _, b = self._forces(s_eval)
            if noise is not None:
                b = b + noise
            s1 = _cayley(s0, 0.5 * self.dt * self._rotation_vector(s_eval, b))
        # the Cayley map is orthogonal; renormalising only removes rounding drift
        return _normalise(s1)


class DivergenceError(RuntimeError):
    """An LLG step produced NaN or infinite values.

    Attributes:
        step: the step that failed (its input configuration was still finite).
        time: step * dt.
    """

    def __init__(self, message: str, step: int, time: float):
        super().__init__(message)
        self.step = step
        self.time = time


def _check_step(step, dt, energy, field, new, domain=None):
    """Raise :class:`DivergenceError` naming ``step`` unless the given tensors are all finite
    (on every process of a split lattice: ``domain.all_true``).

    One reduction over everything given and one synchronisation; the message is worked out
    only on failure."""
    given = [t for t in (energy, field, new) if t is not None]
    ok = torch.stack([torch.isfinite(t).all() for t in given]).all()
    if domain is not None:
        ok = domain.all_true(ok)
    if bool(ok):  # the step's one host synchronisation
        return
    if (energy is not None and not bool(torch.isfinite(energy).all())) or \
            (field is not None and not bool(torch.isfinite(field).all())):
        what = "the provider's energy or field" if field is not None else "the provider's energy"
        hint = "the provider failed on a finite configuration"
    else:
        what = "the new spins"
        hint = "the step diverged: a smaller dt (or a provider that stays finite) is needed"
    raise DivergenceError(f"LLG step {step} (t = {step * dt:g}): {what} contain NaN or inf; {hint}",
                          step=step, time=step * dt)


def _cayley(s, a):
    """Solve S1 = S0 + a x (S0 + S1) for S1: the Cayley rotation
    S1 = S0 + 2 / (1 + |a|^2) (a x S0 + a x (a x S0)), which has |S1| = |S0|.

    Shapes:
        s, a: (..., 3) -> (..., 3)
    """
    axs = torch.linalg.cross(a, s, dim=-1)
    coeff = 2.0 / (1.0 + (a * a).sum(-1, keepdim=True))
    return s + coeff * (axs + torch.linalg.cross(a, axs, dim=-1))


def _normalise(s):
    return s / s.norm(dim=-1, keepdim=True)


def prepare_spins(spins) -> torch.Tensor:
    """Validate spins once (shape, finite unit vectors) and detach them: the start of a run.

    Shapes:
        spins: (N, 3) or (B, N, 3).
    """
    spins = torch.as_tensor(spins)
    check_shape(spins)
    return check_spins(spins.detach(), spins.shape[-2])

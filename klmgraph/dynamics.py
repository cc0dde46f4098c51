"""Stochastic Landau-Lifshitz-Gilbert dynamics and the force providers that drive it.

The equation of motion (DESIGN.md section 1; Miyazaki 2023, eq. 4), with gamma = 1 and unit
spins, in Gilbert form and solved for the time derivative:

    dS/dt = -S x (B + zeta) + alpha S x dS/dt
          = -[S x B' + alpha S x (S x B')] / (1 + alpha^2),        B' = B + zeta,

where B = -dE/dS comes from a *force provider* and zeta is Gaussian white noise with
<zeta^a_r(t) zeta^b_r'(t')> = 2 alpha T delta_rr' delta_ab delta(t - t'). The equation is read
in the Stratonovich sense, for which this noise gives the Boltzmann distribution exp(-E / T)
(W. F. Brown, Phys. Rev. 130, 1677 (1963)). Written as a rotation, dS/dt = W x S with
W = (B' + alpha S x B') / (1 + alpha^2); the midpoint scheme uses that form.

A force provider is anything with ``energy_and_field(spins) -> (E, B)`` (exact
diagonalization, a trained model) or a plain callable returning (E, B). Providers add up with
``+``; the spin-only terms below (:class:`Zeeman`, :class:`SingleIonAnisotropy`,
:class:`Heisenberg`) are providers too.

Shapes, everywhere in this module: spins (N, 3) or (B, N, 3); energy () or (B,); field like spins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Callable, Sequence

import torch

from .checks import check_spins
from .graph import HoppingGraph, vector3

__all__ = ["Provider", "FunctionProvider", "SumProvider", "Zeeman", "SingleIonAnisotropy",
           "Heisenberg", "as_provider", "LLG", "LLGRun", "DivergenceError"]


# ------------------------------------------------------------------------------ providers

class Provider:
    """Base class of force providers: ``energy_and_field(spins) -> (E, B)`` with B = -dE/dS.

    Subclasses implement :meth:`energy_and_field`. Providers add up with ``+`` (also with
    objects that merely have an ``energy_and_field`` method, such as
    :class:`~klmgraph.ExactDiagonalization`, or plain callables).

    Shapes:
        spins: (N, 3) or (B, N, 3) -> energy () or (B,), field: spins' shape.
    """

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.energy_and_field(spins)

    def __add__(self, other) -> "SumProvider":
        return SumProvider(self, other)

    def __radd__(self, other) -> "Provider":
        if isinstance(other, (int, float)) and other == 0:  # lets sum([p1, p2]) work
            return self
        return SumProvider(other, self)


class FunctionProvider(Provider):
    """A provider from a callable ``spins -> (E, B)``, with its output shapes checked.

    Args:
        function: the callable (e.g. ``model.energy_and_field`` or a lambda).
        name: shown in error messages and ``repr``.
    """

    def __init__(self, function: Callable, name: str | None = None):
        if not callable(function):
            raise TypeError(f"a provider needs a callable, got {type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__qualname__", type(function).__name__)

    def energy_and_field(self, spins):
        out = self.function(spins)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"provider {self.name} must return (energy, field), got {type(out).__name__}")
        energy, field = (torch.as_tensor(x, device=spins.device) for x in out)
        if field.shape != spins.shape:
            raise ValueError(f"provider {self.name} returned a field of shape {tuple(field.shape)} "
                             f"for spins of shape {tuple(spins.shape)}")
        if energy.shape != spins.shape[:-2]:
            raise ValueError(f"provider {self.name} returned an energy of shape {tuple(energy.shape)}; "
                             f"expected {tuple(spins.shape[:-2])} (one per configuration)")
        return energy.to(spins.dtype), field.to(spins.dtype)

    def __repr__(self):
        return f"FunctionProvider({self.name})"


def as_provider(obj: Any) -> Provider:
    """Wrap ``obj`` as a :class:`Provider`: providers pass through, objects with an
    ``energy_and_field`` method and plain callables are wrapped.

    Raises:
        TypeError: if ``obj`` is neither.
    """
    if isinstance(obj, Provider):
        return obj
    method = getattr(obj, "energy_and_field", None)
    if callable(method):
        return FunctionProvider(method, type(obj).__name__)
    if callable(obj):
        return FunctionProvider(obj)
    raise TypeError(f"{type(obj).__name__} is not a force provider: give an object with "
                    "energy_and_field(spins) -> (E, B) or a callable returning (E, B)")


class SumProvider(Provider):
    """The sum of several providers: E = sum_k E_k, B = sum_k B_k. Nested sums are flattened."""

    def __init__(self, *terms):
        if not terms:
            raise ValueError("a sum of providers needs at least one term")
        flat = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumProvider) else [as_provider(t)])
        self.terms = flat

    def energy_and_field(self, spins):
        energy, field = self.terms[0].energy_and_field(spins)
        for term in self.terms[1:]:
            e, b = term.energy_and_field(spins)
            energy, field = energy + e, field + b
        return energy, field

    def __repr__(self):
        return " + ".join(repr(t) for t in self.terms)


def _check_shape(spins: torch.Tensor, num_sites: int | None = None) -> None:
    if spins.dim() not in (2, 3) or spins.shape[-1] != 3:
        raise ValueError(f"spins must have shape (N, 3) or (B, N, 3), got {tuple(spins.shape)}")
    if num_sites is not None and spins.shape[-2] != num_sites:
        raise ValueError(f"spins hold {spins.shape[-2]} sites but the graph has {num_sites}")


class Zeeman(Provider):
    """Uniform external field: H = -h . sum_r S_r, B_r = h.

    Args:
        field: the 3-vector h (energy units, gamma = 1).
    """

    def __init__(self, field: Sequence[float]):
        self.field = vector3(field, "field")

    def energy_and_field(self, spins):
        _check_shape(spins)
        h = self.field.to(spins.dtype).to(spins.device)
        return -(spins @ h).sum(-1), h.expand(spins.shape).clone()

    def __repr__(self):
        return f"Zeeman({self.field.tolist()})"


class SingleIonAnisotropy(Provider):
    """Uniaxial single-ion anisotropy: H = -D sum_r (S_r . n)^2, B_r = 2 D (S_r . n) n.

    D > 0 is an easy axis, D < 0 an easy plane.

    Args:
        D: anisotropy constant.
        axis: the axis n (normalised; default z).
    """

    def __init__(self, D: float, axis: Sequence[float] = (0.0, 0.0, 1.0)):
        if not math.isfinite(float(D)):
            raise ValueError(f"D must be finite, got {D}")
        axis = vector3(axis, "axis")
        if axis.norm() == 0:
            raise ValueError("the anisotropy axis must be non-zero")
        self.D = float(D)
        self.axis = axis / axis.norm()

    def energy_and_field(self, spins):
        _check_shape(spins)
        n = self.axis.to(spins.dtype).to(spins.device)
        proj = spins @ n  # (..., N)
        return -self.D * (proj ** 2).sum(-1), 2 * self.D * proj[..., None] * n

    def __repr__(self):
        return f"SingleIonAnisotropy(D={self.D}, axis={self.axis.tolist()})"


class Heisenberg(Provider):
    """Heisenberg exchange on the bonds of a graph: H = -sum_<ij> J_ij S_i . S_j.

    Every bond <ij> is counted once; the graph lists it as two directed edges, so
    H = -(1/2) sum_e J_e S_source(e) . S_target(e) over the directed edges e that are not self
    loops. The field is the exact gradient, B_i = -dH/dS_i = sum_j J_ij S_j (J > 0:
    ferromagnetic).

    Args:
        graph: the hopping graph whose edges carry the exchange.
        J: one coupling for every bond, or a sequence with one coupling per neighbour class
            (``graph.edge_classes``; entry 0, the self loop, must be 0). Give a bond's two
            directions (classes) the same coupling.
    """

    def __init__(self, graph: HoppingGraph, J: float | Sequence[float]):
        k = graph.num_edge_types
        j = torch.as_tensor(J, dtype=torch.float64)
        if j.dim() == 0:
            j = torch.full((k,), float(j), dtype=torch.float64)
            j[0] = 0.0
        if j.shape != (k,) or not torch.isfinite(j).all():
            raise ValueError(f"J must be a number or {k} numbers (one per neighbour class "
                             f"{graph.edge_classes}), got {torch.as_tensor(J).tolist()}")
        if j[0] != 0:
            raise ValueError("J of the self-loop class (entry 0) must be 0: S_i . S_i is constant")
        weight = j[graph.edge_type]
        keep = weight != 0
        self.num_sites = graph.num_nodes
        self.J = j
        self._edges = (*graph.edge_index[:, keep], weight[keep])
        self._cache = {}

    def _edges_on(self, device, dtype):
        """(source, target, weight) on the spins' device, copied there once."""
        key = (str(device), dtype)
        if key not in self._cache:
            src, dst, w = self._edges
            self._cache[key] = (src.to(device), dst.to(device), w.to(device=device, dtype=dtype))
        return self._cache[key]

    def energy_and_field(self, spins):
        _check_shape(spins, self.num_sites)
        src, dst, w = self._edges_on(spins.device, spins.dtype)
        w = w[:, None]  # (E, 1)
        s_src, s_dst = spins[..., src, :], spins[..., dst, :]  # (..., E, 3)
        energy = -0.5 * (w[:, 0] * (s_src * s_dst).sum(-1)).sum(-1)
        # gradient of both ends of every directed edge: exact even if J_ij != J_ji were given
        field = torch.zeros_like(spins)
        field.index_add_(-2, dst, 0.5 * w * s_src)
        field.index_add_(-2, src, 0.5 * w * s_dst)
        return energy, field

    def __repr__(self):
        return f"Heisenberg(J={self.J.tolist()})"


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
        """Energy and field of the provider plus the external field."""
        energy, field = self._total.energy_and_field(spins)
        return energy.detach(), field.detach().to(spins.dtype)

    def step(self, spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Advance by one time step dt.

        Args:
            spins: (N, 3) or (B, N, 3) unit vectors.
            generator: random generator for the noise (on the spins' device).

        Returns:
            the new spins, same shape and dtype.
        """
        return self._step(_prepare(spins), generator)[0]

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
            seed: seeds a fresh generator on the spins' device (reproducible noise); ignored
                when ``generator`` is given.
            generator: random generator for the noise.
            callback: called as ``callback(step, spins, energy)`` at every record, with the
                configuration at the start of that step, before that step's noise is drawn
                (so ``generator.get_state()`` there is the state that continues the run
                exactly from that configuration).
            start_step: number of the first step (a run continued from step ``start_step``):
                steps, times and the record schedule count from 0 as if the run had never
                stopped.
            check_finite: stop with :class:`DivergenceError` at the first step whose energy,
                field or new spins are not finite (NaN or inf), before anything of that step is
                recorded. Costs one reduction (and, on a GPU, one synchronisation) per step.

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
        spins = _prepare(spins)
        if generator is None and seed is not None:
            generator = torch.Generator(device=spins.device).manual_seed(int(seed))
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
            # the first provider evaluation of the step comes first, so a record (and its
            # callback) sees the configuration and the generator before the step's noise
            energy, field = self.energy_and_field(spins)
            if check_finite:
                _check_finite(n, self.dt, spins, energy, field, "the provider's energy or field")
            if n == start_step or (record_every and n % record_every == 0):
                record(n, spins, energy)
            new = self._advance(spins, field, self._noise(spins, generator))
            if check_finite:
                _check_finite(n, self.dt, spins, new, None, "the new spins")
            spins = new
        energy = self.energy_and_field(spins)[0]
        if check_finite:
            _check_finite(end, self.dt, spins, energy, None, "the provider's energy")
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

    def _step(self, spins, generator):
        """(new spins, energy of the input spins)."""
        energy, field = self.energy_and_field(spins)
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
        _, b1 = self.energy_and_field(s1)
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
                _, b = self.energy_and_field(s_eval)
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


def _check_finite(step, dt, spins, values, field, what):
    """Raise :class:`DivergenceError` naming ``step`` unless ``values`` (and ``field``) are finite."""
    ok = torch.isfinite(values).all()
    if field is not None:
        ok = ok & torch.isfinite(field).all()
    if bool(ok):  # one synchronisation per call on a GPU
        return
    hint = ("the provider failed on a finite configuration" if "provider" in what else
            "the step diverged: a smaller dt (or a provider that stays finite) is needed")
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


def _prepare(spins) -> torch.Tensor:
    spins = torch.as_tensor(spins)
    _check_shape(spins)
    return check_spins(spins.detach(), spins.shape[-2])

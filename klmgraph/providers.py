"""Force providers: anything that maps spins to (energy, field), and the spin-only terms.

A force provider is anything with ``energy_and_field(spins) -> (E, B)``, B = -dE/dS (exact
diagonalization, a trained model) or a plain callable returning (E, B). Providers add up with
``+``; :class:`Zeeman`, :class:`SingleIonAnisotropy` and :class:`Heisenberg` are providers too.

Two entry points: ``energy_and_field`` validates its input (shape, and for providers that
check them, finite unit vectors: a host synchronisation on a GPU), and
``energy_and_field_unchecked`` is the integrator's hot path, for spins that it has validated
once at the start of a run and keeps unit-length itself. Objects outside this module may offer
``energy_and_field_unchecked`` too (a bound model does); :func:`as_provider` uses it then.
None of the terms here synchronises with the host in either path.

Shapes, everywhere in this module: spins (N, 3) or (B, N, 3); energy () or (B,); field like spins.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from .graph import HoppingGraph, vector3

__all__ = ["Provider", "FunctionProvider", "SumProvider", "Zeeman", "SingleIonAnisotropy",
           "Heisenberg", "as_provider", "check_shape"]


def check_shape(spins: torch.Tensor, num_sites: int | None = None) -> None:
    """Raise ValueError unless spins are (N, 3) or (B, N, 3) with N = ``num_sites`` (no sync)."""
    if spins.dim() not in (2, 3) or spins.shape[-1] != 3:
        raise ValueError(f"spins must have shape (N, 3) or (B, N, 3), got {tuple(spins.shape)}")
    if num_sites is not None and spins.shape[-2] != num_sites:
        raise ValueError(f"spins hold {spins.shape[-2]} sites but the graph has {num_sites}")


class Provider:
    """Base class of force providers: ``energy_and_field(spins) -> (E, B)`` with B = -dE/dS.

    Subclasses implement :meth:`energy_and_field` and, where validation costs something,
    :meth:`energy_and_field_unchecked`. Providers add up with ``+`` (also with objects that
    merely have an ``energy_and_field`` method, such as
    :class:`~klmgraph.ExactDiagonalization`, or plain callables).

    Shapes:
        spins: (N, 3) or (B, N, 3) -> energy () or (B,), field: spins' shape.
    """

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def energy_and_field_unchecked(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`energy_and_field`, for spins already validated by the caller."""
        return self.energy_and_field(spins)

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
        unchecked: the same computation without input validation (the hot path), if the
            object offers one; defaults to ``function``.
    """

    def __init__(self, function: Callable, name: str | None = None, unchecked: Callable | None = None):
        if not callable(function):
            raise TypeError(f"a provider needs a callable, got {type(function).__name__}")
        self.function = function
        self.unchecked = unchecked if unchecked is not None else function
        self.name = name or getattr(function, "__qualname__", type(function).__name__)

    def energy_and_field(self, spins):
        return self._checked_output(self.function(spins), spins)

    def energy_and_field_unchecked(self, spins):
        return self._checked_output(self.unchecked(spins), spins)

    def _checked_output(self, out, spins):
        # shapes only: no host synchronisation
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
    ``energy_and_field`` method (and optionally ``energy_and_field_unchecked``) and plain
    callables are wrapped.

    Raises:
        TypeError: if ``obj`` is neither.
    """
    if isinstance(obj, Provider):
        return obj
    method = getattr(obj, "energy_and_field", None)
    if callable(method):
        unchecked = getattr(obj, "energy_and_field_unchecked", None)
        return FunctionProvider(method, type(obj).__name__, unchecked if callable(unchecked) else None)
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

    def _sum(self, spins, unchecked: bool):
        outs = [(t.energy_and_field_unchecked if unchecked else t.energy_and_field)(spins) for t in self.terms]
        energy, field = outs[0]
        for e, b in outs[1:]:
            energy, field = energy + e, field + b
        return energy, field

    def energy_and_field(self, spins):
        return self._sum(spins, unchecked=False)

    def energy_and_field_unchecked(self, spins):
        return self._sum(spins, unchecked=True)

    def __repr__(self):
        return " + ".join(repr(t) for t in self.terms)


class _OnDevice:
    """Copies of a provider's constant tensors per (device, dtype), made once: a call does no
    host-to-device copy."""

    def __init__(self, **tensors):
        self._tensors = tensors
        self._copies = {}

    def get(self, device, dtype) -> dict:
        key = (str(device), dtype)
        if key not in self._copies:
            self._copies[key] = {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                                 for name, t in self._tensors.items()}
        return self._copies[key]


class Zeeman(Provider):
    """Uniform external field: H = -h . sum_r S_r, B_r = h.

    Args:
        field: the 3-vector h (energy units, gamma = 1).
    """

    def __init__(self, field: Sequence[float]):
        self.field = vector3(field, "field")
        self._on = _OnDevice(h=self.field)

    def energy_and_field(self, spins):
        check_shape(spins)
        h = self._on.get(spins.device, spins.dtype)["h"]
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
        self._on = _OnDevice(n=self.axis)

    def energy_and_field(self, spins):
        check_shape(spins)
        n = self._on.get(spins.device, spins.dtype)["n"]
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

    The field is a gather through a padded (N, D) table of every site's partners and a sum
    in a fixed order, not a scatter-add: no atomic additions, so it is bit-reproducible on a
    GPU as well (``deterministic`` runs need nothing else from it).

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
        n = graph.num_nodes
        edge_index, edge_type = graph.edge_index.cpu(), graph.edge_type.cpu()
        weight = j[edge_type]
        keep = weight != 0
        src, dst, w = edge_index[0, keep], edge_index[1, keep], weight[keep]
        # B_i collects 0.5 w S_src from every edge into i and 0.5 w S_dst from every edge out of
        # i: exact even if J_ij != J_ji were given. Partners of site i, padded with weight 0.
        site = torch.cat([dst, src])
        partner = torch.cat([src, dst])
        half = 0.5 * torch.cat([w, w])
        order = torch.argsort(site * n + partner, stable=True)
        site, partner, half = site[order], partner[order], half[order]
        degree = torch.bincount(site, minlength=n)
        width = int(degree.max()) if len(site) else 0
        first = torch.cumsum(degree, 0) - degree
        slot = torch.arange(len(site)) - first[site]
        table = torch.zeros((n, width), dtype=torch.long)
        table_w = torch.zeros((n, width), dtype=torch.float64)
        table[site, slot] = partner
        table_w[site, slot] = half
        self.num_sites = n
        self.J = j
        self._on = _OnDevice(src=src, dst=dst, w=w, table=table, table_w=table_w)

    def energy_and_field(self, spins):
        check_shape(spins, self.num_sites)
        t = self._on.get(spins.device, spins.dtype)
        s_src, s_dst = spins[..., t["src"], :], spins[..., t["dst"], :]  # (..., E, 3)
        energy = -0.5 * (t["w"] * (s_src * s_dst).sum(-1)).sum(-1)
        field = (t["table_w"][..., None] * spins[..., t["table"], :]).sum(-2)  # (..., N, D, 3) -> (..., N, 3)
        return energy, field

    def __repr__(self):
        return f"Heisenberg(J={self.J.tolist()})"

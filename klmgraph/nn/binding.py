"""A model bound to one graph (the force-provider protocol) and the model-graph compatibility check.

Layering: this module imports the models' protocol only (``num_classes``, ``edge_classes``,
``lattice``, ``prepare(graph)``, ``energy(spins, prepared)``, ``site_energies(spins, prepared)``,
``receptive_hops(graph)`` and optionally ``prepare_domain(graph, sites)``); :mod:`klmgraph.io`
imports it, never the other way round.

Domains (:mod:`klmgraph.domains`): :class:`DomainModel` evaluates a model on one domain, the
site energies of the owned sites and their gradient on owned and halo sites. A model bound
with ``chunk_sites`` runs it over the domains of the lattice one after another (memory bounded
by a chunk and its halo); the distributed runner runs it on the domain of its process.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
from torch import nn

from ..checks import check_spins
from ..domains import Domain, check_halo, decompose, domain_of, partition
from ..graph import SIZE_KEYS, lattice_key
from .forces import compute_field
from .threads import ThreadChoice, one_torch_thread

__all__ = ["BoundModel", "DomainModel", "check_graph", "receptive_hops", "SIZE_KEYS"]

def check_graph(model, graph) -> None:
    """Raise ValueError unless ``graph`` is the lattice (any size) with the classes ``model`` was built for."""
    if model.num_classes is not None and graph.num_edge_types != model.num_classes:
        raise ValueError(f"the model was built for {model.num_classes} neighbour classes, the graph has "
                         f"{graph.num_edge_types}: {graph.edge_classes}")
    if model.edge_classes is not None and list(graph.edge_classes) != list(model.edge_classes):
        raise ValueError(f"the model was built for neighbour classes {model.edge_classes}, the graph has "
                         f"{graph.edge_classes}")
    mine, theirs = lattice_key(model.lattice), lattice_key(getattr(graph, "description", None))
    if mine is not None and theirs is not None and mine != theirs:
        raise ValueError(f"the model was built for the lattice {mine}, the graph is {theirs} "
                         "(only the size may differ)")


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """Parameters not requiring grad for the duration: autograd then keeps only what dB/dS
    needs (e.g. not the gathered neighbour features that dE/dW would need), which roughly
    halves the memory of an energy + field evaluation. Flags are restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def receptive_hops(model, graph) -> int:
    """Hops over ``graph``'s edges beyond which a site energy of ``model`` does not look (the
    model's ``receptive_hops(graph)``: message-passing layers, or the hops that cover a
    descriptor radius).

    Raises:
        ValueError: for a model that does not say.
    """
    hook = getattr(model, "receptive_hops", None)
    if not callable(hook):
        raise ValueError(f"{type(model).__name__} does not say how far its site energies reach (no "
                         "receptive_hops(graph)): it cannot be evaluated in chunks or domains")
    return int(hook(graph))


class DomainModel:
    """A model on one :class:`~klmgraph.domains.Domain`: the energy of the owned sites and its
    gradient with respect to every local spin (owned and halo).

    The domain's halo must cover the model's receptive field (checked). The local tables come
    from the model's ``prepare_domain(graph, sites, deterministic)`` if it has one (the IFNN,
    whose tables come from the lattice's geometry), else from ``prepare`` of the domain's
    subgraph (the ECNN: edges with both ends in the domain).

    Args:
        model: an ECNN or IFNN (any module with ``site_energies``, ``prepare`` and ``receptive_hops``).
        graph: the full graph.
        domain: the domain.
        deterministic: tables without atomic additions.

    Raises:
        ValueError: if the halo is narrower than the receptive field.
    """

    def __init__(self, model: nn.Module, graph, domain: Domain, deterministic: bool = False):
        check_halo(domain.halo_hops, receptive_hops(model, graph), type(model).__name__)
        self.model = model
        self.domain = domain
        self.num_owned = domain.num_owned
        hook = getattr(model, "prepare_domain", None)
        if callable(hook):
            self._tables = hook(graph, domain.sites, deterministic=deterministic)
        else:
            self._tables = model.prepare(domain.local_graph, deterministic=True) if deterministic else \
                model.prepare(domain.local_graph)

    def tables(self, device):
        self._tables = self._tables.to(device)
        return self._tables

    def owned_energy(self, spins: torch.Tensor) -> torch.Tensor:
        """Sum of the owned sites' energies, in the model's dtype (autograd as the caller sets it).

        Shapes:
            spins: (..., n_local, 3) local spins, owned first, in the model's dtype and device -> (...)
        """
        e = self.model.site_energies(spins, self.tables(spins.device))  # (..., n_local)
        return e[..., : self.num_owned].sum(-1)

    def energy_and_gradient(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(owned energy, dE_owned/dS of every local spin), detached, in the model's dtype.

        Shapes:
            spins: (..., n_local, 3) -> (...), (..., n_local, 3)
        """
        s = spins.detach().requires_grad_(True)
        with torch.enable_grad(), _frozen(self.model):
            energy = self.owned_energy(s)
            grad = -compute_field(energy, s, training=False)
        return energy.detach(), grad.detach()


class BoundModel:
    """A model applied to one graph: the force-provider protocol of ExactDiagonalization.

    The graph's neighbour table (``model.prepare(graph)``) is built once here and lives as
    long as this object; it moves to the model's device at the first call on that device (a
    model moved later is followed, the table is copied once per move, never per call).
    Computation happens in the model's dtype and device; results come back in the spins'
    dtype and device. During a call the weights are frozen (requires_grad off, restored
    afterwards) so that autograd keeps only what dB/dS needs; do not train the same model from
    another thread at the same time, nor evaluate one BoundModel from two threads at once.

    Chunked evaluation (``chunk_sites``): the lattice is split into domains of about that many
    sites (:func:`klmgraph.domains.decompose`: blocks of cells on a Bravais lattice, coordinate
    bisection otherwise), each with a halo as wide as the model's receptive field; the domains
    are evaluated one after another (:class:`DomainModel`), the halo gradients added to their
    owners. Memory is that of one domain, not of the lattice; energy and field equal the
    unchunked call's to rounding (the sums run in another order).

    Args:
        model: an :class:`~klmgraph.ECNN` or :class:`~klmgraph.nn.IFNN` (any module with
            ``num_classes``, ``prepare(graph)`` and ``energy(spins, prepared)``).
        graph: the hopping graph; its number of classes must match the model's, and so must
            the class names when the model knows them.
        deterministic: sums without atomic additions (bit-identical reruns on a GPU).
        chunk_sites: None (default: the whole lattice at once), a number of sites per chunk, or
            ``"auto"``: the largest chunk whose autograd memory (measured on a probe chunk) fits
            in half the free memory of the model's device; on CUDA an out-of-memory error halves
            it and retries.
        halo_hops: halo width of the chunks (default: the model's receptive field; narrower is
            refused).
        threads: threads of a compiled kernel the model offers (the ECNN's, on the CPU): a
            positive count, used as given, or ``"auto"`` (default): the faster of 1 thread and
            ``torch.get_num_threads()``, judged by timing this object's own calls, so a loaded
            machine falls back to 1 thread and an idle one keeps the others
            (:class:`~klmgraph.nn.threads.ThreadChoice`). Results do not depend on it.

    Raises:
        ValueError: if the graph's neighbour classes do not match the model's, ``deterministic``
            is asked of a model or graph that has no such path, ``chunk_sites`` is not a positive
            integer or "auto", the halo is narrower than the receptive field, or ``threads`` is
            neither a positive integer nor "auto".
    """

    def __init__(self, model: nn.Module, graph, deterministic: bool = False, chunk_sites: int | str | None = None,
                 halo_hops: int | None = None, threads: int | str = "auto"):
        check_graph(model, graph)
        self.threads = ThreadChoice(threads)
        self._kernel = False  # whether the last call went through a compiled kernel
        self.model = model
        self.graph = graph
        self.num_sites = graph.num_nodes
        self.deterministic = bool(deterministic)
        self.chunk_sites = None
        self._chunks, self._neighbours = None, None
        self._auto = chunk_sites == "auto"
        if chunk_sites is not None:
            self._halo = receptive_hops(model, graph) if halo_hops is None else int(halo_hops)
            check_halo(self._halo, receptive_hops(model, graph), type(model).__name__)
            if self._auto:
                chunk_sites = self._auto_chunk_sites()
            elif not isinstance(chunk_sites, int) or isinstance(chunk_sites, bool) or chunk_sites < 1:
                raise ValueError(f'chunk_sites must be a positive integer, "auto" or None, got {chunk_sites!r}')
            self.chunk_sites = int(chunk_sites)
        if self.chunk_sites is None or self.chunk_sites >= self.num_sites:
            self._neighbours = model.prepare(graph, deterministic=True) if deterministic else model.prepare(graph)

    # ------------------------------------------------------------------ chunks
    @property
    def chunks(self) -> list[DomainModel] | None:
        """The chunks (built at first use: a process of a split run that evaluates only its own
        domain never builds them), or None when the lattice is evaluated whole."""
        if self._chunks is None and self._neighbours is None:
            self._make_chunks(self.chunk_sites)
        return self._chunks

    def _make_chunks(self, chunk_sites: int) -> None:
        self.chunk_sites = int(chunk_sites)
        parts = math.ceil(self.num_sites / min(self.chunk_sites, self.num_sites))
        self._chunks = [DomainModel(self.model, self.graph, d, self.deterministic)
                        for d in decompose(self.graph, parts, self._halo)] if parts > 1 else None
        if self._chunks is None:
            self._neighbours = self.model.prepare(self.graph, deterministic=True) if self.deterministic else \
                self.model.prepare(self.graph)

    def _auto_chunk_sites(self) -> int:
        """Sites per chunk that fit in half the free memory of the model's device, from the
        bytes autograd keeps per local site on a probe chunk (about 512 sites)."""
        p = self._reference_param()
        parts = max(1, self.num_sites // 512)
        owner = partition(self.graph, parts, self._halo)
        probe = DomainModel(self.model, self.graph, domain_of(self.graph, owner, 0, self._halo), self.deterministic)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        spins = torch.nn.functional.normalize(torch.randn(probe.domain.num_local, 3, dtype=p.dtype), dim=-1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            probe.energy_and_gradient(spins.to(p.device))
        per_site = 2.0 * saved[0] / probe.domain.num_local + 64  # gradient buffers, inputs and outputs
        halo_factor = probe.domain.num_local / probe.domain.num_owned
        return max(1, int(0.5 * _free_memory(p.device) / (per_site * halo_factor)))

    def _reference_param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def neighbours(self, device) -> object:
        """The graph's prepared table on ``device`` (moved there once; unchunked models only)."""
        self._neighbours = self._neighbours.to(device)
        return self._neighbours

    def _check_shape(self, spins: torch.Tensor) -> None:
        if spins.dim() not in (2, 3) or tuple(spins.shape[-2:]) != (self.num_sites, 3):
            raise ValueError(f"spins must have shape ({self.num_sites}, 3) or (B, {self.num_sites}, 3), "
                             f"got {tuple(spins.shape)}")

    def energy(self, spins: torch.Tensor) -> torch.Tensor:
        """Energy without the field (no autograd graph). Shapes: (N, 3) or (B, N, 3) -> () or (B,)."""
        spins = check_spins(spins, self.num_sites)
        p = self._reference_param()
        s = spins.to(p)
        with torch.no_grad():
            if self.chunks is None:
                return self.model.energy(s, self.neighbours(p.device)).to(spins)
            return sum(c.owned_energy(s[..., c.domain.sites.to(p.device), :]) for c in self.chunks).to(spins)

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and effective field B = -dE/dS (spins validated: two host synchronisations).

        Shapes:
            spins: (N, 3) or (B, N, 3) unit vectors -> E: () or (B,), B: spins' shape.
        """
        # beside a compiled kernel's threads torch's part runs on one (see one_torch_thread)
        with one_torch_thread() if self._kernel else contextlib.nullcontext():
            spins = check_spins(spins, self.num_sites)
        return self.energy_and_field_unchecked(spins)

    def energy_and_field_unchecked(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`energy_and_field` for spins the caller has validated (the integrator's hot
        path: shapes are checked, values are not, and nothing synchronises with the host)."""
        self._check_shape(spins)
        p = self._reference_param()
        s = spins.detach().to(p)
        while True:
            try:
                energy, field = self._evaluate(s, p.device)
                break
            except torch.cuda.OutOfMemoryError:
                if not self._auto or self.chunk_sites <= 1:
                    raise
                torch.cuda.empty_cache()
                self._make_chunks(max(1, self.chunk_sites // 2))
        return energy.to(spins), field.to(spins)

    def _evaluate(self, s: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunks is None:
            # a model may offer a compiled path (ECNN: nn/fused.py); None where it does not apply
            # (it needs the whole graph's table, so chunks take the autograd path); its thread
            # count chosen by timing (self.threads)
            fused = getattr(self.model, "fused_energy_and_field", None)
            neighbours = self.neighbours(device)
            result = None if fused is None else self.threads.run(
                lambda count: fused(s, neighbours, threads=count), work=s.numel() // 3)
            self._kernel = result is not None
            if result is not None:
                return result
            s = s.requires_grad_(True)
            with torch.enable_grad(), _frozen(self.model):
                energy = self.model.energy(s, self.neighbours(device))
                field = compute_field(energy, s, training=False)
            return energy.detach(), field.detach()
        energy, field = 0.0, torch.zeros_like(s)
        for chunk in self.chunks:
            sites = chunk.domain.sites.to(device)
            e, grad = chunk.energy_and_gradient(s[..., sites, :])
            energy = energy + e
            field.index_add_(-2, sites, grad, alpha=-1)  # halo parts land on their owners
        return energy, field

    def __call__(self, spins):
        return self.energy_and_field(spins)


def _free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 ** 31

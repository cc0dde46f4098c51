"""The force provider of one process of a split lattice: energy and field of its owned sites.

An LLG provider (a sum of terms) is split by kind of term:

* models bound to the graph (:class:`~klmgraph.ECNN`, :class:`~klmgraph.nn.IFNN`): the site
  energies of the owned sites from owned and halo spins (:class:`~klmgraph.nn.DomainModel`),
  their gradient on halo sites sent back to the owners; a model bound with ``chunk_sites``
  evaluates the domain in chunks of that size (:func:`klmgraph.domains.split_domain`), so a
  process's memory is that of a chunk;
* :class:`~klmgraph.Heisenberg`: the bonds into owned sites, the same way (one hop of halo);
* :class:`~klmgraph.Zeeman`, :class:`~klmgraph.SingleIonAnisotropy`: on the owned spins alone;
* exact diagonalization is refused (every spin's field depends on every other: it is not
  local), and so is the kernel polynomial method (its probe vectors span the lattice: it runs
  in one process); other providers are refused with their name.

One halo exchange of spins and one reverse exchange of gradients per evaluation, whatever the
terms; the energy is summed over the processes.
"""
from __future__ import annotations

import torch

from ..domains import Domain, split_domain
from ..electrons import KPM, ExactDiagonalization
from ..nn.binding import BoundModel, DomainModel, receptive_hops
from ..providers import Heisenberg, Provider, SingleIonAnisotropy, SumProvider, Zeeman, as_provider
from .exchange import HaloExchange

__all__ = ["DomainProvider", "provider_terms", "required_halo"]

_SITE_TERMS = (Zeeman, SingleIonAnisotropy)


def provider_terms(provider) -> list:
    """The terms of a provider (a sum is flattened), each checked to be local.

    Raises:
        ValueError: for exact diagonalization, KPM or any provider that is not local.
    """
    terms = provider.terms if isinstance(provider, SumProvider) else [provider]
    out = []
    for term in terms:
        inner = getattr(term, "function", None)
        target = getattr(inner, "__self__", term)  # a wrapped object's bound method
        if isinstance(target, ExactDiagonalization):
            raise ValueError("exact diagonalization cannot run on a split lattice: every field depends on every "
                             "spin (it is not local); run it in one process (--nprocs 1)")
        if isinstance(target, KPM):
            raise ValueError("the kernel polynomial method runs in one process: its probe vectors span the whole "
                             "lattice; use --nprocs 1 (or a trained model for a split lattice)")
        if not isinstance(target, (BoundModel, Heisenberg) + _SITE_TERMS):
            raise ValueError(f"{target!r} is not a provider a split lattice can evaluate: use models (ECNN, IFNN) "
                             "and the spin terms Zeeman, SingleIonAnisotropy, Heisenberg")
        out.append(target)
    return out


def required_halo(terms: list, graph) -> int:
    """The widest receptive field of the terms, in hops (0 for site terms alone)."""
    hops = [receptive_hops(t.model, graph) for t in terms if isinstance(t, BoundModel)]
    hops += [1 for t in terms if isinstance(t, Heisenberg)]
    return max(hops, default=0)


class DomainProvider(Provider):
    """Energy (summed over the processes) and field of the owned sites of one domain.

    Args:
        terms: :func:`provider_terms` of the run's provider (Zeeman included).
        graph: the full graph.
        domain: this process's domain (its halo at least :func:`required_halo` wide: checked).
        exchange: the :class:`~klmgraph.distributed.HaloExchange` of the domain.

    Shapes:
        spins: (n_owned, 3) -> energy (), field (n_owned, 3)
    """

    def __init__(self, terms: list, graph, domain: Domain, exchange: HaloExchange):
        self.exchange = exchange
        self.num_owned = domain.num_owned
        self.models, self.bonds, self.sites = [], [], []
        for t in terms:
            if isinstance(t, BoundModel):
                self.models.append(self._chunks(t, graph, domain))
            elif isinstance(t, Heisenberg):
                if domain.halo_hops < 1:
                    raise ValueError("a Heisenberg term needs a halo of at least 1 hop")
                self.bonds.append(Heisenberg(domain.local_graph.targets_in(domain.num_owned), t.J))
            else:
                self.sites.append(t)

    @staticmethod
    def _chunks(bound: BoundModel, graph, domain: Domain) -> list:
        """(DomainModel, positions of its sites among the domain's) of the model, in chunks of
        the model's ``chunk_sites`` when it was bound with one (else the whole domain)."""
        if bound.chunk_sites is None or domain.num_owned <= bound.chunk_sites:
            return [(DomainModel(bound.model, graph, domain, bound.deterministic), None)]
        local = torch.full((graph.num_nodes,), -1, dtype=torch.long)
        local[domain.sites] = torch.arange(domain.num_local)
        parts = -(-domain.num_owned // bound.chunk_sites)
        return [(DomainModel(bound.model, graph, d, bound.deterministic), local[d.sites])
                for d in split_domain(graph, domain, parts)]

    def energy_and_field(self, spins):
        if spins.shape != (self.num_owned, 3):
            raise ValueError(f"a domain provider takes the ({self.num_owned}, 3) owned spins, got {tuple(spins.shape)}")
        return self.energy_and_field_unchecked(spins)

    def energy_and_field_unchecked(self, spins):
        energy = spins.new_zeros(())
        field = torch.zeros_like(spins)
        if self.models or self.bonds:
            local = self.exchange.halo(spins)
            grad = torch.zeros_like(local)
            for chunks in self.models:
                for m, where in chunks:
                    p = next(m.model.parameters())
                    if where is None:
                        e, g = m.energy_and_gradient(local.to(p))
                        grad = grad + g.to(spins)
                    else:
                        where = where.to(spins.device)
                        e, g = m.energy_and_gradient(local[where].to(p))
                        grad = grad.index_add(0, where, g.to(spins))
                    energy = energy + e.to(spins)
            for b in self.bonds:
                e, f = b.energy_and_field_unchecked(local)
                energy, grad = energy + e, grad - f
            field = field - self.exchange.reverse(grad)
        for t in self.sites:
            e, f = t.energy_and_field_unchecked(spins)
            energy, field = energy + e, field + f
        return self.exchange.all_sum(energy), field

    def __repr__(self):
        return f"DomainProvider({len(self.models)} models, {len(self.bonds)} bond terms, {len(self.sites)} site terms)"

"""FoldedED: ED of a configuration that repeats a smaller lattice equals ED of the whole lattice."""
import pytest
import torch

import klmgraph
from klmgraph import ExactDiagonalization, FoldedED


def _tiled(small, big, seed):
    fold = FoldedED(ExactDiagonalization(big, J=1.0, mu=0.0), small)
    return klmgraph.random_spins(small, batch=2, seed=seed).double()[:, fold.tile]


@pytest.mark.parametrize("build, sizes, k_grid, ensemble", [
    (lambda size: klmgraph.triangular(*size, t1=1.0, t3=-0.85), ((5, 6), (10, 6)), (2, 1), {"mu": -3.5}),
    (lambda size: klmgraph.square(*size), ((3, 3), (6, 3)), None, {"filling": 0.48}),
    # canonical on a k-grid at T > 0: the electrons are counted over all twists, the same in both
    (lambda size: klmgraph.kagome(*size), ((2, 3), (4, 3)), (1, 2), {"filling": 0.4, "temperature": 0.05}),
])
def test_folded_ed_equals_ed_of_the_whole_lattice(build, sizes, k_grid, ensemble):
    small, big = build(sizes[0]), build(sizes[1])
    ed = ExactDiagonalization(big, J=-1.0, k_grid=k_grid, **ensemble)
    fold = FoldedED(ed, small)
    spins = _tiled(small, big, seed=3)
    energy, field = fold.energy_and_field(spins)
    ref_energy, ref_field = ed.energy_and_field(spins)
    torch.testing.assert_close(energy, ref_energy, rtol=0, atol=1e-10)
    torch.testing.assert_close(field, ref_field, rtol=0, atol=1e-10)
    assert fold.parameters() == ed.parameters() and fold.graph is big
    # one configuration, unbatched
    e1, f1 = fold.energy_and_field(spins[1])
    torch.testing.assert_close(e1, ref_energy[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(f1, ref_field[1], rtol=0, atol=1e-10)


def test_folded_ed_refuses_what_it_cannot_fold():
    big = klmgraph.triangular(10, 6, t1=1.0, t3=-0.85)
    ed = ExactDiagonalization(big, J=-1.0, mu=-3.5)
    with pytest.raises(ValueError, match=r"size \[6, 6\] does not divide \[10, 6\]"):
        FoldedED(ed, klmgraph.triangular(6, 6, t1=1.0, t3=-0.85))
    with pytest.raises(ValueError, match="not a lattice of the same kind and hoppings"):
        FoldedED(ed, klmgraph.triangular(5, 6, t1=1.0))
    fold = FoldedED(ed, klmgraph.triangular(5, 6, t1=1.0, t3=-0.85))
    with pytest.raises(ValueError, match=r"a configuration does not repeat triangular 5x6"):
        fold.energy_and_field(klmgraph.random_spins(big, seed=0).double())

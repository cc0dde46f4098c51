"""The counter-based noise stream: Philox known answers, a pure function of (seed, step, site,
component), and LLG runs that continue exactly without any stored generator state."""
import pytest
import torch

import klmgraph
from klmgraph.noise import gaussian, philox4x32
from klmgraph.providers import Heisenberg, SingleIonAnisotropy


@pytest.mark.parametrize("counter, key, expected", [
    # Random123's known-answer vectors (kat_vectors, philox4x32_10)
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    assert philox4x32(torch.tensor(counter), key).tolist() == list(expected)


def test_noise_is_a_function_of_seed_step_site_component():
    full = gaussian(5, 7, (3, 40, 3))
    assert torch.equal(gaussian(5, 7, (40, 3)), full[0])  # configuration 0 of a batch = one config
    # a domain of a split lattice draws the rows of its global sites
    assert torch.equal(gaussian(5, 7, (3, 15, 3), site_offset=20), full[:, 20:35])
    assert not torch.equal(gaussian(5, 8, (40, 3)), full[0])
    assert not torch.equal(gaussian(6, 7, (40, 3)), full[0])
    assert gaussian(5, 2 ** 40 + 7, (4, 3)).shape == (4, 3)  # 64-bit steps
    assert torch.equal(gaussian(5, 7, (40, 3), dtype=torch.float32), full[0].float())
    with pytest.raises(ValueError, match="shape"):
        gaussian(0, 0, (4, 2))


def test_noise_statistics():
    z = gaussian(11, 3, (200_000, 3))
    assert z.mean(0).abs().max() < 0.01  # 3 sigma = 0.0067
    assert (z.var(0) - 1).abs().max() < 0.015
    assert (z.T @ z / len(z) - torch.eye(3, dtype=z.dtype)).abs().max() < 0.015  # components independent
    assert abs((z[:-1] * z[1:]).mean()) < 0.01  # neighbouring sites independent


def test_noise_on_meta_device():
    assert gaussian(1, 2, (2, 5, 3), device="meta").device.type == "meta"


def test_llg_with_seed_continues_exactly_from_any_step():
    graph = klmgraph.square(4, 4)
    llg = klmgraph.LLG(Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.3), dt=0.05, alpha=0.2, temperature=0.5)
    s0 = klmgraph.random_spins(graph, seed=0, dtype=torch.float64)
    whole = llg.run(s0, 9, seed=4).spins
    part = llg.run(s0, 4, seed=4).spins
    assert torch.equal(llg.run(part, 5, seed=4, start_step=4).spins, whole)
    assert not torch.equal(llg.run(s0, 9, seed=5).spins, whole)

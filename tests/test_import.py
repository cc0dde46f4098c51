"""Import of the published ecnn4klm checkpoints, checked against exact diagonalization.

The checkpoints are not part of the repository; they are looked for next to it, in
../shared/ecnn4klm/, and these tests skip where they are absent.
"""
import math
from pathlib import Path

import pytest
import torch
from e3nn import o3

import klmgraph
from klmgraph.compat.ecnn4klm import PUBLISHED

CHECKPOINTS = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm"
TRIANGLE = CHECKPOINTS / "triangle_param.cpt"
SQUARE = CHECKPOINTS / "square_param.cpt"


def need(path):
    if not path.is_file():
        pytest.skip(f"published checkpoint {path.name} not found in {CHECKPOINTS} "
                    "(tests look for ../shared/ecnn4klm/ beside the repository)")
    return path


def field_rmse(model, graph, ed, seed):
    spins = klmgraph.random_spins(graph, seed=seed)
    e_ed, b_ed = ed.energy_and_field(spins)
    e, b = model.bind(graph).energy_and_field(spins.float())
    return float(((b.double() - b_ed) ** 2).mean().sqrt()), float((e.double() - e_ed) / graph.num_nodes)


def test_triangular_model_reproduces_ed():
    graph = klmgraph.triangular(12, 12, t1=1.0, t3=-0.85)
    model = klmgraph.load_ecnn4klm(need(TRIANGLE), graph)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
    rmse, energy_error = field_rmse(model, graph, ed, seed=0)
    # 12x12 is smaller than the 36x36 training lattice: ~8e-3 here, ~2e-3 on 24x24
    assert rmse < 0.01
    assert abs(energy_error) < 0.02
    assert model.hamiltonian["mu"] == -3.5


def test_square_model_reproduces_ed():
    graph = klmgraph.square(12, 12)
    model = klmgraph.load_ecnn4klm(need(SQUARE), graph)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    rmse, _ = field_rmse(model, graph, ed, seed=0)
    assert rmse < 0.1  # published validation RMSE 0.048 (30x30); ~0.05 here; fields are O(2)


@pytest.mark.parametrize("kind", ["square", "triangular"])
def test_first_layer_equals_published_tensor_product(kind):
    """Rebuild the published first convolution exactly as ecnn4klm lays it out (an e3nn
    TensorProduct over K_pub columns, column k = features of site r + delta_k, the square
    model's five centre columns included) and compare with the imported layer, which merges
    columns per neighbour class and rescales e3nn's path normalisation."""
    path = need(SQUARE if kind == "square" else TRIANGLE)
    graph = klmgraph.square(6, 6) if kind == "square" else klmgraph.triangular(6, 6, t1=1.0, t3=-0.85)
    model = klmgraph.load_ecnn4klm(path, graph).double()
    weight = torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]["conv1.tp.weight"]
    columns = PUBLISHED[kind]["columns"]

    spins = klmgraph.random_spins(graph, seed=3)
    x = o3.spherical_harmonics("1x0e+1x1e+1x2e", spins, normalize=False)
    filt = o3.spherical_harmonics("1x0e+1x1e", spins, normalize=False)
    nb = model.neighbours(graph.edge_index, graph.edge_type, graph.num_nodes)
    by_class = nb.aggregate(x)  # (N, K, 9)
    names = graph.edge_classes
    stacked = torch.cat([by_class[:, names.index("self" if not any(d) else f"({d[0]}, {d[1]})")]
                         for d in columns], dim=-1)  # (N, K_pub * 9)

    irreps_in, irreps_f, irreps_out = o3.Irreps("1x0e+1x1e+1x2e"), o3.Irreps("1x0e+1x1e"), o3.Irreps("8x0e+8x1e+8x2e")
    irreps_cols = irreps_in * len(columns)
    instructions = [(a, b, c, "uvw", True) for a, (_, ia) in enumerate(irreps_cols)
                    for b, (_, ib) in enumerate(irreps_f) for c, (_, ic) in enumerate(irreps_out) if ic in ia * ib]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tp = o3.TensorProduct(irreps_cols, irreps_f, irreps_out, instructions,
                              internal_weights=False, shared_weights=True)
    finally:
        torch.set_default_dtype(previous)
    published = tp(stacked, filt, weight.double())
    ours = model.blocks[0].conv(x, filt, nb)
    torch.testing.assert_close(ours, published, rtol=0, atol=1e-6 * published.abs().max().item())


def test_import_refuses_mismatched_graphs():
    need(TRIANGLE)
    need(SQUARE)
    with pytest.raises(ValueError, match="neighbour offsets"):
        klmgraph.load_ecnn4klm(TRIANGLE, klmgraph.square(12, 12))
    with pytest.raises(ValueError, match="neighbour offsets"):
        klmgraph.load_ecnn4klm(SQUARE, klmgraph.triangular(12, 12, t1=1.0, t3=-0.85))
    with pytest.raises(ValueError, match="neighbour offsets"):  # no third neighbours: 7 classes
        klmgraph.load_ecnn4klm(TRIANGLE, klmgraph.triangular(12, 12, t1=1.0))
    with pytest.raises(ValueError, match="neighbour offsets"):  # extra second neighbours
        klmgraph.load_ecnn4klm(SQUARE, klmgraph.square(12, 12, t2=0.3))
    with pytest.warns(UserWarning, match="trained with"):  # right classes, other amplitudes
        klmgraph.load_ecnn4klm(TRIANGLE, klmgraph.triangular(12, 12, t1=1.0, t3=-0.5))


def test_import_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.cpt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        klmgraph.load_ecnn4klm(bad, klmgraph.square(6, 6))
    torch.save({"model_state_dict": {"conv1.tp.weight": torch.zeros(3)}}, tmp_path / "other.cpt")
    with pytest.raises(ValueError, match="missing"):
        klmgraph.load_ecnn4klm(tmp_path / "other.cpt", klmgraph.square(6, 6))


def test_imported_model_runs_on_any_size_and_saves(tmp_path):
    graph = klmgraph.triangular(18, 18, t1=1.0, t3=-0.85)
    model = klmgraph.load_ecnn4klm(need(TRIANGLE), graph)
    spins = klmgraph.skyrmion_crystal(graph, m_z=0.3, dtype=torch.float32)
    e, b = model.bind(graph).energy_and_field(spins)
    assert math.isfinite(float(e)) and b.shape == spins.shape
    path = model.save(tmp_path / "triangular.pt")
    loaded = klmgraph.load_model(path, klmgraph.triangular(12, 12, t1=1.0, t3=-0.85))
    e2, b2 = loaded.bind(graph).energy_and_field(spins)
    assert e2 == e and torch.equal(b2, b)

"""The edge-typed spin convolution: typed aggregation, fast == reference, equivariance."""
import networkx as nx
import pytest
import torch
from e3nn import o3

import klmgraph
from klmgraph.nn.conv import SpinConvolution, TypedNeighbours, filter_irreps


def irregular_graph(num_nodes=14, num_edges=26, seed=0):
    """A random graph whose edges carry one of three classes: sites have different numbers of
    neighbours per class (0, 1 or several), so the aggregation must scatter-add."""
    G = nx.gnm_random_graph(num_nodes, num_edges, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for u, v, data in G.edges(data=True):
        data["edge_type"] = "abc"[int(torch.randint(3, (1,), generator=gen))]
    return klmgraph.from_networkx(G)


GRAPHS = {
    "triangular-periodic": lambda: klmgraph.triangular(6, 6, 1.0, 0.0, -0.85),
    "square-open": lambda: klmgraph.square(5, 4, periodic=False),
    "irregular": irregular_graph,
}


def neighbours_of(graph):
    return TypedNeighbours(graph.edge_index, graph.edge_type, graph.num_nodes, graph.num_edge_types)


def test_aggregation_matches_a_loop_over_edges():
    for make in GRAPHS.values():
        graph = make()
        nb = neighbours_of(graph)
        x = torch.randn(graph.num_nodes, 5, dtype=torch.float64)
        expected = torch.zeros(graph.num_nodes, graph.num_edge_types, 5, dtype=torch.float64)
        for (src, dst), k in zip(graph.edge_index.T.tolist(), graph.edge_type.tolist()):
            expected[dst, k] += x[src]
        torch.testing.assert_close(nb.aggregate(x), expected, rtol=0, atol=1e-15)
        # the per-component layout used by the fast path holds the same numbers
        xc = torch.randn(2, graph.num_nodes, 3, 4, dtype=torch.float64)
        got = nb.aggregate_components(xc).unflatten(-1, (graph.num_edge_types, 4))  # (2, N, 3, K, 4)
        ref = nb.aggregate(xc.flatten(-2)).unflatten(-1, (3, 4)).transpose(-3, -2)  # (2, N, 3, K, 4)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-15)


def test_aggregation_modes():
    assert neighbours_of(klmgraph.triangular(6, 6, 1.0, 0.0, -0.85)).complete
    open_square = neighbours_of(klmgraph.square(5, 4, periodic=False))
    assert open_square.unique and not open_square.complete  # missing neighbours -> zero row
    assert not neighbours_of(irregular_graph()).unique  # several neighbours of one class


@pytest.mark.parametrize("graph_name", ["triangular-periodic", "square-open"])
def test_gather_backward_is_exact(graph_name):
    """The gather-based backward (used on GPUs) is the exact transpose, also twice."""
    graph = GRAPHS[graph_name]()
    nb = neighbours_of(graph)
    nb.gather_backward = True
    x = torch.randn(2, graph.num_nodes, 2, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(nb.aggregate_components, (x,))
    assert torch.autograd.gradgradcheck(lambda t: nb.aggregate_components(t) ** 2, (x,))
    nb2 = neighbours_of(graph)  # index_add backward
    g1 = torch.autograd.grad((nb.aggregate_components(x) ** 2).sum(), x)[0]
    g2 = torch.autograd.grad((nb2.aggregate_components(x) ** 2).sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)


IRREPS = [
    ("1x0e+1x1e+1x2e", "8x0e+8x1e+8x2e"),  # first published layer
    ("8x0e+8x1e+8x2e", "8x0e"),  # output convolution
    ("2x0e+3x1e+2x0e+1x2e", "3x1e+2x0e+2x2e"),  # unsimplified, unsorted irreps
]


def _conv_inputs(graph, irreps_in, filter_lmax, dtype, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, graph.num_nodes, o3.Irreps(irreps_in).dim, generator=gen, dtype=dtype)
    spins = klmgraph.random_spins(graph, batch=batch, seed=seed, dtype=dtype)
    filt = o3.spherical_harmonics(filter_irreps(filter_lmax), spins, normalize=False)
    return x, filt


@pytest.mark.parametrize("graph_name", list(GRAPHS))
@pytest.mark.parametrize("irreps", IRREPS)
def test_fast_equals_reference_float64(graph_name, irreps):
    graph = GRAPHS[graph_name]()
    conv = SpinConvolution(*irreps, graph.num_edge_types).double()
    x, filt = _conv_inputs(graph, irreps[0], 1, torch.float64)
    nb = neighbours_of(graph)
    fast = conv(x, filt, nb)
    conv.implementation = "reference"
    ref = conv(x, filt, nb)
    assert fast.shape == (2, graph.num_nodes, conv.irreps_out.dim)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())


@pytest.mark.parametrize("filter_lmax", [0, 2])
def test_fast_equals_reference_other_filters(filter_lmax):
    graph = GRAPHS["square-open"]()
    conv = SpinConvolution("4x0e+2x1e+2x2e", "3x0e+2x1e+2x2e", graph.num_edge_types, filter_lmax).double()
    x, filt = _conv_inputs(graph, "4x0e+2x1e+2x2e", filter_lmax, torch.float64)
    nb = neighbours_of(graph)
    fast = conv(x, filt, nb)
    conv.implementation = "reference"
    torch.testing.assert_close(fast, conv(x, filt, nb), rtol=1e-10, atol=1e-10)


def test_fast_equals_reference_float32():
    graph = GRAPHS["irregular"]()
    conv = SpinConvolution("8x0e+8x1e+8x2e", "8x0e+8x1e+8x2e", graph.num_edge_types)
    x, filt = _conv_inputs(graph, "8x0e+8x1e+8x2e", 1, torch.float32)
    nb = neighbours_of(graph)
    fast = conv(x, filt, nb)
    conv.implementation = "reference"
    ref = conv(x, filt, nb)
    assert ((fast - ref).abs().max() / ref.abs().max()) < 1e-5


def test_both_paths_share_one_parameter():
    conv = SpinConvolution("1x0e+1x1e+1x2e", "8x0e+8x1e+8x2e", 13)
    assert list(conv.state_dict()) == ["weight"]
    assert conv.weight.numel() == 936  # 13 classes x 9 paths x 8 outputs, as published
    # each mixing matrix is a gathered view of the weight: gradients reach every weight entry once
    mats = conv.mixing_matrices()
    sum(m.sum() for m in mats).backward()
    assert (conv.weight.grad != 0).all()


def test_convolution_is_equivariant():
    graph = GRAPHS["square-open"]()
    irreps_in, irreps_out = o3.Irreps("2x0e+2x1e+2x2e"), o3.Irreps("3x0e+3x1e+3x2e")
    conv = SpinConvolution(irreps_in, irreps_out, graph.num_edge_types).double()
    x, _ = _conv_inputs(graph, irreps_in, 1, torch.float64, batch=1)
    spins = klmgraph.random_spins(graph, dtype=torch.float64)
    rot = o3.rand_matrix(dtype=torch.float64)
    nb = neighbours_of(graph)

    def run(x, s):
        return conv(x, o3.spherical_harmonics(conv.filter_irreps, s, normalize=False), nb)

    out_then_rotate = run(x, spins) @ irreps_out.D_from_matrix(rot).T
    rotate_then_out = run(x @ irreps_in.D_from_matrix(rot).T, spins @ rot.T)
    # e3nn's Wigner 3j symbols and D matrices are exact to float32 only (~1e-7), even in float64
    scale = out_then_rotate.abs().max().item()
    torch.testing.assert_close(out_then_rotate, rotate_then_out, rtol=0, atol=1e-6 * scale)


def test_validation():
    with pytest.raises(ValueError, match="cannot be reached"):
        SpinConvolution("1x0e", "1x2e", 3)  # 0e x (0e + 1e) never gives 2e
    with pytest.raises(ValueError, match="implementation"):
        SpinConvolution("1x0e", "1x0e", 3, implementation="naive")
    with pytest.raises(ValueError, match="num_classes"):
        SpinConvolution("1x0e", "1x0e", 0)
    graph = klmgraph.square(4, 4)
    conv = SpinConvolution("1x0e", "1x0e", 3)
    with pytest.raises(ValueError, match="neighbour classes"):
        conv(torch.zeros(16, 1), torch.zeros(16, 4), neighbours_of(graph))
    with pytest.raises(ValueError, match="classes outside"):
        TypedNeighbours(graph.edge_index, graph.edge_type, 16, 3)
    with pytest.raises(ValueError, match="shape"):
        TypedNeighbours(graph.edge_index[0], graph.edge_type, 16, 5)


def test_norm_activation_equals_e3nn():
    from e3nn.nn import NormActivation

    from klmgraph.nn.blocks import SiLUNormActivation

    irreps = o3.Irreps("3x0e+2x1e+2x2e")
    ours = SiLUNormActivation(irreps)
    e3nn_act = NormActivation(irreps, torch.nn.functional.silu, normalize=True, bias=False)
    x = torch.randn(7, irreps.dim, dtype=torch.float64)
    x[0] = 0.0  # norms below epsilon are clamped the same way
    x[1, :3] = torch.tensor([1e-9, -2e-9, 0.5])
    torch.testing.assert_close(ours(x), e3nn_act(x), rtol=1e-12, atol=1e-15)
    x.requires_grad_(True)
    g1 = torch.autograd.grad(ours(x).pow(2).sum(), x)[0]
    g2 = torch.autograd.grad(e3nn_act(x).pow(2).sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)

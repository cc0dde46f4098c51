"""One-way layering (lower layers never import higher ones), model files of older versions, and
the model's hidden tables following .to()."""
import ast
from pathlib import Path

import pytest
import torch

import klmgraph
from klmgraph.nn.conv import TypedNeighbours

PACKAGE = Path(klmgraph.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"


def _imports(path: Path) -> set[str]:
    """klmgraph modules imported by ``path`` (module level and inside functions), dotted."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [f"{name}.{a.name}" for a in node.names]
            found.update([name] + names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {n for n in found if n.startswith("klmgraph")}


def _module_imports(name: str) -> set[str]:
    path = PACKAGE.parent.joinpath(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return _imports(path)


def _touches(imports: set[str], forbidden: str) -> list[str]:
    return sorted(i for i in imports if i == forbidden or i.startswith(forbidden + "."))


@pytest.mark.parametrize("module, forbidden", [
    ("klmgraph.checks", "klmgraph"),  # the bottom layer
    ("klmgraph.noise", "klmgraph"),
    ("klmgraph.providers", "klmgraph.dynamics"),
    ("klmgraph.measure", "klmgraph.dynamics"),
    ("klmgraph.nn.ecnn", "klmgraph.io"),
    ("klmgraph.nn.ifnn", "klmgraph.io"),
    ("klmgraph.nn.binding", "klmgraph.io"),
    ("klmgraph.nn.modelfile", "klmgraph.io"),
    ("klmgraph.nn.ifnn", "klmgraph.nn.ecnn"),
    ("klmgraph.nn.ecnn", "klmgraph.electrons"),
    ("klmgraph.domains", "klmgraph.nn"),  # shared by chunked models and the distributed runner
    ("klmgraph.domains", "klmgraph.distributed"),
    ("klmgraph.nn.binding", "klmgraph.distributed"),
    ("klmgraph.simulation", "klmgraph.distributed"),
    ("klmgraph.trajectory", "klmgraph.distributed"),
    ("klmgraph.nn.committee", "klmgraph.io"),
    ("klmgraph.nn.committee", "klmgraph.learn"),
    ("klmgraph.train", "klmgraph.learn"),
    ("klmgraph.simulation", "klmgraph.learn"),
    ("klmgraph.learn.selection", "klmgraph"),
])
def test_lower_layers_do_not_import_higher_ones(module, forbidden):
    imports = _module_imports(module)
    if forbidden == "klmgraph":
        assert not imports, imports
    else:
        assert not _touches(imports, forbidden), imports


def test_no_private_names_across_modules():
    private = {}
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            last = name.rsplit(".", 1)[-1]
            if last.startswith("_") and not last.startswith("__"):
                private.setdefault(str(path.relative_to(PACKAGE)), []).append(name)
    assert not private, private


def test_old_model_files_load_and_compute_the_same():
    ref = torch.load(FIXTURES / "models_v1_reference.pt")  # from klmgraph 469cd2e
    ecnn = klmgraph.load_model(FIXTURES / "ecnn_square_v1.pt", klmgraph.square(4, 4)).double()
    e, b = ecnn.bind(klmgraph.square(4, 4)).energy_and_field(ref["spins"])
    assert torch.allclose(e, ref["energy"], atol=1e-6) and torch.allclose(b, ref["field"], atol=1e-6)
    ifnn = klmgraph.load_model(FIXTURES / "ifnn_square_v1.pt").double()  # config key "description"
    assert "lattice" in ifnn.config and "description" not in ifnn.config
    e, b = ifnn.bind(klmgraph.square(6, 6)).energy_and_field(ref["spins6"])
    assert torch.allclose(e, ref["energy6"], atol=1e-6) and torch.allclose(b, ref["field6"], atol=1e-6)


def test_ifnn_and_ecnn_use_the_lattice_key(tmp_path):
    graph = klmgraph.square(6, 6)
    ifnn = klmgraph.nn.IFNN.for_graph(graph, cutoff=1.5, hidden=(4,))
    assert ifnn.config["lattice"] == graph.description == klmgraph.ECNN.for_graph(graph).config["lattice"]
    back = klmgraph.load_model(ifnn.save(tmp_path / "m.pt"))
    assert back.config == ifnn.config
    assert klmgraph.nn.IFNN(description=graph.description, cutoff=1.5, hidden=(4,)).lattice == graph.description
    with pytest.raises(ValueError, match="lattice="):
        klmgraph.nn.IFNN(graph.description, cutoff=1.5, description=graph.description)


def test_lattice_key_compares_numbers_not_their_spelling():
    """t1=1 and t1=1.0 build one lattice: a model of one binds to a graph of the other; another
    hopping is still refused."""
    model = klmgraph.ECNN.for_graph(klmgraph.triangular(6, 6, t1=1.0, t3=-0.85), channels=2, num_interactions=1)
    model.bind(klmgraph.triangular(12, 12, t1=1, t3=-0.85))
    with pytest.raises(ValueError, match="built for the lattice"):
        model.bind(klmgraph.triangular(12, 12, t1=1, t3=-0.8))


def test_neighbour_tables_move_alike():
    graph = klmgraph.square(6, 6)
    ecnn, ifnn = klmgraph.ECNN.for_graph(graph), klmgraph.nn.IFNN.for_graph(graph, cutoff=1.5, hidden=(4,))
    for table in (ecnn.prepare(graph), ifnn.prepare(graph)):
        assert table.to("cpu") is table  # already there: no copy (as Tensor.to)
        moved = table.to("meta")
        assert moved is not table and moved.to("meta") is moved
        tensors = [t for t in vars(table).values() if isinstance(t, torch.Tensor)]
        tensors += [t for v in vars(table).values() if isinstance(v, list) for t in v]
        assert tensors and all(t.device.type == "cpu" for t in tensors)  # the original stays


def test_hidden_tables_are_buffers_that_follow_to():
    graph = klmgraph.square(4, 4)
    model = klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=1).double()
    keys = set(model.state_dict())
    conv = model.blocks[0].conv
    conv.implementation = "reference"
    model(_with_spins(graph))  # builds the reference TensorProduct
    model.to("meta")
    assert all(b.device.type == "meta" for name, b in model.named_buffers() if "_cg_matrix" in name)
    assert conv._reference[0].output_mask.device.type == "meta"
    assert set(model.state_dict()) == keys  # non-persistent: files unchanged


def _with_spins(graph):
    data = graph.clone()
    data.spins = klmgraph.random_spins(graph, seed=0)
    return data


def test_import_klmgraph_leaves_heavy_optional_modules_unloaded():
    import subprocess
    import sys
    code = ("import sys, klmgraph; "
            "print(sorted(m for m in ('h5py', 'matplotlib', 'networkx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout  # imported where first used (tqdm comes with PyG)

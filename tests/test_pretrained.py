"""Shipped models (data/models): listing, loading as load_model does, cards, missing names."""
import json
from pathlib import Path

import pytest
import torch

import klmgraph
from klmgraph.cli import main
from klmgraph.pretrained import describe, model_folders

REPO_MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
CARD_KEYS = {"name", "summary", "date", "lattice", "hamiltonian", "solver", "data", "training", "metrics"}


@pytest.fixture
def folder(tmp_path):
    """A models folder with two small square-lattice ECNNs, one without a card (not listed)."""
    graph = klmgraph.square(4, 4)
    for seed, (name, card) in enumerate((("tiny-a", True), ("tiny-b", True), ("no-card", False))):
        torch.manual_seed(seed)
        model = klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=1, hamiltonian={"J": 7.0})
        model.save(tmp_path / f"{name}.pt")
        if card:
            (tmp_path / f"{name}.json").write_text(json.dumps(
                {"name": name, "summary": "a test model", "lattice": "square 4x4", "solver": "none",
                 "metrics": {"test": {"rmse_field": 0.5}}, "date": "2026-12-02"}))
    return tmp_path, graph


def test_listing_and_loading(folder):
    path, graph = folder
    assert klmgraph.pretrained(directory=path) == ["tiny-a", "tiny-b"]
    model = klmgraph.pretrained("tiny-a", graph=graph, directory=path)
    reference = klmgraph.load_model(path / "tiny-a.pt", graph=graph)
    spins = klmgraph.random_spins(graph, seed=1).float()
    e, b = model.bind(graph).energy_and_field(spins)
    e_ref, b_ref = reference.bind(graph).energy_and_field(spins)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=0)
    torch.testing.assert_close(b, b_ref, rtol=0, atol=0)
    # the other model really is another one
    other = klmgraph.pretrained("tiny-b", directory=path).bind(graph).energy_and_field(spins)[0]
    assert not torch.equal(other, e)
    assert klmgraph.model_card("tiny-b", directory=path)["metrics"]["test"]["rmse_field"] == 0.5
    text = describe("tiny-a", directory=path)
    assert "tiny-a: a test model" in text and "rmse_field 0.5" in text


def test_describe_prints_nested_metrics_as_lines_not_dicts(tmp_path):
    """A card's per-field metrics (dicts inside a split) get a deeper line each."""
    graph = klmgraph.square(4, 4)
    klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=1).save(tmp_path / "nested.pt")
    (tmp_path / "nested.json").write_text(json.dumps({
        "name": "nested", "summary": "per-field metrics",
        "metrics": {"held_out": {"rmse_field": 0.25, "per_field": {"0.005": {"rmse_field": 0.125, "states": 3}}}}}))
    lines = describe("nested", directory=tmp_path).splitlines()
    assert "  held_out: rmse_field 0.25" in lines
    assert "    per_field:" in lines
    assert "      0.005: rmse_field 0.125, states 3" in lines
    assert not any("{" in line for line in lines)


def test_missing_name_lists_the_available_ones(folder):
    path, _ = folder
    with pytest.raises(ValueError, match=r"no shipped model named 'nope'; available: \['tiny-a', 'tiny-b'\]"):
        klmgraph.pretrained("nope", directory=path)
    with pytest.raises(ValueError, match="no shipped model named 'no-card'"):
        klmgraph.model_card("no-card", directory=path)


def _strings(value):
    """Every string inside a card (nested dicts and lists)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_shipped_models_have_cards_and_load(capsys):
    """Every model in the checkout's data/models is found, loads, and has a complete card."""
    if REPO_MODELS.is_dir():
        assert REPO_MODELS in model_folders()
    names = klmgraph.pretrained()
    shipped = sorted(p.stem for p in REPO_MODELS.glob("*.pt")) if REPO_MODELS.is_dir() else []
    assert set(shipped) <= set(names)
    for name in shipped:
        card = klmgraph.model_card(name)
        assert CARD_KEYS <= set(card), CARD_KEYS - set(card)
        assert card["name"] == name
        model = klmgraph.pretrained(name)
        assert isinstance(model, torch.nn.Module)
        # a card names files by repository path or file name, never by the training machine's path
        absolute = [v for v in _strings(card) if v.startswith("/")]
        assert not absolute, f"{name}'s card holds absolute paths: {absolute}"
    # the model of the paper's square setting is shipped, and its card says what it reached
    assert "square-paper" in shipped
    card = klmgraph.model_card("square-paper")
    assert card["hamiltonian"]["J"] == 7.0 and card["metrics"]["test"]["configurations"] == 50
    assert card["target"]["met"] == (card["metrics"]["test"]["rmse_field"] <= card["target"]["test_rmse_field"])
    assert klmgraph.pretrained("square-paper", graph=klmgraph.square(6, 6)).hamiltonian["J"] == 7.0
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"{name}: " in out
    assert main(["models", "surely-not-a-model"]) == 2
    assert "available:" in capsys.readouterr().err

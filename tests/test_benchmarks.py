"""The benchmark scripts run end to end at tiny sizes and write every row of their tables.
No timing is asserted here: speed figures live in docs/benchmarks.md with machine and date."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The benchmarks set one torch thread for their tables; later tests keep their own count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def positive(x) -> bool:
    return math.isfinite(x) and x > 0


def test_model_benchmark_quick_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "model.json"
    load_benchmark("model").main(["--quick", "--lattices", "square", "--sections", "headline", "training", "llg",
                                  "--json", str(out)])
    res = json.loads(out.read_text())
    assert {"cpu", "date", "torch", "matmul_gflops"} <= set(res["machine"])
    kinds = {row["implementation"] for row in res["headline"]}
    assert {"eager", "reference"} <= kinds
    if (SHARED / "upstream" / "model.py").is_file():  # the published code is the peer of every table
        assert "ecnn4klm" in kinds and "ecnn4klm" in {row["implementation"] for row in res["training"]}
    else:
        assert "ecnn4klm" not in kinds
    assert all(positive(row["us_per_site"]) and positive(row["mflop_per_site"]) for row in res["headline"])
    assert all(positive(row["seconds"]) for row in res["training"])
    assert [row["integrator"] for row in res["llg"]] == ["heun", "midpoint"]
    assert all(0 <= row["outside_fraction"] < 1 and positive(row["ms_per_step"]) for row in res["llg"])
    assert "| square |" in capsys.readouterr().out  # the markdown tables


def test_llg_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "llg.md"
    rows, observables = load_benchmark("llg").main(["--spin-sizes", "8", "--ed-sizes", "6", "--model-sizes", "8",
                                                    "--repeat", "1", "--out", str(out)])
    kinds = [row["provider"] for row in rows]
    assert kinds[:5] == ["spin-only"] * 4 + ["ED"]
    assert kinds[5:] == (["ECNN (ecnn4klm, float32)"] if (SHARED / "triangle_param.cpt").is_file() else [])
    assert all(positive(row["ms_per_step"]) for row in rows) and len(observables) == 1
    text = out.read_text()
    assert text.startswith("# LLG steps per second (") and text.count("\n| spin-only | 8x8 |") == 4

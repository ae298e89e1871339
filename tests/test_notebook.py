"""Executes notebooks/quickstart.ipynb top to bottom with tiny settings."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_UNETPP_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv("KERAS_UNETPP_DATA", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    # The pruning table has every level and the accurate mode.
    for level in ("L1", "L2", "accurate"):
        assert f"unetpp  {level}" in text
    work = tmp_path / "keras_unetpp_quickstart"
    assert "SYNTHETIC DATA" in (work / "synthetic_data" / "README.txt").read_text()
    assert (work / "levels.png").is_file()
    assert (work / "export" / "quickstart_l1" / "1" / "saved_model.pb").is_file()
    assert (work / "export" / "models.config").is_file()
    # The serving signature answered for an odd-sized image (37 x 35).
    assert "(1, 37, 35, 1)" in text
    # Level 1 ran in the TFLite interpreter, float32 and int8.
    assert "TFLite model_float32.tflite" in text and "TFLite model_int8.tflite" in text
    assert (work / "edge" / "quickstart_l1" / "1" / "model_int8.tflite").is_file()
    # Figures were drawn (training curves, predictions, trade-off plot).
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 3

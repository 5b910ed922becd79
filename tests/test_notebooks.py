"""CI executes every notebook; a cell that fails fails the run."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the notebook reads these, so it runs the same here, in CI and on a data scientist's machine
    monkeypatch.setenv("ALERTLINK_NOTEBOOK_DATA", str(SHARED / "data" / "dev-shop"))
    monkeypatch.setenv("ALERTLINK_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    # it wrote a weights file that the service can load
    from service.weights import Weights
    written = sorted(tmp_path.glob("*.yaml"))
    assert written, "the notebook wrote no weights file"
    Weights.load(written[-1])

"""README's Python example, examples/train_folder.py and the quickstart notebook run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from synthetic import make_image_folder

ROOT = Path(__file__).parents[1]


def readme_library_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## As a library") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readmes_python_example_runs_as_written(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", readme_library_example()], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "eight-cats.png").size == (3 * 130 + 2, 3 * 130 + 2)  # 8 of 128 px, 3 a row
    assert Image.open(tmp_path / "best-cats.png").size == (2 * 130 + 2, 2 * 130 + 2)
    assert "seeds of the best:" in result.stdout


def test_the_training_example_trains_and_samples(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", n=32, size=16)
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "examples" / "train_folder.py"), str(folder), str(run), "--seconds", "4"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Image.open(run / "samples.png").size == (4 * 18 + 2, 4 * 18 + 2)
    assert list((run / "checkpoints").iterdir())


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]  # fmt: skip
    assert len(images) == 3  # the 16 cats, the best 8, the trained model's 16 samples, shown inline

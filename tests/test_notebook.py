"""The prototyping notebook runs top to bottom and its policy comparison prints numbers."""

import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

NB_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "notebooks"


def test_ipynb_is_in_sync_with_py():
    py = jupytext.read(NB_DIR / "prototyping.py")
    ipynb = nbformat.read(NB_DIR / "prototyping.ipynb", as_version=4)
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells]


def test_notebook_runs_and_compares_policies():
    nb = nbformat.read(NB_DIR / "prototyping.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for name in ("basic", "dualpath", "oracle", "prefer_de"):
        m = re.search(rf"^{name}\s+JCT\s+([0-9.]+) s", text, re.M)
        assert m and float(m.group(1)) > 0, f"no JCT printed for {name}:\n{text}"
    errors = [float(x) for x in re.findall(r"max\|logit err\| ([0-9.e+-]+)", text)]
    assert len(errors) == 3 and max(errors) < 1e-4

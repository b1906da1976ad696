"""The import direction of DESIGN.md: lower layers never import higher ones, directly (AST) and
transitively (what importing a package loads, in a fresh interpreter)."""

import ast
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "dualpath_jax"

LEVEL = {"config": 0, "shapes": 0, "native": 0, "lazy": 0, "raylaunch": 0, "model": 1, "kernels": 1, "kvcache": 1,
         "store": 2, "transfer": 2, "sched": 3, "workload": 3, "metrics": 3, "engine": 4, "sim": 4, "studies": 5}
FORBIDDEN = {("sim", "engine"), ("sim", "kernels"), ("engine", "sim"), ("sched", "store"), ("sched", "transfer"),
             ("workload", "store"), ("workload", "transfer"), ("metrics", "store"), ("metrics", "transfer")}


def _area(module_path: pathlib.Path) -> str:
    rel = module_path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imported_areas(tree: ast.AST):
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dualpath_jax" and len(parts) > 1 and parts[1] in LEVEL:
                yield parts[1], node.lineno
            if parts[0] in ("experiments", "configs", "tests"):
                yield parts[0], node.lineno


MODULES = sorted(p for p in PKG.rglob("*.py") if _area(p) in LEVEL)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    area = _area(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for imported, line in _imported_areas(tree):
        where = f"{path.relative_to(PKG)}:{line}"
        assert imported not in ("experiments", "configs", "tests"), f"{where} imports {imported}"
        assert LEVEL[imported] <= LEVEL[area], f"{where}: {area} (level {LEVEL[area]}) imports {imported}"
        assert (area, imported) not in FORBIDDEN, f"{where}: {area} must not import {imported}"


def test_every_package_is_classified():
    areas = {_area(p) for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG}
    assert areas <= set(LEVEL), f"unclassified: {areas - set(LEVEL)}"


# what importing each package may not load, transitively; the test forbids a name and its submodules
NO_JAX = ("jax", "jaxlib", "dualpath_jax.kernels", "dualpath_jax.model.forward", "dualpath_jax.model.layers")
TRANSITIVE = {"config": NO_JAX, "model": NO_JAX, "kvcache": NO_JAX, "sched": NO_JAX, "workload": NO_JAX,
              "metrics": NO_JAX, "sim": NO_JAX + ("dualpath_jax.engine",), "studies": NO_JAX}


def _loaded_by(statement: str) -> list[str]:
    """The names in ``sys.modules`` after ``statement`` runs in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("package", sorted(TRANSITIVE))
def test_importing_a_package_loads_nothing_above_it(package):
    loaded = _loaded_by(f"import dualpath_jax.{package}")
    assert f"dualpath_jax.{package}" in loaded
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in TRANSITIVE[package])]
    assert not bad, f"import dualpath_jax.{package} loads {bad}"


def test_the_models_jax_half_loads_on_first_use():
    """``dualpath_jax.model`` loads spec and cost only; its JAX names load when first used and stay
    the functions even once something imports their submodule (``model/forward.py``) directly."""
    statement = textwrap.dedent("""
        import dualpath_jax.model as model
        assert "jax" not in sys.modules and model.get_spec("tiny-gqa").n_layers > 0
        from dualpath_jax.model.forward import layer_forward
        from dualpath_jax.model import forward, init_params
        assert callable(forward) and forward is model.forward and forward.__name__ == "forward"
        assert init_params.__module__ == "dualpath_jax.model.params" and "forward" in dir(model)
        from dualpath_jax.model import load_hf_checkpoint, restore_params, save_params  # as the README lists them
        assert load_hf_checkpoint.__module__ == "dualpath_jax.model.hf"
        assert save_params.__module__ == restore_params.__module__ == "dualpath_jax.model.checkpoint"
        try:
            model.not_a_name
        except AttributeError as e:
            assert "not_a_name" in str(e)
        else:
            raise AssertionError("model.not_a_name did not raise")
    """)
    assert "jax" in _loaded_by(statement)

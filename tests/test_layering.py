"""The import direction of DESIGN.md: lower layers never import higher ones."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "dualpath_jax"

LEVEL = {"config": 0, "shapes": 0, "native": 0, "model": 1, "kernels": 1, "kvcache": 1, "store": 2, "transfer": 2,
         "sched": 3, "workload": 3, "metrics": 3, "engine": 4, "sim": 4}
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

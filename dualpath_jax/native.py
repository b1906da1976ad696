"""Whether the simulator's event loop and the scheduler run compiled (mypyc) or as Python.

``setup.py`` compiles a few modules (``sim/cluster.py``, ``sim/compute.py``, ``sim/hardware.py`` and
the modules of ``sched/`` the simulator calls per event) with mypyc at install time: the same
sources, built as C extensions, so the simulator runs exactly the scheduler code the engine runs.
``dualpath_jax/__init__.py`` imports this module first, and it decides once per process:

* **compiled** when the build's manifest (``_native_manifest.json``) lists exactly the extensions
  found and every source still hashes as it did at build time;
* else **Python**: an import hook loads each of those modules from its ``.py``, so an edited
  source takes effect at once (with a warning naming it; ``pip install -e .`` recompiles).
  Set ``DUALPATH_PURE_PYTHON=1`` to choose this without a warning (to debug or profile the
  sources, or to compare both builds).

All or none: the compiled modules share native classes, so they never mix with source ones.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

__all__ = ["COMPILED", "STATUS", "decide", "pure_python_requested"]

MANIFEST = "_native_manifest.json"
_ENV = "DUALPATH_PURE_PYTHON"


def _compiled_sources(pkg_dir: Path) -> dict[str, Path]:
    """``{module name: its .py}`` for every source under ``pkg_dir`` with a C extension beside it
    that this interpreter would import (``name`` + one of its ``EXTENSION_SUFFIXES``)."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    found = {}
    for folder, _dirs, files in os.walk(pkg_dir):
        names = set(files)
        for f in files:
            if f.endswith(".py") and any(f[:-3] + suffix in names for suffix in suffixes):
                rel = Path(folder).relative_to(pkg_dir.parent) / f[:-3]
                found[".".join(rel.parts)] = Path(folder) / f
    return found


def pure_python_requested(value: str | None) -> bool:
    """Whether a ``DUALPATH_PURE_PYTHON`` value asks for the sources (unset, ``""``, ``0``,
    ``false``, ``no`` and ``off`` do not)."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def decide(pkg_dir: Path, pure_python: bool = False) -> tuple[bool, str, dict[str, Path]]:
    """Whether the compiled modules under ``pkg_dir`` may be used.

    Returns ``(compiled, reason, sources)``: ``sources`` maps each module that has a C extension
    to its ``.py`` (what an import loads instead when ``compiled`` is false); ``reason`` says why
    (``""`` when compiled or when there is nothing to choose); ``pure_python`` is the
    ``DUALPATH_PURE_PYTHON`` request.
    """
    sources = _compiled_sources(pkg_dir)
    if not sources:
        return False, "", sources
    if pure_python:
        return False, f"{_ENV} is set", sources
    try:
        listed = json.loads((pkg_dir / MANIFEST).read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"the compiled modules have no readable build manifest ({pkg_dir / MANIFEST})", sources
    if set(listed) != set(sources):
        return False, (f"the compiled modules found ({', '.join(sorted(sources))}) are not the ones the build "
                       f"recorded ({', '.join(sorted(listed))})"), sources
    stale = [str(sources[m]) for m in sorted(listed)
             if hashlib.sha256(sources[m].read_bytes()).hexdigest() != listed[m]]
    if stale:
        return False, f"{', '.join(stale)} changed since the compiled build", sources
    return True, "", sources


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their ``.py`` instead of their C extension."""

    def __init__(self, sources: dict[str, Path]):
        self.sources = sources

    def find_spec(self, fullname, path=None, target=None):
        src = self.sources.get(fullname)
        return None if src is None else importlib.util.spec_from_file_location(fullname, src)


def _install() -> tuple[bool, str]:
    pure_python = pure_python_requested(os.environ.get(_ENV))
    compiled, reason, sources = decide(Path(__file__).resolve().parent, pure_python)
    if compiled:
        return True, f"compiled (mypyc): {', '.join(sorted(sources))}"
    if sources:
        sys.meta_path.insert(0, _SourceFinder(sources))
        if not pure_python:
            warnings.warn(f"dualpath_jax: {reason}; running the Python sources (`pip install -e .` recompiles "
                          f"them, `{_ENV}=1` silences this)", RuntimeWarning, stacklevel=3)
        return False, f"Python ({reason})"
    return False, "Python (no compiled modules installed)"


COMPILED, STATUS = _install()
"""``COMPILED``: the simulator core runs compiled; ``STATUS``: which modules, or why not."""

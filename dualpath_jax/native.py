"""Which build of the simulator core runs: the Python sources (default) or an opt-in mypyc build.

``dualpath_jax/__init__.py`` imports this module before anything else. The default install
compiles nothing: this module looks for compiled modules, finds none and says so in
:data:`STATUS` (no import hook, no hashing). ``DUALPATH_COMPILE=1 pip install -e .`` compiles the
simulator's per-event modules and the scheduler modules they call (``setup.py``'s ``COMPILED``)
with mypyc into C extensions beside their sources, and records each source's SHA-256 in
``dualpath_jax/_native_manifest.json``. With such a build, this module

* uses the extensions (Python imports an extension before a ``.py`` of the same name) when every
  source still hashes as the build recorded;
* raises :class:`StaleBuildError` otherwise (a source edited since the build, or extensions the
  manifest does not list), naming the files and the commands that rebuild or remove the build:
  compiled code never runs beside newer sources, and sources never silently replace a build;
* with ``DUALPATH_PURE_PYTHON=1``, loads those modules from their ``.py`` (an import hook, only
  then), to debug or profile the sources, or to time both builds (``experiments/bench_sim.py``).

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
from pathlib import Path

__all__ = ["COMPILED", "STATUS", "StaleBuildError", "check", "compiled_sources", "decide", "pure_python_requested"]

MANIFEST = "_native_manifest.json"
_ENV = "DUALPATH_PURE_PYTHON"


class StaleBuildError(ImportError):
    """A compiled build that does not match its sources: importing ``dualpath_jax`` fails."""


def compiled_sources(pkg_dir: Path) -> dict[str, Path]:
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


def check(pkg_dir: Path, sources: dict[str, Path]) -> None:
    """Checks a compiled build: ``sources`` (:func:`compiled_sources` of ``pkg_dir``) must be
    exactly the modules of ``pkg_dir / MANIFEST``, each with the SHA-256 recorded there.

    Raises:
      StaleBuildError: naming the manifest or the changed files, with the commands to rebuild
        (``DUALPATH_COMPILE=1 pip install -e ROOT``) or to return to the pure-Python build
        (``pip install -e ROOT``, which removes the extensions).
    """
    root = pkg_dir.parent
    try:
        listed = json.loads((pkg_dir / MANIFEST).read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        problem = (f"compiled modules ({', '.join(sorted(sources))}) without a readable build manifest "
                   f"({pkg_dir / MANIFEST})")
    else:
        if set(listed) != set(sources):
            problem = (f"the compiled modules found ({', '.join(sorted(sources))}) are not the ones the build "
                       f"recorded ({', '.join(sorted(listed))})")
        else:
            stale = [str(sources[m]) for m in sorted(listed)
                     if hashlib.sha256(sources[m].read_bytes()).hexdigest() != listed[m]]
            if not stale:
                return
            problem = f"{', '.join(stale)} changed since the simulator core was compiled"
    raise StaleBuildError(
        f"dualpath_jax: {problem}. Rebuild it with `DUALPATH_COMPILE=1 pip install -e {root}`, or go back to the "
        f"pure-Python build (removes the extensions) with `pip install -e {root}`; `{_ENV}=1` runs the sources "
        "meanwhile.")


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their ``.py`` instead of their C extension."""

    def __init__(self, sources: dict[str, Path]):
        self.sources = sources

    def find_spec(self, fullname, path=None, target=None):
        src = self.sources.get(fullname)
        return None if src is None else importlib.util.spec_from_file_location(fullname, src)


def decide(pkg_dir: Path, pure_python: bool = False) -> tuple[bool, str, dict[str, Path]]:
    """Which build of the modules under ``pkg_dir`` runs: ``(compiled, status, sources)``.

    ``sources`` is :func:`compiled_sources` (empty for a default install); ``status`` is what
    :data:`STATUS` says; ``pure_python`` is the ``DUALPATH_PURE_PYTHON`` request, which selects the
    sources of a compiled build without checking it.

    Raises:
      StaleBuildError: from :func:`check`, for a compiled build that does not match its sources.
    """
    sources = compiled_sources(pkg_dir)
    if not sources:
        return False, "Python (no compiled modules)", sources
    if pure_python:
        return False, f"Python ({_ENV} is set; a compiled build is installed)", sources
    check(pkg_dir, sources)
    return True, f"compiled (mypyc): {', '.join(sorted(sources))}", sources


def _install() -> tuple[bool, str]:
    compiled, status, sources = decide(Path(__file__).resolve().parent, pure_python_requested(os.environ.get(_ENV)))
    if sources and not compiled:
        sys.meta_path.insert(0, _SourceFinder(sources))
    return compiled, status


COMPILED, STATUS = _install()
"""``COMPILED``: the simulator core runs compiled; ``STATUS``: which build runs (recorded in every
run's ``env.json``), e.g. ``"Python (no compiled modules)"`` for the default install."""

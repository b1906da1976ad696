"""Build hook. The default build is pure Python: no compiler, no extension, nothing at import.

Opt-in, ``DUALPATH_COMPILE=1 pip install -e .`` compiles :data:`COMPILED` (the simulator's
per-event modules and the scheduler modules they call) with mypyc (https://mypyc.readthedocs.io):
the same sources as C extensions, so the simulator still runs the scheduler code the engine runs,
only faster (``experiments/bench_sim.py`` times both builds). That build alone needs mypy (a
build requirement declared here, which pip installs into the build environment) and a C
compiler; when either fails, the install fails with their error. It records each source's
SHA-256 as read before compiling in ``dualpath_jax/_native_manifest.json``, and
``dualpath_jax.native`` refuses to import a build whose sources changed since.

An editable build without the variable removes a compiled build's extensions and manifest from
the source tree: ``pip install -e .`` is also the way back to pure Python. Everything else is in
``pyproject.toml``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
COMPILED = [  # the simulator's per-event code and every scheduler module it calls per event
    "dualpath_jax/sim/cluster.py",
    "dualpath_jax/sim/compute.py",
    "dualpath_jax/sim/hardware.py",
    "dualpath_jax/sim/units.py",
    "dualpath_jax/sched/batching.py",
    "dualpath_jax/sched/de.py",
    "dualpath_jax/sched/driver.py",
    "dualpath_jax/sched/pe.py",
    "dualpath_jax/sched/policy.py",
    "dualpath_jax/sched/read_side.py",
    "dualpath_jax/sched/types.py",
]
GROUP = "dualpath_jax._native_core"  # mypyc's shared library of the group: dualpath_jax/_native_core__mypyc.*
MANIFEST = ROOT / "dualpath_jax" / "_native_manifest.json"  # as dualpath_jax.native.MANIFEST
MYPY_OPTIONS = [
    "--follow-imports=skip",  # other modules are plain Python; their values are Any here
    "--ignore-missing-imports",
    "--disable-error-code=annotation-unchecked",
]
COMPILE = os.environ.get("DUALPATH_COMPILE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _remove_in_tree_build() -> None:
    """Drops a compiled editable build's extensions and manifest from the source tree."""
    stems = [ROOT / path.removesuffix(".py") for path in COMPILED] + [ROOT / (GROUP.replace(".", "/") + "__mypyc")]
    for stem in stems:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            Path(f"{stem}{suffix}").unlink(missing_ok=True)
    MANIFEST.unlink(missing_ok=True)


class BuildPy(build_py):
    """An editable build starts by removing an earlier compiled build from the tree."""

    def run(self):
        if self.editable_mode:
            _remove_in_tree_build()
        super().run()


class BuildNative(build_ext):
    """``DUALPATH_COMPILE=1``: compiles :data:`COMPILED` with mypyc, then writes the manifest."""

    def finalize_options(self):
        # swaps the placeholder for mypyc's extensions (this command exists only with DUALPATH_COMPILE=1)
        try:
            from mypyc.build import mypycify
        except ImportError:
            sys.exit("dualpath_jax setup: DUALPATH_COMPILE=1 needs mypy (pip installs it unless build "
                     "isolation is off: then `pip install mypy` first)")
        self._hashes = {p.removesuffix(".py").replace("/", "."): hashlib.sha256((ROOT / p).read_bytes()).hexdigest()
                        for p in COMPILED}
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            self.distribution.ext_modules = mypycify(MYPY_OPTIONS + COMPILED, group_name=GROUP)
        finally:
            os.chdir(cwd)
        super().finalize_options()

    def run(self):
        if self.inplace or self.editable_mode:
            _remove_in_tree_build()  # an old build never stays beside newer sources, even if this one fails
        super().run()
        manifest = Path(self.get_ext_fullpath(GROUP + "__mypyc")).with_name(MANIFEST.name)  # beside __init__.py
        manifest.write_text(json.dumps({"compiler": "mypyc", "modules": self._hashes}, indent=1) + "\n")


if COMPILE:  # a placeholder extension makes the build run BuildNative, which replaces it with mypyc's
    setup(ext_modules=[Extension(f"{GROUP}__mypyc", sources=[])], setup_requires=["mypy>=1.15"],
          cmdclass={"build_ext": BuildNative, "build_py": BuildPy})
else:
    setup(cmdclass={"build_py": BuildPy})

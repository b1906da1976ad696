"""Build hook: compiles the simulator's event loop and the shared scheduler with mypyc.

mypyc (https://mypyc.readthedocs.io) compiles the listed ``.py`` files themselves to C
extensions, so the simulator still runs exactly the scheduler code the real engine runs, only
faster (``experiments/bench_sim.py`` measures by how much). Everything else is in
``pyproject.toml``.

The compiled build is optional:

* ``DUALPATH_PURE_PYTHON=1 pip install -e .`` builds none (nothing to recompile after edits);
* when mypyc fails or no C compiler works, the install goes on without them (with a warning);
* at import, ``dualpath_jax.native`` uses the compiled modules only while every source hashes
  as it did when the build read it (``dualpath_jax/_native_manifest.json``, written here); once
  one is edited, all of them run from source until the next ``pip install -e .``.

mypyc runs only when extensions are built (``build_ext``), not on every call of this file.
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

ROOT = Path(__file__).resolve().parent
COMPILED = [  # the simulator's per-event code and every scheduler module it calls per event
    "dualpath_jax/sim/cluster.py",
    "dualpath_jax/sim/compute.py",
    "dualpath_jax/sim/hardware.py",
    "dualpath_jax/sched/batching.py",
    "dualpath_jax/sched/de.py",
    "dualpath_jax/sched/pe.py",
    "dualpath_jax/sched/policy.py",
    "dualpath_jax/sched/read_side.py",
    "dualpath_jax/sched/types.py",
]
GROUP = "dualpath_jax._native_core"  # mypyc's shared library of the group: dualpath_jax/_native_core__mypyc.*
MANIFEST = "_native_manifest.json"
MYPY_OPTIONS = [
    "--follow-imports=skip",  # other modules are plain Python; their values are Any here
    "--ignore-missing-imports",
    "--disable-error-code=annotation-unchecked",
]


def _warn(msg: str) -> None:
    print(f"dualpath_jax setup: {msg}; the simulator and scheduler run as pure Python", file=sys.stderr)


def _module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _pure_python_requested() -> bool:  # as dualpath_jax.native.pure_python_requested
    return os.environ.get("DUALPATH_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no", "off")


def _remove_in_tree_build() -> None:
    """Drops an earlier editable build's extensions and manifest from the source tree, so that a
    new build (or a failed one) never leaves old compiled code beside newer sources."""
    pkg = ROOT / "dualpath_jax"
    names = [ROOT / path.removesuffix(".py") for path in COMPILED] + [ROOT / (GROUP.replace(".", "/") + "__mypyc")]
    for stem in names:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            Path(f"{stem}{suffix}").unlink(missing_ok=True)
    (pkg / MANIFEST).unlink(missing_ok=True)


class BuildNative(build_ext):
    """Compiles :data:`COMPILED` with mypyc, then records each source's hash as read before
    compiling (an edit made during the build shows as a changed source at import)."""

    _hashes: dict[str, str] | None = None

    def finalize_options(self):
        # runs only when extensions are to be built: swap the placeholder for mypyc's extensions
        self.distribution.ext_modules = self._mypyc_extensions()
        super().finalize_options()

    def _mypyc_extensions(self) -> list:
        if _pure_python_requested():
            return []
        try:
            from mypyc.build import mypycify
        except ImportError:
            _warn("mypyc is not installed")
            return []
        self._hashes = {_module(p): hashlib.sha256((ROOT / p).read_bytes()).hexdigest() for p in COMPILED}
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            exts = mypycify(MYPY_OPTIONS + COMPILED, group_name=GROUP)
        except SystemExit:  # mypyc reports type errors and exits
            _warn("mypyc could not compile the modules (see its errors above)")
            self._hashes = None
            return []
        finally:
            os.chdir(cwd)
        for ext in exts:
            ext.optional = True  # a failed C build is a warning, not a failed install
        return exts

    def run(self):
        if self.inplace or getattr(self, "editable_mode", False):
            _remove_in_tree_build()
        super().run()
        if not self.extensions or self._hashes is None:
            return
        outputs = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        manifest = Path(self.get_ext_fullpath(_module(COMPILED[0]))).parents[1] / MANIFEST  # beside __init__.py
        if not all(p.exists() for p in outputs):
            _warn("a C extension failed to build")
            for p in outputs:
                p.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
            return
        manifest.write_text(json.dumps({"compiler": "mypyc", "modules": self._hashes}, indent=1) + "\n")


# a placeholder: BuildNative replaces it with mypyc's extensions (or none) when it runs
setup(ext_modules=[Extension(f"{GROUP}__mypyc", sources=[])], cmdclass={"build_ext": BuildNative})

"""Build hook: compiles the simulator's event loop and the shared scheduler with mypyc.

mypyc (https://mypyc.readthedocs.io) compiles the listed ``.py`` files themselves to C
extensions, so the simulator still runs exactly the scheduler code the real engine runs, only
faster (``experiments/bench_sim.py`` measures by how much). Everything else is in
``pyproject.toml``.

The compiled build is optional:

* ``DUALPATH_PURE_PYTHON=1 pip install -e .`` builds none (nothing to recompile after edits);
* when mypyc fails or no C compiler works, the install goes on without them (with a warning);
* at import, ``dualpath_jax.native`` uses the compiled modules only while every source hashes
  as it did at build time (``dualpath_jax/_native_manifest.json``, written here); once one is
  edited, all of them run from source until the next ``pip install -e .``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
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


def _remove_built() -> None:
    """Drops a previous build's extensions and manifest from the source tree (editable installs
    put them there), so that a build without them really runs the sources."""
    pkg = ROOT / "dualpath_jax"
    for so in [pkg.glob("_native_core__mypyc.*")] + [(ROOT / p).parent.glob(Path(p).stem + ".*") for p in COMPILED]:
        for f in so:
            if f.suffix != ".py":
                f.unlink()
    (pkg / MANIFEST).unlink(missing_ok=True)


def _ext_modules() -> list:
    if os.environ.get("DUALPATH_PURE_PYTHON", "") not in ("", "0"):
        _remove_built()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed")
        _remove_built()
        return []
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exts = mypycify(MYPY_OPTIONS + COMPILED, group_name="dualpath_jax._native_core")
    except SystemExit:  # mypyc reports type errors and exits
        _warn("mypyc could not compile the modules (see its errors above)")
        _remove_built()
        return []
    finally:
        os.chdir(cwd)
    for ext in exts:
        ext.optional = True  # a failed C build is a warning, not a failed install
    return exts


class BuildNative(build_ext):
    """Builds the mypyc extensions, then records the hash of each compiled source beside them."""

    def run(self):
        super().run()
        if not self.extensions:
            return
        built = all(Path(self.get_ext_fullpath(ext.name)).exists() for ext in self.extensions)
        manifest = Path(self.get_ext_fullpath(_module(COMPILED[0]))).parents[1] / MANIFEST  # beside __init__.py
        if not built:
            _warn("a C extension failed to build")
            manifest.unlink(missing_ok=True)
            _remove_built()
            return
        hashes = {_module(p): hashlib.sha256((ROOT / p).read_bytes()).hexdigest() for p in COMPILED}
        manifest.write_text(json.dumps({"compiler": "mypyc", "modules": hashes}, indent=1) + "\n")


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildNative})

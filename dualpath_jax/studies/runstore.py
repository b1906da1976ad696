"""Finished simulated runs kept on disk, so that a study that stops (killed, out of memory, a
machine that went down) resumes with the runs it had finished instead of running them again.

A :class:`RunStore` is a directory of one pickle per run, named by a SHA-256 of the run's key (the
:class:`~.runs.RunCache` key: kind, ``SimConfig``, scheduler class, ``WorkloadSpec``, ...; a
scheduler class outside this package counts with its code: the files of the modules its class
hierarchy comes from and of the modules loaded from beside them) and of this package's source files,
so a run is read back only by code that would compute it again bit for bit (the simulator is
deterministic): after any change to the package, nothing is reused. A run's input files (a trace
or trace folder, a model's ``config.json``: a key's string fields that name existing paths, and
a trace workload's default data) count by name, size and modification time: a trace fixed
between a stop and its resume is read again.

Each file is written to a temporary name and renamed into place, so a run stopped mid-write
leaves no file that reads as a run; a file that does not unpickle (a disk error) is a miss and
the run is computed again. Experiment scripts keep the store in ``<workdir>/run_store/``
(:func:`~.cli.run_store`); ``--resume`` reopens a workdir whose run did not finish, and a run
that finishes removes its store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
import pickle
import sys
import tempfile
from collections.abc import Hashable
from pathlib import Path

__all__ = ["RunStore", "code_fingerprint"]

_PACKAGE = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (hex) of every ``.py`` file of the package, by relative path and content (hidden
    files, such as an editor's lock files, and anything but regular files left out)."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        if path.name.startswith(".") or not path.is_file():
            continue
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _stable(part) -> str:
    """A key part as text that names the same run in every process: a class by module and name,
    and, outside this package, by its code (:func:`_class_code`)."""
    if isinstance(part, type):
        name = f"{part.__module__}:{part.__qualname__}"
        if part.__module__.split(".")[0] == _PACKAGE.name:
            return name
        return f"{name}:{_class_code(part)}"
    return repr(part) + _input_files(part)


@functools.lru_cache(maxsize=32)
def _class_code(cls: type) -> str:
    """SHA-256 of the code a class outside this package runs with: the files of the modules its
    class hierarchy comes from, and of every module loaded from their folders or below (the helpers
    a policy imports from beside it), read once per process; a class with no file counts by its
    source, else its name."""
    h = hashlib.sha256()
    folders = set()
    for c in cls.__mro__:
        if c.__module__.split(".")[0] in (_PACKAGE.name, "builtins"):
            continue
        try:
            file = Path(inspect.getsourcefile(c) or "")
            h.update(file.read_bytes())
            folders.add(file.resolve().parent)
        except (OSError, TypeError):  # no file (a class built at run time): its source, else its name
            try:
                h.update(inspect.getsource(c).encode())
            except (OSError, TypeError):
                h.update(c.__qualname__.encode())
    helpers = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if any(folder in path.parents for folder in folders) and "site-packages" not in path.parts:
            helpers.add(path)
    for path in sorted(helpers):
        try:
            h.update(str(path).encode() + b"\0" + path.read_bytes())
        except OSError:
            continue
    return h.hexdigest()


def _input_files(part) -> str:
    """Name, size and modification time of the files a key part reads (module docstring); "" for none."""
    if not dataclasses.is_dataclass(part) or isinstance(part, type):
        return ""
    paths = [Path(v) for v in (getattr(part, f.name) for f in dataclasses.fields(part))
             if isinstance(v, str) and v and os.path.exists(v)]
    source, path = getattr(part, "source", None), getattr(part, "path", "")
    if source == "agentic" and not path:
        from dualpath_jax.workload.sources import agentic_dir  # noqa: PLC0415
        paths.append(agentic_dir())
    elif source == "mooncake":  # the default file, or a shipped one by name ("synthetic")
        from dualpath_jax.workload.sources import MOONCAKE_FILES, mooncake_file  # noqa: PLC0415
        if not path or path in MOONCAKE_FILES:
            paths.append(mooncake_file(path or "conversation"))
    return "@" + "".join(_files_signature(str(p.resolve())) for p in paths) if paths else ""


@functools.lru_cache(maxsize=64)
def _files_signature(path: str) -> str:
    """SHA-256 of the name, size and modification time of ``path``'s files (a file, or a folder's
    files), read once per process (a trace folder's hundreds of files are not stat'ed per key)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


class RunStore:
    """Runs on disk under ``directory`` (module docstring). Thread-safe for distinct keys.

    Args:
      directory: where the runs go; created by the first :meth:`put`.
    """

    def __init__(self, directory):
        self.directory = Path(directory)  # created by the first put
        self._written: set[Path] = set()
        self._read: set[Path] = set()

    @property
    def restored(self) -> int:
        """Distinct runs read back that this process did not write (a resumed run's)."""
        return len(self._read - self._written)

    def path(self, key: Hashable) -> Path:
        """The file of ``key`` (whether or not it exists)."""
        parts = key if isinstance(key, tuple) else (key,)
        h = hashlib.sha256(code_fingerprint().encode())
        for p in parts:
            h.update(b"\0")
            h.update(_stable(p).encode())
        return self.directory / f"{h.hexdigest()[:40]}.pkl"

    def get(self, key: Hashable):
        """The run stored under ``key``, or None (never stored, or unreadable)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                value = pickle.load(f)
            self._read.add(path)
            return value
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a damaged file is a miss: the run is computed again
            return None

    def put(self, key: Hashable, value) -> None:
        """Store ``value`` under ``key`` atomically (a reader sees the whole file or none).

        Raises:
          OSError: the directory or the file could not be written (the disk is full, ...).
        """
        dest = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=dest.stem, suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, dest)
            self._written.add(dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.pkl")) if self.directory.is_dir() else 0

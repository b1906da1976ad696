"""Run artifacts in a workdir: every experiment and benchmark leaves the same files.

* ``status.json``   ``running`` while the run goes on, then ``finished`` or ``failed`` with the
  error (:func:`write_status`): a partial workdir never looks finished. :func:`prepare_workdir`
  refuses a directory that already holds files, so two runs never mix (``overwrite=True``
  replaces a previous run's workdir);
* ``config.json``   the run's configuration (:func:`write_config`);
* ``env.json``      versions and device (:func:`write_env`);
* ``metrics.jsonl`` append-only, one JSON object per line (:func:`append_metrics`);
* ``metrics.json``  the headline ``name: value`` figures (:func:`write_named_values`), printed
  by :func:`format_named_values` as the last lines of an experiment's output;
* tables as Markdown and CSV (:func:`write_table`), plots as PNG (:func:`plot_lines`; matplotlib
  with the Agg backend, imported only there).

JSON output is strict: numpy scalars and arrays become Python numbers and lists, NaN and
infinities become ``null``, dataclasses and ``ConfigDict`` become objects. Nothing adds wall-clock
timestamps, so the same run writes the same files.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import io
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.native import STATUS as _CORE_STATUS

__all__ = [
    "STATUS_FILE", "prepare_workdir", "write_status", "read_status",
    "to_jsonable", "write_json", "write_config", "collect_env", "write_env", "append_metrics",
    "read_metrics", "markdown_table", "write_table", "plot_lines", "format_named_values",
    "write_named_values",
]

_PACKAGES = ("dualpath_jax", "jax", "jaxlib", "flax", "numpy", "orbax-checkpoint", "tensorstore",
             "ml_collections", "absl-py", "matplotlib", "torch", "transformers")


def to_jsonable(obj: Any) -> Any:
    """Recursively convert to strict-JSON builtins (see the module docstring)."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def write_json(path, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted strict JSON; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


STATUS_FILE = "status.json"
RUN_STORE = "run_store"  # the finished simulated runs of a run that has not finished (studies.runstore)
_RUN_MARKERS = (STATUS_FILE, "env.json")  # a directory holding one of these is an experiment's workdir
# what a run writes before its first output (sim_resolved.json: run_sim's resolved SimConfig)
_SETUP_FILES = frozenset({STATUS_FILE, "config.json", "sim_resolved.json", "env.json"})


def read_status(workdir) -> dict | None:
    """``workdir/status.json`` (``{"status": "running" | "finished" | "failed", ...}``), or None."""
    path = Path(workdir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_status(workdir, status: str, **fields: Any) -> Path:
    """Replace ``workdir/status.json`` with ``{"status": status, **fields}`` (written whole, then
    renamed into place, so a reader never sees half a file)."""
    if status not in ("running", "finished", "failed"):
        raise ValueError(f"status: must be running, finished or failed (got {status!r})")
    path = Path(workdir) / STATUS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable({"status": status, **fields}), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def prepare_workdir(workdir, *, overwrite: bool = False) -> Path:
    """Create ``workdir`` for a new run and return it; runs never mix.

    A directory that already holds files is refused, so a second run cannot change the files of
    the first. With ``overwrite`` a previous run's workdir (one holding ``status.json`` or
    ``env.json``) is emptied first; any other non-empty directory is still refused. A run that
    failed on bad input before its first output (its status says ``failed`` with ``input_error``,
    as :mod:`dualpath_jax.studies.cli` records it, e.g. for a missing or corrupt trace file found
    after the workdir was opened, and only its status, config (as given and as resolved) and
    environment files are there)
    is replaced without ``overwrite``: there is nothing of it to keep.

    Raises:
      ConfigError: naming ``workdir`` (also when it or a parent cannot be created).
    """
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError("workdir", f"{path} is a file, not a directory")
    entries = sorted(path.iterdir()) if path.is_dir() else []
    status = read_status(path) if entries else None
    if (status and status.get("status") == "failed" and status.get("input_error")
            and all(e.is_file() and e.name in _SETUP_FILES for e in entries)):
        for entry in entries:
            entry.unlink(missing_ok=True)
        entries = []
    if entries:
        held = f"a previous run ({status.get('status', '?')})" if status else f"{len(entries)} entries"
        if not overwrite:
            stopped = bool(status) and status.get("status") != "finished" and (path / RUN_STORE).is_dir()
            resume = ", --resume (scripts that take it) to continue it" if stopped else ""
            raise ConfigError("workdir", f"{path} already holds {held}; pass --overwrite to replace it{resume}, or "
                              f"give a new directory")
        if not any((path / m).is_file() for m in _RUN_MARKERS):
            raise ConfigError("workdir", f"{path} holds {held} but no run's {STATUS_FILE} or env.json: --overwrite "
                              f"replaces only an experiment's workdir; give an empty or new directory")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a file, not writable, or on a read-only filesystem
        raise ConfigError("workdir", f"cannot create {path}: {e.strerror or e}") from None
    return path


def write_config(workdir, config: Any) -> Path:
    """``workdir/config.json`` from a ConfigDict, dataclass or mapping."""
    return write_json(Path(workdir) / "config.json", config)


def collect_env(device: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions and device: Python, platform, CPU count, installed package versions, which build of
    the simulator core runs (``simulator_core``: ``dualpath_jax.native.STATUS``, the Python sources
    unless an opt-in compiled build is installed), and the JAX devices if JAX is already imported
    (this module never imports it) or ``device`` if given."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "packages": versions, "simulator_core": _CORE_STATUS,
    }
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            env["jax_devices"] = [str(d) for d in jax.devices()]
            env["jax_backend"] = jax.default_backend()
        except Exception as e:  # a broken backend should not stop a run from recording its env
            env["jax_devices_error"] = repr(e)
    if device is not None:
        env["device"] = device
    if extra:
        env.update(extra)
    return env


def write_env(workdir, device: str | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """``workdir/env.json`` (see :func:`collect_env`)."""
    return write_json(Path(workdir) / "env.json", collect_env(device, extra))


def append_metrics(workdir, record: Mapping[str, Any], filename: str = "metrics.jsonl") -> Path:
    """Append one JSON object as a line of ``workdir/metrics.jsonl``."""
    path = Path(workdir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(to_jsonable(dict(record)), sort_keys=True, allow_nan=False)
    with path.open("a") as f:
        f.write(line + "\n")
    return path


def read_metrics(workdir, filename: str = "metrics.jsonl") -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` in order (ValueError names a bad line)."""
    path = Path(workdir) / filename
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from e
    return out


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(str(k), None)
    return list(seen)


def _cell(v: Any, float_format: str) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(float(v)) else format(float(v), float_format)
    if isinstance(v, np.integer):
        return str(int(v))
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   float_format: str = ".4g") -> str:
    """A GitHub Markdown table of ``rows`` (missing cells empty; ``|`` escaped)."""
    cols = _columns(rows, columns)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(esc(_cell(r.get(c), float_format)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(path_stem, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                float_format: str = ".4g", title: str | None = None) -> tuple[Path, Path]:
    """Write ``<path_stem>.md`` and ``<path_stem>.csv``; returns both paths.

    The CSV keeps full precision (``repr`` of floats); the Markdown uses ``float_format``.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows, columns)
    md = (f"# {title}\n\n" if title else "") + markdown_table(rows, cols, float_format)
    md_path = stem.with_name(stem.name + ".md")
    md_path.write_text(md)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else to_jsonable(r.get(c)) for c in cols])
    csv_path = stem.with_name(stem.name + ".csv")
    csv_path.write_text(buf.getvalue())
    return md_path, csv_path


def plot_lines(path, x: Mapping[str, Sequence[float]] | Sequence[float], series: Mapping[str, Sequence[float]], *,
               xlabel: str = "", ylabel: str = "", title: str = "", logx: bool = False, logy: bool = False,
               marker: str = "o") -> Path:
    """A PNG line plot, one line per entry of ``series`` (label -> y values).

    ``x`` is one shared sequence or a mapping label -> x values. Uses matplotlib's Agg backend.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        for label, y in series.items():
            xs = x[label] if isinstance(x, Mapping) else x
            ax.plot(list(xs), list(y), marker=marker, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


PRINTED_DIGITS = 6
"""Significant digits of the floats :func:`format_named_values` prints."""


def significant(value: float, digits: int = PRINTED_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (NaN and infinities kept): a headline
    figure that a script writes as it prints it."""
    value = float(value)
    return float(format(value, f".{digits}g")) if math.isfinite(value) else value


def format_named_values(values: Mapping[str, Any]) -> str:
    """``name: value`` lines in the given order (floats with up to :data:`PRINTED_DIGITS`
    significant digits)."""
    lines = []
    for name, v in values.items():
        if isinstance(v, (float, np.floating)):
            v = format(float(v), f".{PRINTED_DIGITS}g")
        lines.append(f"{name}: {v}")
    return "\n".join(lines)


def write_named_values(workdir, values: Mapping[str, Any], filename: str = "metrics.json") -> Path:
    """``workdir/metrics.json`` holding the headline figures."""
    return write_json(Path(workdir) / filename, dict(values))

"""Reading an experiment script's command line into its config, and its errors as one line.

* :func:`one_line`: ``<Error>: <message>`` on one line, the form of every input error
  :func:`~dualpath_jax.studies.cli.run` prints.
* :func:`parse_error`: the line for a command line absl or ml_collections refused: the first
  ``--<config>.<field>`` override that names no field (with the closest field names, or the same
  setting under the other runner's name: ``workload.path`` / ``workload.traces_dir``), a config
  file that does not exist (with the closest file names in its folder), one that does not load
  (its file and line), or absl's own flag error.
* :func:`config_file` / :func:`config_value_error`: the config file a command line names, and the
  line for a ``get_config()`` that returned something other than a config.
* :func:`integral_overrides`: an override of an int field may be written as a float literal of an
  integral value (``--config.cluster.buffer_bytes=1e9``, ``--config.x 1e30``); it is rewritten as
  the integer ml_collections' int parser requires, exactly.
"""

from __future__ import annotations

import decimal
import os
from pathlib import Path

from absl import flags

from dualpath_jax.config import ConfigError, argv_flag_values, closest, did_you_mean

__all__ = ["one_line", "parse_error", "config_file", "config_value_error", "integral_overrides"]

FLAGS = flags.FLAGS


def one_line(error: BaseException) -> str:
    """``<Error>: <message>`` on one line. A config file's own error, which ml_collections wraps
    in a message holding its traceback, is reported as raised."""
    if str(error).startswith("Error whilst parsing config file") and error.__context__ is not None:
        error = error.__context__
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _dotted_names(node, prefix: str = "") -> list[str]:
    """Every field and section of a ConfigDict, dotted."""
    out = []
    for key in node.keys():
        out.append(f"{prefix}{key}")
        child = node[key]
        if hasattr(child, "keys") and not isinstance(child, type):
            out += _dotted_names(child, f"{prefix}{key}.")
    return out


def config_file(argv: list[str], name: str) -> tuple[str, str | None]:
    """``(--<name> value, one line if its file does not exist)``."""
    value = argv_flag_values(argv).get(f"--{name}")
    if value is None:
        value = (FLAGS[name].default_as_str or "").strip("'\"")
    path = value.partition(":")[0]
    if path and not Path(path).is_file():
        folder = Path(path).parent  # the closest file names in its folder, as the user wrote the folder
        near = closest(Path(path).stem, [f.stem for f in folder.glob("*.py")] if folder.is_dir() else [])
        arg = "".join(value.partition(":")[1:])  # ":variant", kept in the suggestions
        hint = f"; did you mean {', '.join(str(Path(path).with_name(n + '.py')) + arg for n in near)}?" if near else ""
        return value, one_line(ConfigError(f"--{name}", f"no such config file {path!r}{hint}"))
    return value, None


def _config_file_error(error: BaseException, argv: list[str], name: str) -> str | None:
    """One line naming the config file (``--<name>``) and its line, for an error raised while the
    file was read or run (a syntax error, a failed import, its ``get_config`` raising); None for
    an error that does not come from the file."""
    path = config_file(argv, name)[0].partition(":")[0]
    if not path:
        return None
    target = os.path.abspath(path)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:  # the error, then what it was raised from
        seen.add(id(error))
        if isinstance(error, ConfigError) and error.field:  # the file names the field itself
            return one_line(error)
        line = None
        if isinstance(error, SyntaxError) and error.filename and os.path.abspath(error.filename) == target:
            line, text = error.lineno, f"{type(error).__name__}: {error.msg}"
        else:
            tb = error.__traceback__
            while tb is not None:
                if os.path.abspath(tb.tb_frame.f_code.co_filename) == target:
                    line = tb.tb_lineno  # (the innermost frame of the file)
                tb = tb.tb_next
            text = f"{type(error).__name__}: {error}"
        if line is not None:
            return one_line(ConfigError(f"--{name}", f"{path}, line {line}: {text}"))
        error = error.__cause__ or error.__context__
    return None


def config_value_error(name: str, argv: list[str], value) -> str | None:
    """One line when the config file's ``get_config`` gave ``value``, which is not a config; None
    when it is one."""
    if value is None or not hasattr(value, "keys"):
        path = config_file(argv, name)[0].partition(":")[0]
        return one_line(ConfigError(f"--{name}", f"{path}: get_config() returned {type(value).__name__}, not a "
                                    f"config (an ml_collections ConfigDict or a dict)"))
    return None


def _base_config(argv: list[str], name: str):
    """``(--<name> value, its config before overrides, None)``, or ``(value, None, one line)`` when
    the config file is missing or does not load (its own error)."""
    value, missing = config_file(argv, name)
    if missing:
        return value, None, missing
    try:
        base = FLAGS[name].parser.parse(value)
        wrong = config_value_error(name, argv, base)
        return (value, None, wrong) if wrong else (value, base, None)
    except Exception as e:  # the config file itself fails: its error
        if isinstance(e, AttributeError) and "get_config" in str(e):  # (ml_collections' names no file)
            e = ConfigError(f"--{name}", f"{value.partition(':')[0]}: defines no get_config() (a config file "
                            f"returns its ConfigDict from get_config)")
        return value, None, _config_file_error(e, argv, name) or one_line(e)


_SYNONYMS = {"workload.path": "workload.traces_dir", "workload.traces_dir": "workload.path"}
"""Fields that one setting has under the simulator studies' and the engine's names (the trace to read)."""


_SWITCHES = ("loading", "prefill", "policy")
"""The three ablation switches, which a config with ``variants`` sets per run (sched/variants.py)."""


def _unknown_field_hint(dotted: str, last: bool, names: list[str]) -> str:
    """``"; did you mean ...?"`` for an override of ``dotted``, which names no field of a config whose
    fields are ``names`` (``last``: its last part is the one missing), or "".

    In order: the ablation switches of a config with ``variants`` (set per run there); the same
    setting under the other runner's name (:data:`_SYNONYMS`); the same field name in another
    section (``workload.num_agents`` -> ``num_agents``); the closest names of its section, then of
    the whole config.
    """
    leaf = dotted.rpartition(".")[2]
    if last and leaf in _SWITCHES and "variants" in names:
        return (f"; {leaf} is one of the switches (loading, prefill, policy) that each run's variant sets: list "
                f"the runs in variants, e.g. --config.variants=\"('basic','dual+full+dualpath')\" (a ladder name "
                f"or <loading>+<prefill>+<policy>)")
    alt = _SYNONYMS.get(dotted)  # the same setting under the other runner's name
    if alt in names:
        return f"; did you mean {alt}?"
    elsewhere = [n for n in names if n.rpartition(".")[2] == leaf] if last else []
    if elsewhere:
        return f"; did you mean {', '.join(elsewhere[:3])}?"
    parent = dotted.rpartition(".")[0]  # the fields of its section first (not the section itself)
    siblings = [n for n in names if n.rpartition(".")[0] == parent]
    return did_you_mean(dotted, siblings) or did_you_mean(dotted, names)


def _override_error(argv: list[str], name: str) -> str | None:
    """One line for the first ``--<name>.<field>`` override of ``argv`` that names no field of the
    config file's config (with the closest field names), or for a config file that does not load;
    None when every override names a field."""
    value, base, problem = _base_config(argv, name)
    if problem:
        return problem
    names = _dotted_names(base)
    for arg in argv:
        key = arg.split("=", 1)[0]
        for prefix in (f"--{name}.", f"--no{name}."):
            if not key.startswith(prefix):
                continue
            parts = key[len(prefix):].split(".")
            node = base
            for i, part in enumerate(parts):
                dotted = ".".join(parts[:i + 1])
                if not hasattr(node, "keys"):
                    return one_line(ConfigError(key, f"{'.'.join(parts[:i])} is a {type(node).__name__} value, "
                                                     f"not a section with fields"))
                if part not in node.keys():
                    return one_line(ConfigError(key, f"no field {dotted!r} in {value}"
                                                     f"{_unknown_field_hint(dotted, i == len(parts) - 1, names)}"))
                node = node[part]
    return None


def _integral(text: str) -> str | None:
    """``text`` written as a plain integer when it is a float literal of an integral value
    (``1e9``, ``2.5e6``, ``64.0``); None otherwise (an int literal already, or not a number)."""
    try:
        int(text, 0)
        return None  # ml_collections reads it as it is
    except ValueError:
        pass
    try:
        value = decimal.Decimal(text.replace("_", ""))  # exact: 1e30 is 10**30, not a double's neighbour
    except decimal.InvalidOperation:
        return None
    return str(int(value)) if value.is_finite() and value == value.to_integral_value() else None


def integral_overrides(argv: list[str], name: str) -> list[str]:
    """``argv`` with every override of an int field, ``--<name>.<field>=<value>`` or
    ``--<name>.<field> <value>``, whose value is a float literal of an integral value
    (``--config.cluster.buffer_bytes=1e9``) written as an integer, which ml_collections' int parser
    requires; other arguments unchanged. A config file that does not load leaves ``argv`` as it is
    (its error is reported by the parse)."""
    prefix = f"--{name}."
    joined, i = [], 0
    while i < len(argv):  # the space form, joined as absl reads it
        if argv[i].startswith(prefix) and "=" not in argv[i] and i + 1 < len(argv) \
                and not argv[i + 1].startswith("--") and _integral(argv[i + 1]) is not None:
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    argv = joined
    candidates = [i for i, a in enumerate(argv) if a.startswith(prefix) and "=" in a
                  and _integral(a.partition("=")[2]) is not None]
    if not candidates:
        return argv
    base = _base_config(argv, name)[1]
    if base is None:
        return argv
    out = list(argv)
    for i in candidates:
        key, _, text = argv[i].partition("=")
        node = base
        try:
            for part in key[len(prefix):].split("."):
                node = node[part]
        except (KeyError, TypeError, AttributeError):
            continue  # an unknown field: the parse names it
        if type(node) is int:  # not bool, not float
            out[i] = f"{key}={_integral(text)}"
    return out


def parse_error(error: Exception, argv: list[str], config_name: str | None) -> str:
    """The one line for a command line that absl or ml_collections refused (``error``): see the
    module docstring. An unknown dotted flag (``--confg.repeats``), for which absl suggests
    nothing, gets the closest flag with the same field (``did you mean --config.repeats?``)."""
    if config_name is not None and not isinstance(error, flags.UnrecognizedFlagError):
        line = _override_error(argv, config_name) or _config_file_error(error, argv, config_name)
        if line:
            return line
    if isinstance(error, flags.Error):
        text = " ".join(str(error).split())
        name = getattr(error, "flagname", "") or ""
        head, dot, rest = name.partition(".")
        if isinstance(error, flags.UnrecognizedFlagError) and dot and "Did you mean" not in text:
            near = closest(head, [f for f in FLAGS if f != head])
            if near:
                text += f"; did you mean {', '.join(f'--{n}.{rest}' for n in near)}?"
        return f"FlagError: {text}"
    return one_line(error)

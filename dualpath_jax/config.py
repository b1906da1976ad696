"""Configuration plumbing: frozen dataclasses validated once, with errors that name the field.

Library code receives frozen dataclasses; experiment scripts build them from ``ml_collections``
``ConfigDict`` files in ``configs/`` via :func:`from_mapping`. Every validation failure raises
:class:`ConfigError`, whose message starts with the dotted name of the offending field, e.g.
``ConfigError: model.n_heads: must be divisible by n_kv_heads (got n_heads=6, n_kv_heads=4)``.

:func:`field_docs` reads each dataclass field's one-line meaning (its ``Attributes:`` docstring
entry or ``metadata["doc"]``) and :func:`describe_config` lists a resolved config field by field
with type, default and meaning (``--print_config`` of the experiment scripts).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "check_positive",
    "check_non_negative",
    "check_in",
    "check_divides",
    "check_fraction",
    "check_at_most",
    "from_mapping",
    "to_dict",
    "argv_flag_values",
    "overridden_fields",
    "closest",
    "did_you_mean",
    "config_variant_error",
    "field_docs",
    "describe_config",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration value. ``field`` holds the dotted field name and ``message`` the text
    after it (``str(e)`` is ``"<field>: <message>"``), so an error can be raised again under
    another field name.

    ``ConfigError(text)`` with one argument (how libraries re-raise an error as ``type(e)(text)``,
    e.g. ml_collections around a config file's own error) keeps ``text`` whole as ``str(e)`` and
    ``message``, with ``field`` empty.
    """

    def __init__(self, field: str, message: str | None = None):
        if message is None:
            self.field, self.message = "", field
            super().__init__(field)
        else:
            self.field, self.message = field, message
            super().__init__(f"{field}: {message}")

    def __reduce__(self):  # pickled (e.g. from a Ray actor) with its field
        return type(self), ((self.field, self.message) if self.field else (self.message,))


def check_positive(field: str, value: Any, *, integer: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number > 0 (an int if ``integer``)."""
    _check_number(field, value, integer)
    if not value > 0:
        raise ConfigError(field, f"must be > 0 (got {value!r})")


def check_non_negative(field: str, value: Any, *, integer: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number >= 0 (an int if ``integer``)."""
    _check_number(field, value, integer)
    if not value >= 0:
        raise ConfigError(field, f"must be >= 0 (got {value!r})")


def check_at_most(field: str, value: Any, limit: float, why: str = "") -> None:
    """Raise ConfigError unless ``value <= limit`` (``why``: what the limit protects, for the message)."""
    if not value <= limit:
        raise ConfigError(field, f"must be <= {limit:,} (got {value!r}){'; ' + why if why else ''}")


def check_fraction(field: str, value: Any) -> None:
    """Raise ConfigError unless 0 <= value <= 1."""
    _check_number(field, value, False)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(field, f"must be in [0, 1] (got {value!r})")


def check_in(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(field, f"must be one of {list(allowed)} (got {value!r})")


def check_divides(field: str, value: int, divisor_field: str, divisor: int) -> None:
    """Raise ConfigError unless ``divisor`` divides ``value``."""
    if divisor <= 0 or value % divisor != 0:
        raise ConfigError(
            field, f"must be divisible by {divisor_field} (got {field.rsplit('.', 1)[-1]}={value}, "
            f"{divisor_field}={divisor})")


def _check_number(field: str, value: Any, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a number (got {type(value).__name__} {value!r})")
    if integer and not isinstance(value, int):
        raise ConfigError(field, f"must be an integer (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field, f"must be finite (got {value!r})")


def to_dict(obj: Any) -> Any:
    """Recursively convert dataclasses / mappings / sequences to JSON-friendly builtins."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field's type hint names (``X`` or ``X | None``), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return classes[0] if len(classes) == 1 else None
    return None


def from_mapping(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping (dict or ConfigDict), recursing into nested dataclasses.

    Unknown keys raise ConfigError naming the key; missing keys take the dataclass default.
    The dataclass's own ``__post_init__`` validation runs as usual.

    Raises:
      ConfigError: unknown field, or a nested value that is not a mapping.
    """
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}", f"unknown field for {cls.__name__}{did_you_mean(key, fields)}; "
                              f"known: {sorted(fields)}")
        hint = _dataclass_of(hints.get(key))
        if hint is not None and value is not None and not dataclasses.is_dataclass(value):
            value = from_mapping(hint, value, prefix=f"{prefix}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a nested dataclass names its fields from its own root ("hardware.x")
        raise _under(e, prefix) from None


def _under(error: ConfigError, prefix: str) -> ConfigError:
    """``error`` naming its field as the user reached it: a dataclass read at ``prefix``
    ``"sim.hardware."`` that names ``"hardware.x"`` is told ``"sim.hardware.x"``."""
    last = prefix.rstrip(".").rpartition(".")[2] + "."
    if not prefix or error.field.startswith(prefix) or last == prefix or not error.field.startswith(last):
        return error
    return ConfigError(prefix + error.field[len(last):], error.message)


def argv_flag_values(argv: Iterable[str]) -> dict[str, str]:
    """Flags of a command line read the way absl reads them, before absl runs: ``--name=value`` or
    ``--name value`` (a following argument that does not start with ``-``); a bare ``--name`` maps
    to ``""``. Later occurrences win. For scripts that must act on a flag before importing JAX
    (e.g. to set ``XLA_FLAGS``)."""
    argv = list(argv)
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
        out[name] = value
    return out


def overridden_fields(argv: Iterable[str], flag: str = "--config") -> list[str]:
    """Dotted config fields a command line overrides: ``--config.sim.beta_s=1`` -> ``sim.beta_s``
    (ml_collections' ``--config.<field>=<value>`` form, read as :func:`argv_flag_values` does)."""
    prefix = flag + "."
    return [name[len(prefix):] for name in argv_flag_values(argv) if name.startswith(prefix)]


# ---- names and meanings ---------------------------------------------------------------------------
def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``candidates`` closest to the misspelled ``name``, best first (``difflib``
    similarity of the dotted names, or of their last parts when that is higher, at least 0.6)."""
    last = name.rsplit(".", 1)[-1]
    scored = []
    for c in dict.fromkeys(candidates):
        score = max(difflib.SequenceMatcher(None, name, c).ratio(),
                    difflib.SequenceMatcher(None, last, c.rsplit(".", 1)[-1]).ratio())
        if score >= 0.6:
            scored.append((-score, len(c), c))
    return [c for _, _, c in sorted(scored)[:n]]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` for the :func:`closest` candidates, or ``""`` when none is close."""
    near = closest(name, candidates)
    return f"; did you mean {', '.join(near)}?" if near else ""


def config_variant_error(config_file: str, arg: str, known: Iterable[str]) -> ConfigError:
    """The error a config file's ``get_config`` raises for a variant (``--config=FILE:arg``) it does not
    have: ``config: FILE has no variant 'qiuck'; did you mean quick? (known: quick, big)``."""
    known = tuple(known)
    listed = f" (known: {', '.join(known)})" if known else " (it takes none)"
    return ConfigError("config", f"{config_file} has no variant {arg!r}{did_you_mean(str(arg), known)}{listed}")


_ENTRY = re.compile(r"^ {2}(\w+(?:, \w+)*): ?(.*)$")


def _attribute_docs(doc: str) -> dict[str, str]:
    """``name -> text`` of the ``Attributes:`` section of a Google-style docstring (an entry
    ``a, b: text`` documents both names; indented lines continue the entry)."""
    out: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def flush():
        for n in names:
            out[n] = " ".join(text).strip()

    inside = False
    for line in inspect.cleandoc(doc).splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the next section
            break
        m = _ENTRY.match(line)
        if m:
            flush()
            names, text = m.group(1).split(", "), [m.group(2)]
        elif line.strip() and names:
            text.append(line.strip())
    flush()
    return out


def _plain(text: str) -> str:
    """Docstring markup as plain text: ``:class:`~a.b.C``` -> ``C``, double backquotes dropped."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def _first_sentence(text: str) -> str:
    text = _plain(text)
    for m in re.finditer(r"\.(\s|$)", text):
        if not re.search(r"(\be\.g|\bi\.e|\betc|\bvs|\bcf|\bSec|\bFig|\bEq|\d)$", text[:m.start()]):
            return text[:m.start() + 1]  # the first full stop that ends a sentence
    return text


def field_docs(cls: type) -> dict[str, str]:
    """One-line meaning of every documented field of dataclass ``cls``: ``field.metadata["doc"]``,
    else the first sentence of the field's ``Attributes:`` entry in the docstring of ``cls`` or of
    a base class (the subclass's entry wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__")
        if not doc or "Attributes:" not in doc:  # (a compiled class's docstring is a filler)
            doc = _source_docstring(klass) or doc
        if doc:
            docs.update(_attribute_docs(doc))
    docs = {k: _first_sentence(v) for k, v in docs.items()}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.metadata.get("doc"):
                docs[f.name] = str(f.metadata["doc"])
    return docs


def _source_docstring(klass: type) -> str | None:
    """The docstring of ``klass`` as written in its module's ``.py`` source, for a class compiled
    without run-time docstrings (the opt-in mypyc build); None if there is no such source."""
    import ast  # noqa: PLC0415
    import sys  # noqa: PLC0415

    module = sys.modules.get(klass.__module__)
    path = getattr(module, "__file__", None) or ""
    if not path:
        return None
    folder, name = os.path.split(path)  # hardware.cpython-311-x86_64-linux-gnu.so -> hardware.py
    source = os.path.join(folder, name.split(".", 1)[0] + ".py")
    try:
        with open(source, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
            return ast.get_docstring(node)
    return None


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(\w+)", r"\1", str(hint)).replace("NoneType", "None")


_NO_DEFAULT = object()


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return _NO_DEFAULT


def _show(value: Any) -> str:
    """A config value as it would be typed on the command line (long floats to 6 significant digits)."""
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 8 else format(value, ".6g")
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _leaves(node: Any, prefix: str = ""):
    """``(dotted name, value)`` of every leaf of a nested mapping (ConfigDict / dict), in order."""
    if hasattr(node, "to_dict") and not isinstance(node, type):
        node = node.to_dict()
    for key, value in node.items():
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _matches(parent: str, pattern: str) -> bool:
    a, b = parent.split(".") if parent else [], pattern.rstrip(".").split(".") if pattern else []
    return len(a) == len(b) and all(q == "*" or p == q for p, q in zip(a, b))


def describe_config(config: Any, schema: Iterable[tuple[str, type]] = (), *,
                    docs: Mapping[str, str] | None = None, defaults: Any = None, title: str = "") -> str:
    """Every leaf field of ``config`` (a ConfigDict or nested mapping) as one line of a table:
    name, resolved value, type, default and one-line meaning.

    Args:
      schema: ``(prefix, dataclass)`` pairs saying which typed config holds the fields under a
        prefix (``("sim.", SimConfig)``; ``""`` for the top level; ``*`` matches one name, as in
        ``"rows.*.sim."``); the first pair whose prefix matches the field's parent and whose class
        has the field gives its type, default (``-`` when it has none) and meaning
        (:func:`field_docs`).
      docs: meanings of fields that no dataclass holds, by dotted name (``*`` as in ``schema``).
      defaults: a config (mapping) holding the defaults of fields that no dataclass holds, such
        as the config file's own values.
      title: a first line (e.g. the config file).
    """
    schema = [(p, cls, {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls), field_docs(cls))
              for p, cls in schema]
    rows = [("name", "value", "type", "default", "meaning")]
    base = dict(_leaves(defaults)) if defaults is not None else {}
    for name, value in _leaves(config):
        parent, _, leaf = name.rpartition(".")
        typ, default, meaning = type(value).__name__ if value is not None else "-", "-", ""
        if name in base:
            default = _show(base[name])
        for pattern, _cls, fields, hints, fdocs in schema:
            if leaf in fields and _matches(parent, pattern):
                d = _field_default(fields[leaf])
                typ = _type_name(hints.get(leaf, typ))
                if typ == "type" and isinstance(value, str):  # a class given by name, "pkg.module:Class"
                    typ = "str"
                default = "-" if d is _NO_DEFAULT else _show(d)
                meaning = fdocs.get(leaf, "")
                break
        for key, text in (docs or {}).items():
            if not meaning and _matches(name, key):
                meaning = _plain(text)
        rows.append((name, _show(value), typ, default, meaning))
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((48, 24, 18, 24))]
    lines = [title] if title else []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(cells + [r[4]]).rstrip())
    return "\n".join(lines)

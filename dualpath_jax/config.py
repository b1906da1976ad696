"""Configuration plumbing: frozen dataclasses validated once, with errors that name the field.

Library code receives frozen dataclasses; experiment scripts build them from ``ml_collections``
``ConfigDict`` files in ``configs/`` via :func:`from_mapping`. Every validation failure raises
:class:`ConfigError`, whose message starts with the dotted name of the offending field, e.g.
``ConfigError: model.n_heads: must be divisible by n_kv_heads (got n_heads=6, n_kv_heads=4)``.
"""

from __future__ import annotations

import dataclasses
import math
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
    "from_mapping",
    "to_dict",
    "argv_flag_values",
    "overridden_fields",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration value. ``field`` holds the dotted field name."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


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
            raise ConfigError(f"{prefix}{key}", f"unknown field for {cls.__name__}; known: {sorted(fields)}")
        hint = hints.get(key)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not dataclasses.is_dataclass(value):
            value = from_mapping(hint, value, prefix=f"{prefix}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


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

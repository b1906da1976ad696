"""Scheduler plug-ins chosen by config: ``"pkg.module:ClassName"`` -> a ClusterScheduler subclass.

A researcher's policy is one class (a :class:`~dualpath_jax.sched.ClusterScheduler` subclass that
overrides any of its policy hooks, see :mod:`.policy`), named in a config as
``--config.scheduler=my_pkg.policies:PreferDE``. Every entry point resolves the name with
:func:`load_scheduler` and hands the class to its runtime, so the same policy runs in the engine,
the simulator, every study and the notebook.
"""

from __future__ import annotations

import importlib

from dualpath_jax.config import ConfigError
from dualpath_jax.sched.policy import ClusterScheduler

__all__ = ["load_scheduler", "scheduler_name"]


def load_scheduler(spec: str | type | None, *, field: str = "scheduler") -> type:
    """The scheduler class named by ``spec``.

    Args:
      spec: ``""`` or ``None`` (the built-in :class:`ClusterScheduler`), a class, or
        ``"module.path:ClassName"`` (the module is imported; a file beside the entry point works
        when its folder is on ``sys.path``, e.g. ``PYTHONPATH=.``).
      field: the config field named in errors.

    Raises:
      ConfigError: naming ``field`` when the text is malformed, the module or class cannot be
        found, or the class is not a ClusterScheduler subclass.
    """
    if spec is None or spec == "":
        return ClusterScheduler
    if isinstance(spec, type):
        cls = spec
    else:
        if not isinstance(spec, str) or spec.count(":") != 1:
            raise ConfigError(field, f"expected 'module.path:ClassName' (got {spec!r})")
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ConfigError(field, f"expected 'module.path:ClassName' (got {spec!r})")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            hint = ""
            if isinstance(e, ModuleNotFoundError) and e.name == module_name.partition(".")[0]:
                hint = (" (a module of your own must be importable: run from its folder with PYTHONPATH=. or "
                        "put its folder on PYTHONPATH)")
            raise ConfigError(field, f"cannot import module {module_name!r} of {spec!r}: {e}{hint}") from None
        try:
            cls = getattr(module, attr)
        except AttributeError:
            known = sorted(n for n, v in vars(module).items()
                           if isinstance(v, type) and issubclass(v, ClusterScheduler))
            raise ConfigError(field, f"module {module_name!r} has no {attr!r}; scheduler classes there: {known}") \
                from None
    if not (isinstance(cls, type) and issubclass(cls, ClusterScheduler)):
        raise ConfigError(field, f"{spec!r} is not a dualpath_jax.sched.ClusterScheduler subclass")
    return cls


def scheduler_name(cls: type) -> str:
    """``"module:ClassName"`` of a scheduler class (``""`` for the built-in one), for run records."""
    if cls is ClusterScheduler:
        return ""
    return f"{cls.__module__}:{cls.__qualname__}"

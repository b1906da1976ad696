"""Joining or starting Ray, the one way the engine's ``ray`` runtime and the studies' sweeps do it.

:func:`ray_module` returns the ``ray`` module with this process connected: to the cluster at
``address`` (``"auto"``, ``"HOST:PORT"``), else to a local instance it starts (an instance already
started in this process is kept). Ray forks its daemons and they exec at once, so JAX's warning
that ``os.fork()`` in a multithreaded process may deadlock does not apply and is not shown.
Importing this module does not import Ray.
"""

from __future__ import annotations

import warnings

__all__ = ["ray_module"]


def ray_module(address: str = "", **local_options):
    """The ``ray`` module, connected (module docstring); ``local_options`` (e.g. ``num_cpus``) go
    to ``ray.init`` when it starts a local instance."""
    import ray  # noqa: PLC0415 (Ray only where it is used)

    if not ray.is_initialized():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(include_dashboard=False, log_to_driver=True, **local_options)
    return ray

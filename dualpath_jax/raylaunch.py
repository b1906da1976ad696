"""Joining or starting Ray, the one way the engine's ``ray`` runtime and the studies' sweeps do it.

:func:`ray_module` returns the ``ray`` module with this process connected: to the cluster at
``address`` (``"auto"``, ``"HOST:PORT"``), else to a local instance it starts (an instance already
started in this process is kept). Ray forks its daemons and they exec at once, so JAX's warning
that ``os.fork()`` in a multithreaded process may deadlock does not apply and is not shown.
A new local instance uses Ray's token authentication (Ray's default); Ray's warning that it
does so, printed on every run, is not shown either (``RAY_AUTH_MODE=disabled`` opts out, as
Ray documents). Importing this module does not import Ray.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["ray_module"]

_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropDefaultAuthNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster enabled token authentication by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


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
                notice = _DropDefaultAuthNotice()
                logging.getLogger(_AUTH_LOGGER).addFilter(notice)
                try:
                    ray.init(include_dashboard=False, log_to_driver=True, **local_options)
                finally:
                    logging.getLogger(_AUTH_LOGGER).removeFilter(notice)
    return ray

"""Joining or starting Ray, the one way the engine's ``ray`` runtime and the studies' sweeps do it.

:func:`ray_module` returns the ``ray`` module with this process connected: to the cluster at
``address`` (``"auto"``, ``"HOST:PORT"``), else to a local instance it starts (an instance already
started in this process is kept). Ray forks its daemons and they exec at once, so JAX's warning
that ``os.fork()`` in a multithreaded process may deadlock does not apply and is not shown.
A new local instance's workers import as this process does: the directories this process added
to its import path (``sys.path`` beyond the interpreter's own prefixes: the working directory, a
script's directory, ``sys.path.insert``) reach them as ``PYTHONPATH``, so a policy class found here
unpickles there. On a cluster each host imports on its own (the README's multi-host notes). A new
local instance uses Ray's token authentication (Ray's default); Ray's warning that it
does so, printed on every run, is not shown either (``RAY_AUTH_MODE=disabled`` opts out, as
Ray documents). Ray keeps a local instance's sockets under the temporary directory
(``RAY_TMPDIR``, else ``TMPDIR``) and refuses to start when their paths pass the 107-byte limit of
a Unix socket name; a new local instance whose temporary directory is that long (a CI runner's
workspace) starts under ``/tmp/ray`` instead. The signal handlers the caller had for SIGINT and
SIGTERM are put back after ``ray.init`` (which installs its own), so a script still ends with its
status recorded. :func:`disconnect` ends the connection :func:`ray_module` made (none it did not
make): the end of this process's Ray job, which stops every task and actor the job still runs.
An address where no cluster answers is a ConfigError naming the setting it came from
(``runtime_address``, ``--ray_address``), at once rather than after Ray's endless retries.
Importing this module does not import Ray.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import warnings

from dualpath_jax.config import ConfigError

__all__ = ["ray_module", "disconnect", "local_temp_dir"]

_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_connected: list[tuple[str, str]] = []  # (job, node) of the connection ray_module made, while it may hold


class _DropDefaultAuthNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster enabled token authentication by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def ray_module(address: str = "", *, field: str = "ray_address", **local_options):
    """The ``ray`` module, connected (module docstring); ``local_options`` (e.g. ``num_cpus``) go
    to ``ray.init`` when it starts a local instance.

    Raises:
      ConfigError: naming ``field`` (the setting ``address`` came from), when no Ray cluster
        answers at ``address``: a ``HOST:PORT`` that refuses or does not answer a connection within
        :data:`CONNECT_TIMEOUT_S` (Ray itself would retry without end), or ``"auto"`` with no
        cluster to find.
    """
    import ray  # noqa: PLC0415 (Ray only where it is used)

    if not ray.is_initialized():
        # ray.init installs its own SIGINT/SIGTERM handlers in the driver; the caller's (a script's
        # handlers that end the run with its status recorded, studies.cli.run) are put back after it
        main = threading.current_thread() is threading.main_thread()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:  # (also when init fails: a caller that goes on keeps its own handlers)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                _init(ray, address, field, local_options)
            _connected[:] = [_connection(ray)] if ray.is_initialized() else []
        finally:
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)
    return ray


def _init(ray, address: str, field: str, local_options: dict) -> None:
    """``ray.init``: joining the cluster at ``address`` (:func:`ray_module`'s errors), else
    starting a local instance (module docstring)."""
    if address:
        _check_reachable(address, field)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        except ConnectionError as e:  # e.g. "auto" with no running cluster
            found = "none runs on this host (nor at RAY_ADDRESS)" if address == "auto" else str(e).splitlines()[0]
            raise ConfigError(field, f"no Ray cluster at {address!r}: {found}; start one with `ray start --head`, "
                              f"or leave {field} empty for a local instance") from None
        return
    notice = _DropDefaultAuthNotice()
    logging.getLogger(_AUTH_LOGGER).addFilter(notice)
    temp = local_temp_dir()
    if temp is not None and "_temp_dir" not in local_options:
        local_options = {**local_options, "_temp_dir": temp}
    try:
        ray.init(include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": _import_path()}}, **local_options)
    finally:
        logging.getLogger(_AUTH_LOGGER).removeFilter(notice)


CONNECT_TIMEOUT_S = 10.0
"""How long a ``HOST:PORT`` address may take to accept a connection before it is refused."""


def _check_reachable(address: str, field: str) -> None:
    """Raise ConfigError naming ``field`` unless a ``HOST:PORT`` address accepts a TCP connection
    (Ray's GCS port); other forms (``auto``, ``ray://...``) are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(field, f"{address!r} is not 'auto' or HOST:PORT (e.g. 10.0.0.1:6379, the address "
                          f"`ray start --head` prints)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(field, f"no Ray cluster answers at {address} ({type(e).__name__}: {e}); start one with "
                          f"`ray start --head` there, or leave {field} empty for a local instance") from None


def disconnect() -> bool:
    """End the Ray connection :func:`ray_module` made, if this process still holds it: the end of
    this process's Ray job, so its tasks and actors stop (their worker processes are killed; a
    local instance this process started stops with them). A connection made elsewhere (the
    caller's own ``ray.init``) is left alone. Returns whether it ended one."""
    if not _connected:
        return False
    job = _connected.pop()
    import ray  # noqa: PLC0415

    if not ray.is_initialized() or _connection(ray) != job:
        return False  # (shut down since, or connected again by the caller)
    ray.shutdown()
    return True


def _connection(ray) -> tuple[str, str]:
    """This process's Ray job and node (a node's ID is new each time one starts)."""
    context = ray.get_runtime_context()
    return context.get_job_id(), context.get_node_id()


_SOCKET_NAME_BYTES = 107  # sun_path of a Unix socket, less its terminating NUL
# what Ray puts under its temporary directory before a socket's name
_SESSION_SOCKET = "/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"


def local_temp_dir() -> str | None:
    """``/tmp/ray`` when Ray's default temporary directory (``RAY_TMPDIR``, else ``TMPDIR``, else
    the system's; module docstring) is too long for its socket names, else None (Ray's default)."""
    import tempfile  # noqa: PLC0415

    if os.environ.get("RAY_TMPDIR"):
        base = os.environ["RAY_TMPDIR"]
    else:
        base = tempfile.gettempdir()
    if len(os.fsencode(base + _SESSION_SOCKET)) <= _SOCKET_NAME_BYTES:
        return None
    return "/tmp/ray"


def _import_path() -> str:
    """This process's import directories beyond the interpreter's own (module docstring), in order,
    then those of ``PYTHONPATH``: the value for a local instance's workers."""
    own = tuple(os.path.join(os.path.abspath(p), "") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    added = [os.path.abspath(p or os.curdir) for p in sys.path]
    added = [p for p in added if os.path.isdir(p) and not os.path.join(p, "").startswith(own)
             and os.path.basename(p) not in ("site-packages", "dist-packages")]  # (a user site: theirs too)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(added + inherited))

"""Command-line plumbing shared by every experiment script (``experiments/*.py``).

* :func:`run` replaces ``absl.app.run(main)``. A bad command line (an unknown flag, a misspelled
  ``--config.<field>`` override, a config file that does not load) and a
  :class:`~dualpath_jax.config.ConfigError`, :class:`~dualpath_jax.workload.TraceFormatError`,
  :class:`~dualpath_jax.sched.RunStalled`, :class:`~dualpath_jax.sched.PolicyError` or
  ``absl.app.UsageError`` raised by the run print one line on stderr,
  ``<Error>: <field or file>: <problem>`` (an unknown field with the closest valid names, a missing
  config file with the closest file names in its folder), and exit with status 1; ``--verbose`` (or
  absl's ``--pdb_post_mortem``) shows the traceback instead. Any other exception is a bug and keeps
  its traceback. An override of an int field may be written as a float literal of an integral
  value (``--config.cluster.buffer_bytes=1e9``); :mod:`.cmdline` reads the command line and words
  these lines. Given the script's config flag,
  ``--print_config`` prints the resolved config, one field a line with its type, default and
  meaning, and exits with status 0.
* :func:`open_workdir` creates the run's output directory
  (:func:`dualpath_jax.metrics.writers.prepare_workdir`: one that already holds files is refused
  unless ``--overwrite``, which replaces a previous run's, never a running one: the run holds an
  exclusive ``flock`` on the directory from its opening to its end) and marks it ``running`` in
  ``status.json``; :func:`run` marks it ``finished`` when ``main`` returns and ``failed``, with the
  error line, when it raises or exits with a non-zero status. A partial workdir never looks finished.
  An interrupted run (Ctrl-C, or ``SIGTERM`` from ``timeout``, ``kill`` or a batch scheduler) is
  marked ``failed`` with ``Interrupted: SIGINT`` / ``SIGTERM``, prints that line and exits with
  status 130 / 143 (``--verbose``: with the traceback). The run takes both signals even when it
  was started with them blocked or ignored (some process managers and CI runners start children
  so): it installs its handlers and unblocks the two in its main thread.
* :func:`define_resume_flag` / :func:`run_store`: a script whose simulated runs go through a
  :class:`~.runs.RunCache` keeps each finished run in ``<workdir>/run_store/``
  (:mod:`.runstore`); ``--resume`` reopens a workdir whose run stopped, for the same command, and
  reads them back. A run that finishes removes its store.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags

from dualpath_jax.config import ConfigError, argv_flag_values, describe_config
from dualpath_jax.metrics import writers
from dualpath_jax.sched.errors import PolicyError, RunStalled
from dualpath_jax.studies import cmdline
from dualpath_jax.studies.cmdline import one_line
from dualpath_jax.workload.errors import TraceFormatError

__all__ = ["USER_ERRORS", "run", "open_workdir", "check_finished", "one_line", "define_config_file",
           "define_sweep_flags", "sweep_from_flags", "define_resume_flag", "run_store", "report_resumed", "RUN_STORE"]

FLAGS = flags.FLAGS
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, show the full traceback instead of one line.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the previous run in --workdir; without it, a --workdir that holds files is refused.")

USER_ERRORS = (ConfigError, TraceFormatError, RunStalled, PolicyError, app.UsageError)
"""Errors of the user's input, reported in one line (a stalled run: most often a custom scheduler
that never places some request; its message says what waits; a policy error: a custom scheduler's
hook returned what the scheduling protocol does not allow, named in the message)."""
_opened: list[Path] = []


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (``SIGINT`` or ``SIGTERM``); ``signum`` which. A
    ``KeyboardInterrupt``, so that code which waits in native loops (Ray's ``ray.wait``) gives it
    back at once as it gives Ctrl-C, and no ``except Exception`` takes it for a failed step."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


_signals: list[int] = []  # the signals _raise_interrupted received, in order


def _raise_interrupted(signum, frame) -> None:
    _signals.append(int(signum))
    raise Interrupted(signum)


def _traceback_wanted(argv: list[str]) -> bool:
    values = argv_flag_values(argv)
    return any(values.get(f"--{name}", "false").lower() in ("", "true", "1") for name in ("verbose", "pdb_post_mortem"))


def _fail(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.exit(1)


# ---- the command line ---------------------------------------------------------------------------
def define_config_file(name: str, default: str, help_text: str):
    """``config_flags.DEFINE_config_file(name, default, help_text)`` for a script whose config has a
    default file. ml_collections would parse the default, with the command line's overrides, while
    the flag is defined, so a misspelled override would end the import in tracebacks; the default
    is put on the command line instead (when ``--<name>`` is not given), where :func:`run` reports
    any error in one line."""
    from ml_collections import config_flags

    if not any(a in (f"--{name}", f"-{name}") or a.startswith((f"--{name}=", f"-{name}=")) for a in sys.argv[1:]):
        sys.argv.insert(1, f"--{name}={default}")
    return config_flags.DEFINE_config_file(name, default, help_text)


def define_sweep_flags() -> None:
    """``--workers`` and ``--ray_address`` for a script whose studies run many independent runs
    (:class:`~dualpath_jax.studies.sweep.Sweep`); read them with :func:`sweep_from_flags`."""
    flags.DEFINE_integer("workers", 1, "Independent simulated runs at once: 1 runs them one after another in this "
                         "process; N > 1 runs them as Ray tasks on a local Ray instance of N CPUs.")
    flags.DEFINE_string("ray_address", "", "Run the independent runs on this Ray cluster ('auto' or HOST:PORT, "
                        "started with `ray start --head` / `ray start --address=...`) instead.")


def define_resume_flag() -> None:
    """``--resume`` for a script whose simulated runs go through a :class:`~.runs.RunCache` with
    :func:`run_store`: :func:`open_workdir` then reopens a workdir whose run did not finish."""
    flags.DEFINE_bool("resume", False, "Continue the run that stopped in --workdir (killed, interrupted, failed): "
                      "the simulated runs it had finished are read back from <workdir>/run_store/ instead of run "
                      "again. The command must be the stopped run's, apart from --resume, --workers, --ray_address, "
                      "--overwrite and --verbose.")


def run_store(workdir):
    """The :class:`~.runstore.RunStore` of the run in ``workdir`` (``<workdir>/run_store/``): the
    simulated runs it finishes, kept until the whole run finishes (then removed), so that
    ``--resume`` continues a run that stopped."""
    from dualpath_jax.studies.runstore import RunStore
    return RunStore(Path(workdir) / RUN_STORE)


RUN_STORE = writers.RUN_STORE
_UNCHANGED_BY = ("resume", "noresume", "workers", "ray_address", "overwrite", "nooverwrite", "verbose", "noverbose")


def report_resumed(cache, workdir) -> None:
    """Say how many finished runs ``cache`` read back from the run store (none: say nothing)."""
    if getattr(cache, "restored", 0):
        print(f"resumed: {cache.restored} finished run(s) read back from {Path(workdir) / RUN_STORE}", flush=True)


def _same_run(command) -> list[str]:
    """A command line as what it computes: the script's name, then its arguments sorted (flags are
    named, so their order does not matter), ``--flag value`` as ``--flag=value``, the workdir as an
    absolute path, and without the flags that do not change what a run computes (``_UNCHANGED_BY``)."""
    args, out = [str(a) for a in command], []
    i = 1
    while i < len(args):
        a = args[i]
        name = a.lstrip("-").split("=", 1)[0]
        if (a.startswith("-") and "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("-")
                and not _is_bool_flag(name)):
            a, i = f"--{name}={args[i + 1]}", i + 1
        i += 1
        if a.startswith("-") and name in _UNCHANGED_BY:
            continue
        if a.startswith("-") and name == "workdir":
            a = f"--workdir={Path(a.split('=', 1)[1]).expanduser().resolve()}"
        out.append(a)
    return [Path(args[0]).name, *sorted(out)] if args else []


def _is_bool_flag(name: str) -> bool:
    """Whether ``--name`` is a boolean flag (it takes no value), or its ``no`` form."""
    for n in (name, name[2:] if name.startswith("no") else None):
        if n and n in FLAGS:
            return isinstance(FLAGS[n], flags.BooleanFlag)
    return False


def _resumable(path: Path, overwrite: bool = False) -> bool:
    """Whether ``--resume`` continues a stopped run in ``path`` (False: nothing there to continue).

    Raises:
      ConfigError: naming ``workdir``: ``path`` holds a finished run, files of no run, or a run
        of another command.
    """
    if not path.is_dir() or not any(path.iterdir()):
        print(f"nothing to resume in {path}: a new run starts", flush=True)
        return False
    status = writers.read_status(path)
    if not status:
        raise ConfigError("workdir", f"{path} holds no run's {writers.STATUS_FILE}: nothing to resume")
    if status.get("input_error") and not (path / RUN_STORE).is_dir():
        return False  # it stopped on bad input before any run: replaced as a plain rerun would replace it
    if status.get("status") == "finished":
        if overwrite:
            return False
        raise ConfigError("workdir", f"{path} holds a finished run: nothing to resume (drop --resume and pass "
                          f"--overwrite to replace it)")
    _refuse_live(path, status)
    before, now = _same_run(status.get("command") or []), _same_run(sys.argv)
    if before != now:
        raise ConfigError("workdir", f"--resume continues the stopped run's command, {' '.join(before)!r}; this is "
                          f"{' '.join(now)!r}")
    stored = len(list((path / RUN_STORE).glob("*.pkl"))) if (path / RUN_STORE).is_dir() else 0
    print(f"resuming the run in {path}: {stored} stored run(s) (those of other code or inputs are computed "
          f"again)", flush=True)
    return True


def _refuse_live(path: Path, status: dict | None) -> None:
    """Refuse a workdir whose run (``status``, its ``status.json``) is still running on this host.

    Raises:
      ConfigError: naming ``workdir``, with the running process's id.
    """
    if not isinstance(status, dict):
        return
    pid = status.get("pid")
    if (status.get("status") == "running" and status.get("host") == socket.gethostname()
            and _alive(pid, status.get("command") or [])):
        raise ConfigError("workdir", f"{path}'s run is still running (process {pid}): stop it first")


def _alive(pid, command: list) -> bool:
    """Whether process ``pid`` of this host still runs ``command`` (its ``sys.argv``). Where
    ``/proc`` tells (Linux), a killed process not yet reaped (a zombie) or a new process that got
    the same pid is not; elsewhere any process with that pid is."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        pass
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (OSError, IndexError):
        return True  # no /proc to ask: the pid exists
    n = len(command)
    return state != "Z" and (not n or argv[-n:] == [str(a) for a in command])


def sweep_from_flags(progress: bool | None = None):
    """The :class:`~dualpath_jax.studies.sweep.Sweep` of ``--workers`` / ``--ray_address``.

    Raises:
      ConfigError: naming ``workers``.
    """
    from dualpath_jax.studies.sweep import Sweep
    return Sweep(FLAGS.workers, FLAGS.ray_address, progress=progress)


# ---- the run --------------------------------------------------------------------------------------
def open_workdir(path, *, overwrite: bool | None = None) -> Path:
    """The run's output directory, created and marked ``running`` (see the module docstring).

    Args:
      path: the ``--workdir`` value.
      overwrite: replace a previous run there (default: the ``--overwrite`` flag).

    With ``--resume`` (:func:`define_resume_flag`) a workdir whose run stopped before it finished is
    reopened as it is, for the same command.

    Raises:
      ConfigError: naming ``workdir``: not given, a file, a directory that already holds files
        (without ``overwrite``; with it, one that holds no previous run), one whose run is still
        running on this host (with or without ``overwrite``), or one this process cannot write
        to; with ``--resume``, one that holds a finished run or another command's.
    """
    if not path:
        raise ConfigError("workdir", "is required: pass --workdir=DIR, the run's output directory")
    if overwrite is None:
        overwrite = bool(FLAGS["overwrite"].value)
    lock = _lock(Path(path))  # held until the run ends: two runs never check, empty or fill it at once
    try:
        if Path(path).is_dir():  # a live run's files are never replaced or mixed with another's
            _refuse_live(Path(path), writers.read_status(Path(path)))
        try:
            if "resume" in FLAGS and FLAGS["resume"].value and _resumable(Path(path), overwrite):
                workdir = Path(path)  # the stopped run's files stay; what it finished is in its run store
            else:
                workdir = writers.prepare_workdir(path, overwrite=overwrite)
            writers.write_status(workdir, "running", command=list(sys.argv), pid=os.getpid(),
                                 host=socket.gethostname())
        except OSError as e:  # not writable (permissions, a read-only or full filesystem), or not removable
            raise ConfigError("workdir", f"cannot write to {path}: {e.strerror or e}"
                              + (f" ({e.filename})" if e.filename else "")) from None
    except BaseException:
        _unlock(lock)
        raise
    _opened.append(workdir)
    _locks[workdir] = lock
    return workdir


_locks: dict[Path, int | None] = {}


def _lock(path: Path) -> int | None:
    """An exclusive lock (``flock``) on the directory ``path``, created if missing; its file
    descriptor, or None where there is nothing to lock (``path`` is a file, cannot be created, or
    the platform has no ``flock``: :func:`~dualpath_jax.metrics.writers.prepare_workdir` then
    reports the path's own problem).

    Raises:
      ConfigError: naming ``workdir`` when another process holds the lock (its run is starting,
        running or emptying the directory).
    """
    try:
        import fcntl
    except ImportError:  # (no flock: the status file's check alone)
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError("workdir", f"{path} is in use by another run (a process holds its lock): stop it first, "
                          f"or give another directory") from None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # (closing the descriptor releases its flock)
        except OSError:
            pass


def _finish(status: str, error: str | None = None, *, input_error: bool = False) -> None:
    """Mark the opened workdirs ``status``; ``input_error``: the run failed on bad input (one of
    :data:`USER_ERRORS`), recorded so that a rerun may replace a workdir it left without output."""
    while _opened:
        workdir = _opened.pop()
        try:
            fields = {"command": list(sys.argv)}
            if error:
                fields["error"] = error
            if input_error:
                fields["input_error"] = True
            writers.write_status(workdir, status, **fields)
            if status == "finished":  # nothing left to resume
                shutil.rmtree(workdir / RUN_STORE, ignore_errors=True)
        except OSError as e:  # the run's own outcome matters more than its status file
            print(f"could not mark {workdir} {status}: {e}", file=sys.stderr)
        finally:  # (once its status says how it ended: another run may then take the directory)
            _unlock(_locks.pop(workdir, None))


def _as_config_field(error: BaseException, cfg) -> BaseException:
    """A ConfigError naming a ``section.field`` that the script's config ``cfg`` does not hold but
    sets at its top level (a study's ``num_agents``, ``mal`` or ``mals`` for its ``workload``): the
    same error under the name the user sets; any other error as it is."""
    if not isinstance(error, ConfigError) or cfg is None or "." not in error.field:
        return error
    parts = error.field.split(".")
    node = cfg
    try:
        for part in parts:
            node = node[part]
        return error  # the config has the field as named
    except (KeyError, TypeError, AttributeError):
        pass
    for name in (parts[-1], parts[-1] + "s"):
        if name in cfg.keys():
            renamed = ConfigError(name, error.message)
            renamed.__cause__ = error
            return renamed
    return error


def run(main: Callable[[list[str]], object], *, config=None, describe: Callable[[object], str] | None = None) -> None:
    """``absl.app.run(main)`` with one-line errors, workdir status and ``--print_config`` (module
    docstring).

    Args:
      main: the script's ``main(argv)``.
      config: the script's config flag (the holder ``config_flags.DEFINE_config_file`` returns),
        which adds ``--print_config``.
      describe: the text ``--print_config`` prints for the resolved config (default:
        :func:`dualpath_jax.config.describe_config` without meanings); it may raise ConfigError
        for an invalid config.
    """
    config_name = None
    if config is not None:
        config_name = config.name
        flags.DEFINE_bool("print_config", False, "Print the resolved config (every field with its value, type, "
                          "default and one-line meaning) and exit.")

    def parse(argv):
        # ml_collections logs a warning of its own for a get_config() that returns None, which the
        # one line below says: absl's warnings stay quiet while the flags and the config are read
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            return parse_quietly(argv)
        finally:
            absl_logger.setLevel(level)

    def parse_quietly(argv):
        if config_name is not None:
            argv = cmdline.integral_overrides(list(argv), config_name)
        try:
            rest = FLAGS(argv)
        except Exception as e:
            if _traceback_wanted(argv):
                raise
            _fail(cmdline.parse_error(e, list(argv), config_name))
        if config_name is not None:  # ml_collections reports a missing file only when the config is read
            missing = cmdline.config_file(list(argv), config_name)[1]
            if missing:
                _fail(missing)
            wrong = cmdline.config_value_error(config_name, list(argv), FLAGS[config_name].value)  # (read when parsed)
            if wrong:
                _fail(wrong)
        return rest

    def traceback_wanted() -> bool:
        return bool(FLAGS.verbose or FLAGS.pdb_post_mortem)

    def wrapped(argv):
        if config is not None and FLAGS.print_config:
            try:
                text = (describe or describe_config)(config.value)
            except USER_ERRORS as e:
                if traceback_wanted():
                    raise
                _fail(one_line(e))
            print(text)
            return
        _signals.clear()  # (a run before this one in the same process: not this run's)
        try:
            signal.signal(signal.SIGINT, _raise_interrupted)
            signal.signal(signal.SIGTERM, _raise_interrupted)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            main(argv)
        except KeyboardInterrupt as e:  # Interrupted, or what native code (Ray) raised in its place
            if not isinstance(e, Interrupted):
                e = Interrupted(_signals[-1] if _signals else signal.SIGINT)
            line = one_line(e)
            _finish("failed", line)
            if traceback_wanted():
                raise
            print(line, file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)
        except SystemExit as e:
            ok = e.code in (0, None)
            _finish("finished" if ok else "failed", None if ok else f"exit status {e.code}")
            raise
        except BaseException as e:
            e = _as_config_field(e, config.value if config is not None else None)
            line = one_line(e)
            _finish("failed", line, input_error=isinstance(e, USER_ERRORS))
            if isinstance(e, USER_ERRORS) and not traceback_wanted():
                _fail(line)
            raise
        _finish("finished")

    app.run(wrapped, flags_parser=parse)


def check_jit_cache_dir(path: str, field: str = "jit_cache_dir") -> str:
    """``path``, created if missing, for JAX's persistent compilation cache ("" = no cache).

    Raises:
      ConfigError: naming ``field``: ``path`` is a file, or cannot be created.
    """
    if path:
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(field, f"{path} is a file, not a directory (the compiled programs' cache; empty for "
                              f"none)")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ConfigError(field, f"cannot create {path}: {e.strerror or e}") from None
    return path


def use_jit_cache(path: str, field: str = "jit_cache_dir") -> str:
    """Point JAX's persistent compilation cache at ``path`` (:func:`check_jit_cache_dir`; ""
    leaves JAX's setting as it is), caching every compiled program however quick; returns ``path``.

    Raises:
      ConfigError: naming ``field``: ``path`` is a file, or cannot be created.
    """
    if check_jit_cache_dir(path, field):
        import jax  # noqa: PLC0415 (a script's first JAX import decides its host devices: not at module load)

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def check_finished(workdir, field: str = "workdir") -> Path:
    """``workdir`` if it holds a finished run (``status.json``), for scripts that read another
    run's outputs.

    Raises:
      ConfigError: naming ``field``: no such directory, or its run is still running or failed.
    """
    path = Path(workdir)
    if not path.is_dir():
        raise ConfigError(field, f"no such directory {str(path)!r}")
    status = writers.read_status(path)
    if status is not None and status.get("status") != "finished":
        why = f": {status['error']}" if status.get("error") else ""
        raise ConfigError(field, f"the run in {path} is {status.get('status')}{why}; its outputs are partial")
    return path


def force_host_devices(argv: list[str], default_config: str) -> None:
    """Set ``--xla_force_host_platform_device_count`` to the engine count of the engine config
    that ``argv``'s ``--config`` names (``default_config`` without one), before JAX loads, so a
    CPU host has one JAX device per engine. A config that does not load is left to the flag
    parser, which reports it in one line."""
    import importlib.util

    from dualpath_jax.config import argv_flag_values  # (imports no JAX)

    values = argv_flag_values(argv)
    path, _, arg = values.get("--config", default_config).partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_engine_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        c = module.get_config(arg or None).cluster
        for key in ("prefill_nodes", "decode_nodes", "engines_per_node"):  # topology overrides
            if f"--config.cluster.{key}" in values:
                c[key] = int(values[f"--config.cluster.{key}"])
        count = (c.prefill_nodes + c.decode_nodes) * c.engines_per_node
    except Exception:  # noqa: BLE001 (reported by the flag parser)
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()

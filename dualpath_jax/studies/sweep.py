"""Independent simulated runs of a study, one after another in this process or in parallel on Ray.

A study's grid (Fig. 7: models x MALs x agent counts x variants) is a list of runs that share
nothing, and the simulator is deterministic, so they can run anywhere and in any order with the
same results. :class:`Sweep` maps a picklable function over such a list:

* ``workers=1`` and no ``address``: in this process, in order (the default; no Ray needed);
* otherwise as Ray tasks (one CPU each): ``address=""`` starts a local Ray instance inside this
  process with ``workers`` CPUs (nothing to start by hand); ``address="auto"`` or ``"HOST:PORT"``
  joins a running cluster (``ray start --head`` on one host, ``ray start --address=HOST:PORT`` on
  the others; every node needs this package installed and, for trace workloads, the traces at
  the same path), whose CPUs set the parallelism.

Results come back in the order of the inputs, bit-identical to a serial run (the tests compare
them); a tqdm bar counts finished runs. A run that raises re-raises its exception here, with the
worker's traceback as a note. A run whose worker process dies (killed, out of memory) runs again
on another worker, up to :data:`WORKER_RETRIES` times (a run is deterministic, so its result is the
same); its exceptions are never retried. A run whose worker imported other package sources than
this process (edited during the sweep, or another version on a cluster's host) is refused: each
worker reports the sources' fingerprint with every result. An error, Ctrl-C or SIGTERM stops the
runs still going: it ends this process's Ray connection when this package made it
(:func:`~dualpath_jax.raylaunch.ray_module`; Ray then kills the job's workers, and the next
sweep connects again), since cancelling runs one by one can race their completion inside Ray and
abort this process (Ray's check "Tried to complete task that was not pending") before the error
is reported; a connection the caller made is left open and its runs are cancelled (best effort:
Ray may not stop a run it is dispatching).

:func:`lockstep` runs searches whose next run depends on the last one (the max-APS bisection of
each seed and variant) side by side: each step's runs of every search form one batch, which can go
through a :class:`Sweep` together.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import tqdm

from dualpath_jax.config import ConfigError
from dualpath_jax.raylaunch import disconnect, ray_module
from dualpath_jax.studies.runstore import code_fingerprint

__all__ = ["Sweep", "lockstep", "WORKER_RETRIES"]

_SOURCES = code_fingerprint()
"""The package sources' fingerprint as this module is imported, close to when the process read
them: a driver and its Ray workers compare theirs (module docstring)."""

WORKER_RETRIES = 3
"""Times a Ray run whose worker process died is started again (Ray's ``max_retries``, which
counts system failures only: an exception the run raises is not retried)."""


class Sweep:
    """Where a study's independent runs execute (module docstring).

    Args:
      workers: parallel runs (1 with no ``address``: serially, in this process).
      address: a Ray cluster to join (``"auto"``, ``"HOST:PORT"``); ``""``: a local instance.
      progress: a bar of finished runs (default: only when stderr is a terminal).

    Raises:
      ConfigError: naming ``workers`` when it is not a positive integer.
    """

    def __init__(self, workers: int = 1, address: str = "", progress: bool | None = None):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError("workers", f"must be an integer >= 1 (got {workers!r})")
        self.workers, self.address, self.progress = workers, str(address or ""), progress

    @property
    def parallel(self) -> bool:
        """Whether runs go to Ray."""
        return self.workers > 1 or bool(self.address)

    def _bar(self, total: int, desc: str):
        show = sys.stderr.isatty() if self.progress is None else self.progress
        return tqdm.tqdm(total=total, unit="run", desc=desc, leave=False, disable=not show)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str = "runs",
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(x) for x in items]``, serially or as Ray tasks (``fn`` and the items must pickle).
        ``on_result(i, value)`` is called in this process as each run's value arrives (in the
        order they finish), e.g. to keep it before the others end.

        Raises:
          the first exception a run raises, as it raised it (not wrapped in Ray's ``RayTaskError``),
          as soon as that run ends; the runs still going are stopped (module docstring).
        """
        items = list(items)
        if not items:
            return []
        with self._bar(len(items), desc) as bar:
            if not self.parallel or len(items) == 1:
                out = []
                for i, x in enumerate(items):
                    out.append(fn(x))
                    if on_result is not None:
                        on_result(i, out[-1])
                    bar.update(1)
                return out
            mine = _SOURCES  # the sources this process runs
            ray = _ray(self.workers, self.address)
            task = ray.remote(num_cpus=1, max_retries=WORKER_RETRIES, retry_exceptions=False)(_call)
            fn_ref = ray.put(fn)
            refs = [task.remote(fn_ref, x) for x in items]
            index = {ref: i for i, ref in enumerate(refs)}
            pending = list(refs)
            out = [None] * len(items)
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    try:
                        values = ray.get(done)
                    except ray.exceptions.RayTaskError as e:  # the run's own error, at once
                        cause = e.cause if isinstance(e.cause, BaseException) else e
                        if cause is not e:  # where it happened: the worker's traceback
                            cause.add_note(f"(raised by run {index[done[0]]} of {desc} on a Ray worker)\n{e}")
                        raise cause from None
                    except ray.exceptions.RayError as e:  # its worker died on every try, or Ray failed
                        i = index[done[0]]
                        raise RuntimeError(f"run {i} of {desc} ({_brief(items[i])}) did not finish on Ray: "
                                           f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
                    for ref, (theirs, value) in zip(done, values):
                        i = index[ref]
                        if theirs != mine:
                            raise RuntimeError(
                                f"run {i} of {desc} ran on a Ray worker whose dualpath_jax sources differ from this "
                                f"process's (changed on disk during the sweep, or another version on that host): its "
                                f"result is not used; rerun once every host runs the same sources")
                        out[i] = value
                        if on_result is not None:
                            on_result(i, value)
                    bar.update(len(done))
            except BaseException:  # an error, or Ctrl-C / SIGTERM: the runs still going stop too
                if not disconnect():  # (module docstring)
                    for ref in pending:
                        ray.cancel(ref, force=True)
                raise
            return out


def _call(fn: Callable[[Any], Any], x: Any) -> tuple[str, Any]:
    """One run on a Ray worker (any picklable callable: a function, a builtin, a class), with the
    fingerprint of the package sources the worker runs (:data:`_SOURCES`)."""
    return _SOURCES, fn(x)


def _brief(item: Any) -> str:
    """A run's input for a message: its repr, cut to 120 characters."""
    text = " ".join(repr(item).split())
    return text if len(text) <= 120 else text[:117] + "..."


class FewerCpusWarning(UserWarning):
    """The Ray instance this process was already connected to has fewer CPUs than ``--workers``."""


def _ray(workers: int, address: str):
    """The ``ray`` module with this process connected (a local instance of ``workers`` CPUs, or
    the cluster at ``address``). A local instance already running in this process keeps its own
    CPU count: a warning says when it runs fewer than ``workers`` runs at once."""
    ray = ray_module(address, num_cpus=workers)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if not address and cpus < workers:
        warnings.warn(f"workers: the Ray instance this process already runs has {cpus:g} CPUs, so at most "
                      f"{int(cpus)} of the {workers} workers run at once", FewerCpusWarning, stacklevel=2)
    return ray


class _Aborted(Exception):
    """Raised in a search's thread when the batch its request belongs to failed."""


def lockstep(searches: Sequence[Callable[[Callable[[Hashable], Any]], Any]],
             evaluate: Callable[[list], Sequence[Any]]) -> list:
    """``[search(request) for search in searches]``, the searches stepped together.

    Each search runs in its own thread and obtains every value through ``request(key)``, which
    blocks; once every unfinished search waits on a request, the distinct keys pending go to
    ``evaluate(keys)`` in this thread as one batch (values in the order of ``keys``, e.g. runs
    through a :class:`Sweep`), and each search continues with its value. A search's result depends
    only on its own values, so it is the same as run alone. The first exception of a search, or of
    ``evaluate``, re-raises here.
    """
    n = len(searches)
    cond = threading.Condition()
    pending: dict[int, Hashable] = {}
    answers: dict[int, Any] = {}
    done = [False] * n
    results: list = [None] * n
    errors: list = [None] * n
    failure: list = []

    def request(i: int, key: Hashable):
        with cond:
            pending[i] = key
            cond.notify_all()
            while i not in answers and not failure:
                cond.wait()
            if i not in answers:
                raise _Aborted()
            return answers.pop(i)

    def body(i: int):
        try:
            results[i] = searches[i](lambda key: request(i, key))
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            errors[i] = e
        finally:
            with cond:
                done[i] = True
                cond.notify_all()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        while True:
            with cond:
                while not all(done[i] or i in pending for i in range(n)):
                    cond.wait()
                if not pending:
                    break
                batch = dict(pending)
                pending.clear()
            keys = list(dict.fromkeys(batch.values()))
            try:
                values = dict(zip(keys, evaluate(keys)))
            except BaseException as e:
                with cond:
                    failure.append(e)
                    cond.notify_all()
                raise
            with cond:
                answers.update({i: values[k] for i, k in batch.items()})
                cond.notify_all()
    finally:
        with cond:  # leaving early (an error, or a signal while this thread waited): wake every search
            if not all(done):
                failure.append(None)
                cond.notify_all()
        for t in threads:
            t.join()
    for e in errors:
        if e is not None and not isinstance(e, _Aborted):
            raise e
    return results

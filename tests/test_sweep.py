"""Studies' independent runs on Ray: the same results as one after another in this process."""

import math
import os
import sys
import threading

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.raylaunch import _import_path, local_temp_dir
from dualpath_jax.sim import SimConfig
from dualpath_jax.studies import RunCache, Sweep, WorkloadSpec, from_config_dict, offline_runs, run_study
from dualpath_jax.studies.runs import online_runs
from dualpath_jax.studies.sweep import lockstep

from config_files import load_sim_config as load_config


def _fingerprint(summary: dict) -> str:
    """Every figure of a run but its wall time (and the memo flag), exactly (repr: NaN equals NaN)."""
    return repr(sorted((k, v) for k, v in summary.items() if k not in ("wall_s", "cached")))


@pytest.mark.xdist_group("ray")
def test_runs_on_ray_equal_serial_runs(tmp_path, ray_session):
    base = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, fetch_period_s=0.02)
    runs = [(v, WorkloadSpec(mal="32K", num_agents=n)) for n in (8, 16) for v in ("basic", "dualpath", "oracle")]
    serial = offline_runs(base, runs, None)
    cache = RunCache(sweep=Sweep(workers=2))
    parallel = offline_runs(base, runs, None, cache=cache)
    assert [_fingerprint(s) for s in parallel] == [_fingerprint(s) for s in serial]
    assert all(not s["cached"] for s in parallel) and cache.misses == len(runs)
    again = offline_runs(base, runs[:2], None, cache=cache)  # memoised: nothing is sent to Ray again
    assert [s["cached"] for s in again] == [True, True] and cache.misses == len(runs)
    assert all(math.isfinite(s["jct_s"]) for s in serial)
    # online runs, and every seed of a study, go the same way
    online = [(base, v, WorkloadSpec(mal="32K", num_agents=6, token_divisor=8, seed=r), 1.0, r, 0.0)
              for r in (0, 1) for v in ("basic", "dualpath")]
    on_serial, on_ray = online_runs(online, None), online_runs(online, None, cache=RunCache(sweep=Sweep(workers=2)))
    assert [repr(sorted((k, v) for k, v in a.stats.items() if k != "wall_s")) for a in on_ray] == \
        [repr(sorted((k, v) for k, v in a.stats.items() if k != "wall_s")) for a in on_serial]
    for study in ("ablation", "balance"):
        config = load_config(study, "tiny")
        config.seeds = 2
        typed = from_config_dict(config)
        alone = run_study(typed, tmp_path / f"{study}_serial", log=lambda s: None)
        spread = run_study(typed, tmp_path / f"{study}_ray", log=lambda s: None,
                           cache=RunCache(sweep=Sweep(workers=2)))
        assert repr(spread) == repr(alone), study
    # a run that raises re-raises here (one Ray instance per test session: this test starts it)
    with pytest.raises(Exception, match="math domain error"):
        Sweep(workers=2).map(math.sqrt, [4.0, -1.0])


@pytest.mark.xdist_group("ray")
def test_a_run_whose_ray_worker_dies_runs_again(tmp_path, ray_session):
    class DiesOnce:  # local: pickled by value, so a Ray worker needs no import of this module
        """``x * x``, but the first call for ``x == 2`` kills its own process (a crashed Ray worker)."""

        def __init__(self, marker):
            self.marker = str(marker)

        def __call__(self, x):
            import os  # noqa: PLC0415

            if x == 2 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
            return x * x

    marker = tmp_path / "died"
    assert Sweep(workers=2).map(DiesOnce(marker), [1, 2, 3]) == [1, 4, 9]
    assert marker.exists()  # the worker of the first try did die

    class DiesAlways:  # every try of x == 2 kills its worker
        def __call__(self, x):
            import os  # noqa: PLC0415

            if x == 2:
                os._exit(1)
            return x

    with pytest.raises(RuntimeError, match=r"run 1 of runs \(2\) did not finish on Ray: \w+Error"):
        Sweep(workers=2).map(DiesAlways(), [1, 2])


@pytest.mark.xdist_group("ray")
def test_a_run_s_error_is_raised_as_it_was_and_at_once(ray_session):
    class FailsFirst:  # local: pickled by value
        def __call__(self, x):
            import time  # noqa: PLC0415

            if x == 0:
                raise ConfigError("workload.num_agents", "must be >= 1 (got 0)")
            time.sleep(x)
            return x

    import time
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:  # not Ray's RayTaskError, whose text holds the remote traceback
        Sweep(workers=2).map(FailsFirst(), [0, 120])
    assert str(e.value) == "workload.num_agents: must be >= 1 (got 0)" and e.value.field == "workload.num_agents"
    assert time.monotonic() - t0 < 60  # without waiting for the 120 s run, which is cancelled


@pytest.mark.xdist_group("ray")
def test_a_run_s_error_keeps_the_worker_s_traceback_and_a_worker_on_other_sources_is_refused(ray_session,
                                                                                              monkeypatch):
    class Deep:  # local: pickled by value
        def __call__(self, x):
            def _deep_failure(v):
                raise ValueError(f"bad value {v}")
            return _deep_failure(x)

    with pytest.raises(ValueError, match="bad value [34]") as e:  # (one run alone would run here, not on Ray)
        Sweep(workers=2).map(Deep(), [3, 4])
    notes = "\n".join(getattr(e.value, "__notes__", []))
    assert "on a Ray worker" in notes and "_deep_failure" in notes  # where it was raised, not only here
    # this process claims other sources than the workers import: no result of theirs is used
    from dualpath_jax.studies import sweep
    monkeypatch.setattr(sweep, "_SOURCES", "sources this process read before an edit")
    with pytest.raises(RuntimeError, match="sources differ from this process's"):
        Sweep(workers=2).map(abs, [-1, -2])


@pytest.mark.xdist_group("ray")
def test_ctrl_c_in_a_sweep_on_the_caller_s_ray_cancels_its_runs_and_keeps_the_connection(ray_session, tmp_path):
    class Sleeps:  # local: pickled by value
        def __init__(self, folder):
            self.folder = str(folder)

        def __call__(self, x):
            import os  # noqa: PLC0415
            import time  # noqa: PLC0415

            open(os.path.join(self.folder, str(os.getpid())), "w").close()
            time.sleep(x)
            return x

    def interrupt_once_running():  # Ctrl-C while the driver waits, a run going (the other going or queued)
        while not os.listdir(tmp_path):
            time.sleep(0.05)
        time.sleep(0.5)
        _thread.interrupt_main()

    import _thread
    import signal
    import time
    # (a test run started in the background by a non-interactive shell ignores SIGINT, and then
    # interrupt_main does nothing)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_once_running, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            Sweep(workers=2).map(Sleeps(tmp_path), [120, 120])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert ray_session.is_initialized()  # the caller's own connection is left open ...
    t0 = time.monotonic()
    assert Sweep(workers=2).map(abs, [-1, -2, -3]) == [1, 2, 3]
    assert time.monotonic() - t0 < 60  # ... and the 120 s runs were cancelled (they would hold both CPUs)


def test_a_local_ray_instance_hands_its_workers_the_directories_this_process_imports_from(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # as a script's sys.path.insert(0, ...) for its policy module
    monkeypatch.setenv("PYTHONPATH", "/from/the/environment")
    path = _import_path().split(os.pathsep)
    assert path[0] == str(tmp_path) and path[-1] == "/from/the/environment"
    assert not [p for p in path if p.startswith((sys.prefix, sys.base_prefix))]  # the interpreter's own


def test_a_local_ray_instance_under_a_long_temporary_directory_starts_under_tmp(monkeypatch):
    # Ray refuses to start when its socket names, under TMPDIR / RAY_TMPDIR, pass 107 bytes
    import tempfile
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert local_temp_dir() is None  # Ray's default
    monkeypatch.setattr(tempfile, "tempdir", "/home/runner/work/dualpath_jax/dualpath_jax/.tmp/job")
    assert local_temp_dir() == "/tmp/ray"
    monkeypatch.setenv("RAY_TMPDIR", "/scratch")  # Ray reads it before TMPDIR
    assert local_temp_dir() is None
    monkeypatch.setenv("RAY_TMPDIR", "/scratch/" + "x" * 40)
    assert local_temp_dir() == "/tmp/ray"


def test_serial_sweep_and_bad_worker_counts():
    assert Sweep().map(lambda x: x * x, [1, 2, 3]) == [1, 4, 9] and not Sweep().parallel
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="workers"):
            Sweep(workers=bad)


def test_lockstep_batches_one_step_of_every_search_and_keeps_each_result():
    """Three "searches" (doubling until a threshold) of different lengths: every batch holds the
    next request of each unfinished search, and each result equals the search run alone."""
    def search(start, limit):
        def run(request):
            x, seen = start, []
            while True:
                seen.append(request((start, x)))
                if x >= limit:
                    return seen
                x *= 2
        return run

    alone = [search(1, 4), search(3, 3), search(1, 16)]
    expected = [s(lambda key: key[1] * 10) for s in alone]
    batches, threads = [], set()

    def evaluate(keys):
        batches.append(sorted(keys))
        threads.add(threading.current_thread().name)
        return [k[1] * 10 for k in keys]

    assert lockstep(alone, evaluate) == expected == [[10, 20, 40], [30], [10, 20, 40, 80, 160]]
    # steps: (1,1) (3,3) (1,1) dedup -> [(1,1), (3,3)]; then (1,2) from both doubling searches; ...
    assert batches == [[(1, 1), (3, 3)], [(1, 2)], [(1, 4)], [(1, 8)], [(1, 16)]]
    assert threads == {threading.current_thread().name}  # the runs are evaluated in the caller's thread

    def failing(request):
        request("a")
        raise ValueError("search failed")

    with pytest.raises(ValueError, match="search failed"):
        lockstep([failing, search(1, 8)], lambda keys: [1 for _ in keys])
    with pytest.raises(RuntimeError, match="batch failed"):
        lockstep([search(1, 8), search(2, 8)], lambda keys: (_ for _ in ()).throw(RuntimeError("batch failed")))


_LOCKSTEP_SIGNAL = """
import os, signal, sys, threading, time
from dualpath_jax.studies.sweep import lockstep

def quick(request):
    return request("a")

# a child inherits ignored signals and the signal mask (a test run started in the background by a
# non-interactive shell ignores SIGINT): without these no KeyboardInterrupt comes and the sweep ends normally
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
signal.signal(signal.SIGINT, signal.default_int_handler)
sent = threading.Event()

def busy(request):
    sent.wait(30)  # still working when the signal comes (however late a loaded host runs the timer)
    time.sleep(1.0)
    return request("b")

def interrupt():
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    sent.set()

threading.Timer(0.3, interrupt).start()
t0 = time.monotonic()
try:
    lockstep([quick, busy], lambda keys: [1 for _ in keys])
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - t0:.1f} s")
"""


def test_lockstep_ends_at_a_signal_while_a_search_is_busy():
    """Ctrl-C while this thread waits for a search that is still computing: every search is woken
    (the one waiting for an answer too) and the interrupt comes back, instead of a join that waits
    forever."""
    import subprocess
    done = subprocess.run([sys.executable, "-c", _LOCKSTEP_SIGNAL], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("interrupted after"), (done.stdout, done.stderr[-2000:])
    seconds = float(done.stdout.split()[-2])
    assert seconds < 10


@pytest.mark.xdist_group("ray")
def test_more_workers_than_the_running_ray_instance_has_cpus_is_a_warning(ray_session):
    """A local Ray instance already running in this process keeps its CPU count (2 here): asking
    for more workers says how many runs go at once instead of silently running fewer."""
    import warnings

    from dualpath_jax.studies import sweep

    with pytest.warns(sweep.FewerCpusWarning, match=r"^workers: the Ray instance this process already runs has 2 "
                                                    r"CPUs, so at most 2 of the 3 workers run at once"):
        assert sweep._ray(3, "") is ray_session
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sweep._ray(2, "")

"""bench_runtime's probe of the machine's load before its runs (its warning threshold)."""

import importlib.util
import multiprocessing
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "bench_runtime.py"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_runtime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines flags and functions only (runs nothing outside __main__)
    return module


def _spin(seconds, spinning=None):
    end = time.perf_counter() + seconds
    if spinning is not None:
        spinning.set()
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux /proc/stat")
def test_host_busy_cores_sees_another_process_spinning():
    bench = _load()
    ctx = multiprocessing.get_context("spawn")
    spinning = ctx.Event()
    child = ctx.Process(target=_spin, args=(4.0, spinning))
    child.start()
    try:
        assert spinning.wait(60)  # the child is up and spinning (however long a loaded host takes to start it)
        busy = bench._host_busy_cores(1.0)
    finally:
        child.join()
    assert busy >= 0.7  # one core kept busy by the child (others' load only adds)
    assert busy > bench._BUSY_HOST_CORES

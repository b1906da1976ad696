"""The run store behind --resume: runs on disk, keyed by the run and by the package's code."""

import importlib
import pickle

import numpy as np
import pytest

from dualpath_jax.sim import SimConfig
from dualpath_jax.studies import RunCache, WorkloadSpec
from dualpath_jax.studies import runstore
from dualpath_jax.studies.runs import offline_run
from dualpath_jax.studies.runstore import RunStore

KEY = ("offline", SimConfig(prefill_nodes=1, decode_nodes=1), WorkloadSpec(mal="32K", num_agents=4))


def test_a_stored_run_reads_back_equal_and_a_damaged_file_is_a_miss(tmp_path):
    store = RunStore(tmp_path / "s")
    value = {"jct_s": 12.5, "table": np.arange(5.0)}
    assert store.get(KEY) is None
    store.put(KEY, value)
    back = store.get(KEY)
    assert back["jct_s"] == 12.5 and np.array_equal(back["table"], value["table"])
    assert len(store) == 1 and not list((tmp_path / "s").glob("*.tmp"))  # written whole, then renamed
    store.path(KEY).write_bytes(pickle.dumps(value)[:20])  # cut short (a disk error)
    assert store.get(KEY) is None
    other = ("offline", SimConfig(prefill_nodes=1, decode_nodes=2), KEY[2])
    assert store.path(other) != store.path(KEY)


def test_other_code_or_another_policy_source_never_reads_a_stored_run(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    store.put(KEY, 1.0)
    monkeypatch.setattr(runstore, "code_fingerprint", lambda: "another version of the package")
    assert store.get(KEY) is None
    monkeypatch.undo()
    assert store.get(KEY) == 1.0
    a = type("Mine", (), {"__module__": "my_policies"})  # no file or source to read: its name only
    assert runstore._stable(a) == "my_policies:Mine:" + runstore.hashlib.sha256(b"Mine").hexdigest()
    assert runstore._stable(RunCache) == "dualpath_jax.studies.runs:RunCache"  # the package's: by name


def test_a_cache_with_a_store_resumes_with_the_runs_another_process_finished(tmp_path):
    wl = WorkloadSpec(mal="32K", num_agents=4, token_divisor=8)
    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1)
    first = RunCache(store=RunStore(tmp_path))
    summary = offline_run(cfg, "dualpath", wl, log=None, cache=first)
    assert first.restored == 0 and first.misses == 1 and len(RunStore(tmp_path)) == 1
    second = RunCache(store=RunStore(tmp_path))  # a new process: empty memory, same store
    again = offline_run(cfg, "dualpath", wl, log=None, cache=second)
    assert second.restored == 1 and second.misses == 0 and again.pop("cached") and not summary.pop("cached")
    assert again == summary


def test_a_policy_keys_its_runs_by_its_module_files_and_its_bases(tmp_path, monkeypatch):
    base, leaf = tmp_path / "base_pol.py", tmp_path / "leaf_pol.py"
    base.write_text("from dualpath_jax.sched import ClusterScheduler\nclass Base(ClusterScheduler):\n    pass\n")
    leaf.write_text("from base_pol import Base\nclass Leaf(Base):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import leaf_pol

    (tmp_path / "helper_pol.py").write_text("SCALE = 1\n")
    importlib.import_module("helper_pol")  # a helper the policy would import from beside it

    before = runstore._stable(leaf_pol.Leaf)
    base.write_text(base.read_text() + "HELPER = 2  # the base's module changed, not Leaf's source\n")
    runstore._class_code.cache_clear()  # (a new process: a class's code is read once per process)
    after_base = runstore._stable(leaf_pol.Leaf)
    (tmp_path / "helper_pol.py").write_text("SCALE = 2\n")
    runstore._class_code.cache_clear()
    assert len({before, after_base, runstore._stable(leaf_pol.Leaf)}) == 3


def test_a_store_that_cannot_be_written_is_given_up_and_the_run_goes_on(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cache = RunCache(store=RunStore(tmp_path / "file" / "store"))
    with pytest.warns(RuntimeWarning, match="later runs are not kept for --resume"):
        value, cached = cache.get_or_run(KEY, lambda: 3.0)
    assert (value, cached, cache.store) == (3.0, False, None)
    assert cache.get_or_run(KEY, lambda: 4.0) == (3.0, True)  # still held in memory


def test_a_run_read_back_after_its_eviction_is_not_counted_as_resumed(tmp_path):
    cache = RunCache(max_entries=1, store=RunStore(tmp_path))
    cache.get_or_run(("a",), lambda: 1)
    cache.get_or_run(("b",), lambda: 2)  # evicts a from memory; it stays on disk
    assert cache.get_or_run(("a",), lambda: 3) == (1, True) and cache.restored == 0


def test_a_trace_changed_on_disk_makes_another_key(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("{}\n")
    spec = WorkloadSpec(mal="32K", num_agents=4, source="mooncake", path=str(trace))
    before = RunStore(tmp_path / "s").path(("offline", spec))
    trace.write_text("{}\n{}\n")  # fixed between a stop and its resume
    runstore._files_signature.cache_clear()  # (a new process: signatures are read once per process)
    assert RunStore(tmp_path / "s").path(("offline", spec)) != before


def test_a_store_counts_the_runs_another_process_wrote_as_restored(tmp_path):
    mine = RunStore(tmp_path)
    mine.put(KEY, 1.0)
    assert mine.get(KEY) == 1.0 and mine.restored == 0  # its own run
    resumed = RunStore(tmp_path)
    assert resumed.get(KEY) == 1.0 and resumed.get(KEY) == 1.0 and resumed.restored == 1



def test_a_shipped_mooncake_trace_named_by_name_is_part_of_the_key(tmp_path, monkeypatch):
    """``path="synthetic"`` names the shipped file; a change to that file makes another key."""
    from dualpath_jax.workload import sources
    data = tmp_path / "data"
    (data / "mooncake").mkdir(parents=True)
    shipped = data / "mooncake" / sources.MOONCAKE_FILES["synthetic"]
    shipped.write_text("{}\n")
    monkeypatch.setattr(sources, "data_dir", lambda: data)
    spec = WorkloadSpec(mal="32K", num_agents=4, source="mooncake", path="synthetic")
    before = RunStore(tmp_path / "s").path(("offline", spec))
    shipped.write_text("{}\n{}\n")
    runstore._files_signature.cache_clear()
    assert RunStore(tmp_path / "s").path(("offline", spec)) != before


def test_the_code_fingerprint_skips_an_editor_s_lock_file(tmp_path, monkeypatch):
    """A dangling ``.#name.py`` link (an editor's lock file) is no source: it neither changes the
    fingerprint nor makes reading it fail."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(runstore, "_PACKAGE", pkg)
    runstore.code_fingerprint.cache_clear()
    try:
        before = runstore.code_fingerprint()
        (pkg / ".#a.py").symlink_to(tmp_path / "no-such-file")
        runstore.code_fingerprint.cache_clear()
        assert runstore.code_fingerprint() == before
        (pkg / "a.py").write_text("x = 2\n")  # a real change still shows
        runstore.code_fingerprint.cache_clear()
        assert runstore.code_fingerprint() != before
    finally:
        runstore.code_fingerprint.cache_clear()

"""The simulator core's builds: the default install compiles nothing; an opt-in compiled build
(``DUALPATH_COMPILE=1 pip install -e .``) runs only while its sources are unchanged, fails loudly
at import otherwise, and simulates exactly what the sources do."""

import copy
import dataclasses
import hashlib
import importlib.machinery
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dualpath_jax import native
from dualpath_jax.config import ConfigError
from dualpath_jax.model.spec import get_spec
from dualpath_jax.native import MANIFEST, StaleBuildError, decide
from dualpath_jax.sched import (AttentionTimeModel, ClusterScheduler, EngineLoad, ReadPlan, SchedulerConfig,
                                check_read_plan, split_de_blocks)
from dualpath_jax.sim import (HardwareConfig, Server, SimConfig, Simulator, agents_from_trajectories,
                              calibrate_from_public, offline_starts, reserve)
from dualpath_jax.sim.compute import weight_bytes_per_gpu
from dualpath_jax.workload import paper_dataset

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
PKG = Path(native.__file__).resolve().parent
ROOT = PKG.parent
PURE_STATUS = "Python (DUALPATH_PURE_PYTHON is set; a compiled build is installed)"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package(tmp_path, manifest=True):
    """A fake package: ``pkg.a`` and ``pkg.sub.b`` have C extensions beside them, ``pkg.c`` does not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = {"pkg.a": pkg / "a.py", "pkg.sub.b": pkg / "sub" / "b.py"}
    for path in sources.values():
        path.write_text(f"X = {path.stem!r}\n")
        path.with_name(path.stem + SUFFIX).write_bytes(b"\x7fELF")
    (pkg / "c.py").write_text("")
    (pkg / ("_group__mypyc" + SUFFIX)).write_bytes(b"\x7fELF")  # a group library: no source beside it
    if manifest:
        hashes = {m: _sha256(p) for m, p in sources.items()}
        (pkg / MANIFEST).write_text(json.dumps({"compiler": "mypyc", "modules": hashes}))
    return pkg, sources


def test_a_compiled_build_runs_only_while_its_sources_are_unchanged(tmp_path):
    pkg, sources = _package(tmp_path)
    assert decide(pkg) == (True, "compiled (mypyc): pkg.a, pkg.sub.b", sources)
    sources["pkg.sub.b"].write_text("X = 'edited'\n")
    with pytest.raises(StaleBuildError) as e:
        decide(pkg)
    assert str(e.value) == (
        f"dualpath_jax: {sources['pkg.sub.b']} changed since the simulator core was compiled. Rebuild it with "
        f"`DUALPATH_COMPILE=1 pip install -e {tmp_path}`, or go back to the pure-Python build (removes the "
        f"extensions) with `pip install -e {tmp_path}`; `DUALPATH_PURE_PYTHON=1` runs the sources meanwhile.")
    assert decide(pkg, pure_python=True) == (False, PURE_STATUS, sources)  # all of them from source, unchecked


def test_extensions_the_build_did_not_record_fail_loudly(tmp_path):
    pkg, _ = _package(tmp_path, manifest=False)
    with pytest.raises(StaleBuildError, match=r"modules \(pkg.a, pkg.sub.b\) without a readable build manifest"):
        decide(pkg)
    (pkg / MANIFEST).write_text(json.dumps({"modules": {"pkg.a": "0" * 64}}))
    with pytest.raises(StaleBuildError, match=r"\(pkg.a, pkg.sub.b\) are not the ones the build recorded \(pkg.a\)"):
        decide(pkg)
    (pkg / MANIFEST).write_text("{not json")
    with pytest.raises(StaleBuildError, match="without a readable build manifest"):
        decide(pkg)


def test_only_extensions_this_interpreter_imports_count(tmp_path):
    pkg, sources = _package(tmp_path)
    for path in sources.values():
        path.with_name(path.stem + SUFFIX).rename(path.with_name(path.stem + ".cpython-399-x86_64-linux-gnu.so"))
    assert decide(pkg) == (False, "Python (no compiled modules)", {})  # another Python's builds: nothing to check


@pytest.mark.parametrize("value, wanted", [(None, False), ("", False), ("0", False), ("false", False), ("No", False),
                                           ("off", False), ("1", True), ("true", True), ("yes", True)])
def test_the_pure_python_switch(value, wanted):
    assert native.pure_python_requested(value) is wanted


def _stub_install(tmp_path) -> Path:
    """A copy of the package's first module (``__init__`` and ``native``) with one "compiled" module,
    ``sim/cluster``: its source, an extension that could not load (never imported unless chosen)
    and the build's manifest."""
    pkg = tmp_path / "dualpath_jax"
    (pkg / "sim").mkdir(parents=True)
    shutil.copy(PKG / "__init__.py", pkg / "__init__.py")
    shutil.copy(PKG / "native.py", pkg / "native.py")
    (pkg / "sim" / "__init__.py").write_text("")
    src = pkg / "sim" / "cluster.py"
    src.write_text("BUILD = 'source'\n")
    src.with_name("cluster" + SUFFIX).write_bytes(b"not a loadable extension")
    hashes = {"dualpath_jax.sim.cluster": _sha256(src)}
    (pkg / MANIFEST).write_text(json.dumps({"compiler": "mypyc", "modules": hashes}))
    return src


def _import_stub(tmp_path, code: str, pure_python: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, DUALPATH_PURE_PYTHON=pure_python)
    return subprocess.run([sys.executable, "-c", f"import dualpath_jax\n{code}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def test_importing_a_compiled_build_with_an_edited_source_fails_naming_it(tmp_path):
    src = _stub_install(tmp_path)
    done = _import_stub(tmp_path, "print(dualpath_jax.native.STATUS)")
    assert done.returncode == 0 and done.stdout == "compiled (mypyc): dualpath_jax.sim.cluster\n", done.stderr
    src.write_text("BUILD = 'edited source'\n")
    done = _import_stub(tmp_path, "")
    assert done.returncode == 1 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dualpath_jax.native.StaleBuildError: dualpath_jax: {src} changed since the simulator core "
                           "was compiled.")
    assert f"`DUALPATH_COMPILE=1 pip install -e {tmp_path}`" in last and f"`pip install -e {tmp_path}`" in last
    # the sources on request, in place of the extension: the edited one runs, without a check
    code = "import dualpath_jax.sim.cluster as c; print(dualpath_jax.native.STATUS, c.BUILD)"
    done = _import_stub(tmp_path, code, pure_python="1")
    assert done.returncode == 0 and done.stdout == f"{PURE_STATUS} edited source\n", done.stderr


@pytest.mark.skipif(bool(native.compiled_sources(PKG)), reason="an opt-in compiled build is installed")
def test_the_default_install_holds_no_extension_module():
    import dualpath_jax.sim.cluster as cluster

    assert native.STATUS == "Python (no compiled modules)" and not native.COMPILED
    assert [p for p in PKG.rglob("*") if p.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))] == []
    assert not (PKG / MANIFEST).exists() and cluster.__file__ == str(PKG / "sim" / "cluster.py")


_SETUP = textwrap.dedent("""
    import json, runpy
    import setuptools
    declared = {}
    setuptools.setup = lambda **kw: declared.update(kw)  # what setup.py asks setuptools to build
    runpy.run_path("setup.py", run_name="__main__")
    print(json.dumps({"ext_modules": declared.get("ext_modules"), "setup_requires": declared.get("setup_requires", []),
                      "cmdclass": sorted(declared.get("cmdclass", {}))}))
""")


def test_the_default_build_declares_no_extension_and_needs_only_setuptools():
    """What ``pip install -e .`` builds: no extension, no build requirement beyond setuptools (the
    opt-in ``DUALPATH_COMPILE=1`` adds mypyc's extensions and mypy; trying it fetches mypy, so it is
    not run here)."""
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"] == ["setuptools>=77"]
    done = subprocess.run([sys.executable, "-c", _SETUP], cwd=ROOT, env=dict(os.environ, DUALPATH_COMPILE=""),
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == {"ext_modules": None, "setup_requires": [],
                                                        "cmdclass": ["build_py"]}


_RUN = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from dualpath_jax import native
    from dualpath_jax.sim import SimConfig, Simulator, agents_from_trajectories, offline_starts, variant_config
    from dualpath_jax.sim import cluster
    from dualpath_jax.workload import paper_dataset

    ts = paper_dataset("64K", num_agents=96, seed=3)
    agents = agents_from_trajectories(ts, offline_starts(ts))
    out = {"status": native.STATUS, "cluster_file": cluster.__file__}
    for variant, loading in [("basic", None), ("dualpath", None), ("dualpath", "split"), ("oracle", None)]:
        cfg = variant_config(SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=2), variant)
        cfg = cfg if loading is None else cfg.replace(loading=loading)
        res = Simulator(cfg, agents).run()
        h = hashlib.sha256()
        for k in sorted(res.requests):
            h.update(k.encode()); h.update(np.ascontiguousarray(res.requests[k]).tobytes())
        h.update(res.attention_s.tobytes())
        h.update(repr(sorted((k, v["bytes"]) for k, v in res.links.items())).encode())
        out[f"{variant}/{loading}"] = [res.events, res.end_s, h.hexdigest()]
    json.dump(out, sys.stdout)
""")


def _run(pure_python: bool) -> dict:
    env = dict(os.environ, DUALPATH_PURE_PYTHON="1" if pure_python else "")
    done = subprocess.run([sys.executable, "-c", _RUN], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not native.COMPILED, reason=f"no opt-in compiled build in this install: {native.STATUS}")
def test_compiled_core_simulates_exactly_what_the_sources_do():
    compiled, source = _run(False), _run(True)
    assert compiled.pop("status").startswith("compiled (mypyc)") and compiled.pop("cluster_file").endswith(SUFFIX)
    assert source.pop("status") == PURE_STATUS
    assert source.pop("cluster_file").endswith("cluster.py")
    assert compiled == source  # events, JCT and a hash of every per-request column, bit for bit
    assert len({v[2] for v in source.values()}) == 4 and all(np.isfinite(v[1]) for v in source.values())


def test_public_functions_of_compiled_modules_take_numpy_scalars():
    """Compiled code checks declared types (an ``int`` parameter rejects ``numpy.int64``), so the
    public functions of the compiled modules declare what Python would accept: the same answers
    for numpy scalars as for Python numbers, in either build."""
    spec, hw = get_spec("deepseek-v3.2"), HardwareConfig()
    m = calibrate_from_public(spec, peak_flops=SimConfig().peak_flops, hbm_bytes_per_s=hw.hbm_bytes_per_s, ep_size=np.int64(64))
    assert m == calibrate_from_public(spec, peak_flops=SimConfig().peak_flops, hbm_bytes_per_s=hw.hbm_bytes_per_s, ep_size=64)
    assert weight_bytes_per_gpu(spec, np.int64(8), "fp8") == weight_bytes_per_gpu(spec, 8, "fp8")
    i64 = np.int64
    assert m.time_s(i64(30_000), i64(700)) == m.time_s(30_000, 700) > 0
    assert m.max_bsz_within(i64(30_000), np.float64(0.25)) == m.max_bsz_within(30_000, 0.25) > 0
    assert m.decode_step_s(i64(64), i64(2_000_000)) == m.decode_step_s(64, 2_000_000) > 0
    assert m.prefill_tokens_per_s(i64(30_000), i64(700), i64(4)) == m.prefill_tokens_per_s(30_000, 700, 4) > 0
    atm = AttentionTimeModel(flops_per_key=1e3, seconds_per_flop=1e-12, seconds_per_token=1e-5)
    assert atm.time_s(i64(100), i64(10)) == atm.time_s(100, 10) > 0
    assert split_de_blocks(i64(10), i64(64), 640.0, 0.0) == split_de_blocks(10, 64, 640.0, 0.0) == 10
    check_read_plan(ReadPlan("split", i64(4)), i64(10), "split")
    with pytest.raises(ValueError, match=r"de_blocks=11 is outside \[0, 10\]"):
        check_read_plan(ReadPlan("de", i64(11)), i64(10), "dual")
    a, b = Server("a", 4.0), Server("b", 2.0)
    assert reserve((a, b), i64(8), np.float64(1.0)) == (1.0, 5.0) and (a.bytes, b.bytes) == (8.0, 8.0)


def test_configs_models_and_servers_pickle_and_copy():
    """Sweeps send configs to worker processes: every record of the compiled modules round-trips."""
    spec, hw = get_spec("deepseek-v3.2"), HardwareConfig()
    model = calibrate_from_public(spec, peak_flops=SimConfig().peak_flops, hbm_bytes_per_s=hw.hbm_bytes_per_s, ep_size=64)
    records = [SimConfig(compute=model, hardware=HardwareConfig(gpus_per_node=4)), model, hw,
               SchedulerConfig(policy="round_robin"), AttentionTimeModel(1e3, 1e-12), EngineLoad(1, 2, 3, 4, 5.0)]
    for r in records:
        for clone in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
            assert clone == r and type(clone) is type(r)
    assert dataclasses.replace(model, topk=None).topk is None
    s = Server("snic_read[0]", 4.0)
    reserve((s,), 8.0, 1.0)
    clone = pickle.loads(pickle.dumps(s))
    assert (clone.name, clone.rate, clone.free_at, clone.bytes) == ("snic_read[0]", 4.0, 3.0, 8.0)
    with pytest.raises(ConfigError, match="hardware.gpus_per_node: must be an integer"):
        HardwareConfig(gpus_per_node=8.0)  # the config's own check, in either build
    assert repr(HardwareConfig(hbm_bytes=141_000_000_000).hbm_bytes) == "141000000000"


def test_a_policy_may_return_numpy_block_counts():
    """A Python policy's plan with a numpy ``de_blocks`` is read exactly as the same plan with an int."""

    def policy(to_int):
        class Mine(ClusterScheduler):
            def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
                n = np.int64(hit_blocks // 2)  # split: half of the blocks on each side
                return ReadPlan("pe" if n == 0 else "split" if n < hit_blocks else "de", int(n) if to_int else n)
        return Mine

    ts = paper_dataset("64K", num_agents=24, seed=5)
    agents = agents_from_trajectories(ts, offline_starts(ts))
    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=2, loading="split")
    numpy_run = Simulator(cfg, agents, scheduler_cls=policy(False)).run(max_events=np.int64(10**9), progress=0)
    int_run = Simulator(cfg, agents, scheduler_cls=policy(True)).run()
    assert numpy_run.events == int_run.events and numpy_run.end_s == int_run.end_s
    for k, col in int_run.requests.items():
        np.testing.assert_array_equal(numpy_run.requests[k], col, err_msg=k)
    assert set(int_run.requests["side"]) >= {"split"} and not np.isnan(int_run.requests["finish_s"]).any()


def _compiled_list() -> list[str]:
    """``setup.py``'s COMPILED, read without running setup.py."""
    import ast
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py defines no COMPILED list")


def test_compiled_modules_define_no_native_class_on_a_builtin_type():
    """mypyc cannot compile a native class deriving from a builtin type ("Inheriting from most builtin
    types is unimplemented", e.g. an exception class): every such class in a module of the opt-in
    build must be a plain Python class (``@mypyc_attr(native_class=False)``) or live elsewhere
    (``sched.errors``). Checked on the sources, so the default (pure) test run catches it."""
    import ast
    import builtins
    offenders = []
    for rel in _compiled_list():
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            builtin_bases = [b.id for b in node.bases if isinstance(b, ast.Name)
                             and isinstance(getattr(builtins, b.id, None), type) and b.id != "object"]
            plain = any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "mypyc_attr"
                        and any(k.arg == "native_class" and getattr(k.value, "value", True) is False
                                for k in d.keywords) for d in node.decorator_list)
            if builtin_bases and not plain:
                offenders.append(f"{rel}:{node.lineno} class {node.name}({', '.join(builtin_bases)})")
    assert not offenders, offenders

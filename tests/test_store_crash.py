"""Crash consistency of the file store: ``kill -9`` a writer again and again, reopen, check every block.

Slow (``pytest -m slow tests/test_store_crash.py``, about 10-20 s on 2 cores). A zygote process imports the
store once and forks one writer per round, so a round costs a fork, not an interpreter start. Each
writer rewrites the blocks of a small key set, four writes in flight at a time, with content that
says which write it is: every Layer Block starts with ``(key index, version, layer)`` and the rest
is a pseudo-random function of ``(key index, version)``. Before a write starts the writer appends
``key version`` to a journal (an ``O_APPEND`` file, which a SIGKILL does not lose). The test kills
the writer with SIGKILL at a random moment after its first write began, then reopens the store and
reads every block (whole, and a few single layers): a block that reads back valid must be exactly
the content of a journaled version of its own key; a torn one may only be reported as a failure.
The next writer inherits whatever the killed one left behind (its half-written ``<key>.__lock`` temp files).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import numpy as np
import pytest

from dualpath_jax.store import FailureCause, KVStore, StoreConfig

ROUNDS = 40

# Shared by the writer (inside the zygote) and the checks below.
_BLOCK_SRC = textwrap.dedent("""
    import numpy as np
    from dualpath_jax.kvcache import block_keys, layout_for
    from dualpath_jax.model import get_spec

    LAYOUT = layout_for(get_spec("tiny-gqa").replace(name="tiny-gqa-32l", n_layers=32))  # 512 KiB blocks
    KEYS = block_keys(LAYOUT, np.random.default_rng(0).integers(0, 512, 8 * LAYOUT.block_tokens))

    _BASE = {}

    def make_block(k, v):
        # key k's random base plus a version-dependent word in every 8 bytes (cheap, so the writer
        # spends its time writing); each Layer Block starts with (k, v, layer)
        if k not in _BASE:
            _BASE[k] = np.random.default_rng(k).integers(0, 2**63, LAYOUT.full_block_bytes // 8, dtype=np.uint64)
        word = np.uint64((v * 0x9E3779B97F4A7C15) % 2**64)
        block = (_BASE[k] + word).view(np.uint8).reshape(LAYOUT.full_block_shape)
        for layer in range(LAYOUT.n_layers):
            block[layer, 0, :24] = np.array([k, v, layer], "<u8").view(np.uint8)
        return block
""")

_ZYGOTE = _BLOCK_SRC + textwrap.dedent("""
    import os, sys, traceback
    from dualpath_jax.store import KVStore, StoreConfig

    def writer(root, journal, first_version, fsync):
        store = KVStore(LAYOUT, StoreConfig(path=root, fsync=fsync, io_threads=4))
        jfd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        rng = np.random.default_rng(first_version)
        v = first_version
        while True:  # until SIGKILL
            batch = rng.choice(len(KEYS), size=4, replace=False)
            blocks = []
            for k in batch:
                v += 1
                os.write(jfd, f"{k} {v}\\n".encode())
                blocks.append(make_block(int(k), v))
            for res in store.write([KEYS[k] for k in batch], blocks):
                if not res.ok:
                    sys.stderr.write(f"writer: write failed: {res.failure}\\n")
                    os._exit(3)

    for line in sys.stdin:  # "run ROOT JOURNAL FIRST_VERSION FSYNC" or "wait PID"
        cmd, *args = line.split()
        if cmd == "run":
            pid = os.fork()
            if pid == 0:
                code = 4
                try:
                    writer(args[0], args[1], int(args[2]), args[3] == "1")
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            print(pid, flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(status, flush=True)
""")

_NS: dict = {}
exec(_BLOCK_SRC, _NS)
LAYOUT, KEYS, make_block = _NS["LAYOUT"], _NS["KEYS"], _NS["make_block"]
N_KEYS = len(KEYS)


def _journal(path) -> dict[int, set[int]]:
    versions = defaultdict(set)
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):  # a line cut by the kill names a write that never started
                    k, v = map(int, line.split())
                    versions[k].add(v)
    return versions


def _check_block(k: int, block: np.ndarray, layer: int | None, versions: dict[int, set[int]]) -> str | None:
    """None if ``block`` (a Full Block, or Layer Block ``layer``) is exactly a journaled write of key k."""
    first = block[0, 0, :24].view("<u8")
    kk, v, ll = (int(x) for x in first)
    want_layer = 0 if layer is None else layer
    if kk != k or ll != want_layer or v not in versions[k]:
        return f"key {k} layer {layer}: read back (key {kk}, version {v}, layer {ll}), not a journaled write"
    expected = make_block(k, v)
    if layer is not None:
        expected = expected[layer:layer + 1]
    if not np.array_equal(block, expected):
        return f"key {k} layer {layer} version {v}: bytes differ from the write"
    return None


@pytest.mark.slow
def test_sigkilled_writer_never_leaves_a_valid_but_wrong_block(tmp_path):
    root, journal = tmp_path / "kv", tmp_path / "journal"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")  # a single-threaded zygote forks safely
    with open(tmp_path / "zygote.err", "w") as err:
        zygote = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=err, text=True, env=env)
    rng = np.random.default_rng(2024)
    wrong, torn, killed_after_a_write, valid_reads, interrupted = [], [], 0, 0, 0
    try:
        for rnd in range(ROUNDS):
            before = sum(len(v) for v in _journal(journal).values())
            zygote.stdin.write(f"run {root} {journal} {(rnd + 1) * 10**6} {rnd % 2}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            deadline = time.monotonic() + 30
            while sum(len(v) for v in _journal(journal).values()) == before and time.monotonic() < deadline:
                time.sleep(0.002)  # wait for the writer's first journaled write (not a timing assertion)
            time.sleep(float(rng.uniform(0.0, 0.15)))  # the random moment of the kill
            os.kill(pid, signal.SIGKILL)
            zygote.stdin.write(f"wait {pid}\n")
            zygote.stdin.flush()
            status = int(zygote.stdout.readline())
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                f"round {rnd}: writer ended with status {status} before the kill: "
                f"{(tmp_path / 'zygote.err').read_text()[-2000:]}")
            versions = _journal(journal)
            killed_after_a_write += sum(len(v) for v in versions.values()) > before
            interrupted += any(name.endswith(".__lock") for _, _, files in os.walk(root) for name in files)
            with KVStore(LAYOUT, StoreConfig(path=str(root), fsync=False)) as store:  # reopen
                for k, r in enumerate(store.read(KEYS)):
                    if r.ok:
                        valid_reads += 1
                        problem = _check_block(k, r.block, None, versions)
                        if problem:
                            wrong.append(f"round {rnd}: {problem}")
                    elif r.failure.cause is not FailureCause.MISSING:
                        torn.append(f"round {rnd}: key {k}: {r.failure.cause.value}: {r.failure.detail}")
                for k in range(N_KEYS):
                    for layer in rng.choice(LAYOUT.n_layers, size=3, replace=False):
                        r = store.read([KEYS[k]], layer=int(layer))[0]
                        if r.ok:
                            problem = _check_block(k, r.block, int(layer), versions)
                            if problem:
                                wrong.append(f"round {rnd}: {problem}")
                        elif r.failure.cause is not FailureCause.MISSING:
                            torn.append(f"round {rnd}: key {k} layer {layer}: {r.failure.cause.value}")
        # The store stays usable after all the kills: a new writer replaces every block.
        with KVStore(LAYOUT, StoreConfig(path=str(root), fsync=False)) as store:
            fresh = [make_block(k, 1) for k in range(N_KEYS)]
            assert all(w.ok for w in store.write(KEYS, fresh))
            for r, b in zip(store.read(KEYS), fresh):
                assert r.ok and np.array_equal(r.block, b), r.failure
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    assert not wrong, wrong[:5]  # never valid-but-wrong
    assert not torn, torn[:5]  # and, as the store promises, never a visible partial block
    assert valid_reads > 0 and killed_after_a_write == ROUNDS
    assert interrupted > 0  # some kills did land inside a write (a temp file was left behind)

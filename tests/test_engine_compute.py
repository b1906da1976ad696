"""Runtime compute (bucketed paged prefill layer, batched paged decode step) against the model's
dense, no-cache forward: GQA and MLA, reference and Pallas (interpret mode off GPU) attention."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.engine.compute import (all_logits, bucket_blocks, bucket_tokens, decode_logits, decode_step,
                                         get_block, last_token_logits, prefill_layer, reference_greedy, set_blocks,
                                         top2_gap)
from dualpath_jax.engine.profile import ProfileSample, fit_time_model
from dualpath_jax.model import cost, forward, forward_with_cache, get_spec, init_params
from dualpath_jax.model.forward import layer_kv_shapes

Z = 64
ATOL = 1e-5  # f32 tolerance of the attention kernels (tests/test_kernels_model.py)


@functools.lru_cache(maxsize=None)
def _model(name):
    spec = get_spec(name)
    return spec, jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(0)))


@pytest.fixture(scope="module", params=["tiny-gqa", "tiny-mla"])
def model(request):
    return _model(request.param)


def test_buckets():
    assert [bucket_tokens(n) for n in (1, 16, 17, 100, 128, 129)] == [16, 16, 32, 128, 128, 256]
    assert [bucket_blocks(p) for p in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]


def _blocks(spec, kv, start):
    """A layer's KV of ``start`` tokens (host LayerKV) as padded blocks ``[P_b, Z, ...]`` x2."""
    p_b = bucket_blocks(-(-start // Z))
    out = []
    for i, shape in enumerate(layer_kv_shapes(spec)):
        buf = np.zeros((p_b * Z, *shape), np.float32)
        if kv is not None:
            buf[:start] = kv[i]
        out.append(jnp.asarray(buf.reshape(p_b, Z, *shape)))
    return tuple(out)


def _prefill(params, spec, tokens, cached_kv, start, implementation):
    """Every layer of prefill_layer over tokens[start:] with cached_kv (per layer LayerKV of start tokens)."""
    t = len(tokens) - start
    h = np.zeros((bucket_tokens(t), spec.d_model), np.float32)
    h[:t] = np.asarray(params["embed"])[tokens[start:]]
    h = jnp.asarray(h)
    pos = jnp.arange(start, start + h.shape[0], dtype=jnp.int32)
    new = []
    for layer, lp in enumerate(params["layers"]):
        cache = _blocks(spec, cached_kv[layer] if cached_kv else None, start)
        h, kv = prefill_layer(lp, spec, h, pos, cache, jnp.int32(start), jnp.int32(t), implementation=implementation)
        new.append(tuple(np.asarray(x)[:t] for x in kv))
    return h, new, t


@pytest.mark.parametrize("implementation", ["reference", "pallas"])
def test_paged_prefill_over_cached_prefix_matches_dense_forward(model, implementation):
    spec, params = model
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, 150).astype(np.int32)
    ref = np.asarray(forward(params, spec, jnp.asarray(tokens), implementation="reference"))
    h1, kv1, t1 = _prefill(params, spec, tokens[:70], None, 0, implementation)  # 70 tokens, no cache
    h2, _, t2 = _prefill(params, spec, tokens, kv1, 70, implementation)  # 80 tokens over 70 cached (2 blocks)
    np.testing.assert_allclose(np.asarray(all_logits(params, spec, h1))[:t1], ref[:70], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(all_logits(params, spec, h2))[:t2], ref[70:], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(last_token_logits(params, spec, h2, jnp.int32(t2 - 1))), ref[149],
                               atol=ATOL, rtol=0)
    # the paged prefill's KV equals the dense layer-by-layer pass's cached KV
    _, kvs = forward_with_cache(params, spec, jnp.asarray(tokens[:70]), None, implementation="reference")
    for got, want in zip(kv1, kvs):
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, np.asarray(b), atol=ATOL, rtol=0)


def _pools(spec, pt, fill):
    return tuple(tuple(jnp.full((pt, Z, *s), fill, jnp.float32) for s in layer_kv_shapes(spec))
                 for _ in range(spec.n_layers))


def _load_prompt(spec, pools, kvs, ids, n):
    """Put the prompt's KV (L LayerKVs of n tokens) into pool blocks ``ids`` (in token order)."""
    values = []
    for i, shape in enumerate(layer_kv_shapes(spec)):
        buf = np.zeros((spec.n_layers, len(ids) * Z, *shape), np.float32)
        for layer, kv in enumerate(kvs):
            buf[layer, :n] = np.asarray(kv[i])
        values.append(jnp.asarray(buf.reshape(spec.n_layers, len(ids), Z, *shape)))
    return set_blocks(pools, jnp.asarray(np.asarray(ids, np.int32)), tuple(values))


@pytest.mark.parametrize("implementation", ["reference", "pallas"])
def test_paged_decode_logits_match_dense_forward(model, implementation):
    """Two sequences decode side by side over one pool (their blocks interleaved, out of order);
    every step's logits equal the dense no-cache forward's next-token logits."""
    spec, params = model
    rng = np.random.default_rng(3)
    lens = (100, 60)
    seqs = [list(rng.integers(0, spec.vocab_size, n).astype(np.int32)) for n in lens]
    pools = _pools(spec, 8, 0.0)
    tables = np.array([[6, 1], [3, 0]], np.int32)
    for b, (seq, n) in enumerate(zip(seqs, lens)):
        _, kvs = forward_with_cache(params, spec, jnp.asarray(np.array(seq[:-1], np.int32)), None,
                                    implementation="reference")
        pools = _load_prompt(spec, pools, kvs, tables[b], n - 1)
    step = jax.jit(functools.partial(decode_logits, implementation=implementation), static_argnames=("spec",))
    for _ in range(3):
        tokens = jnp.asarray([s[-1] for s in seqs], jnp.int32)
        positions = jnp.asarray([len(s) - 1 for s in seqs], jnp.int32)
        logits, pools = step(params, spec, tokens, positions, pools, jnp.asarray(tables), jnp.ones(2, bool))
        for b, seq in enumerate(seqs):
            ref = np.asarray(forward(params, spec, jnp.asarray(np.array(seq, np.int32)), implementation="reference"))
            np.testing.assert_allclose(np.asarray(logits[b]), ref[-1], atol=ATOL, rtol=0)
            seq.append(int(np.argmax(ref[-1])))


def test_decode_step_greedy_matches_forward_and_leaves_idle_rows_alone(model):
    spec, params = model
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, spec.vocab_size, 100).astype(np.int32)
    _, kvs = forward_with_cache(params, spec, jnp.asarray(prompt), None)
    pools = _pools(spec, 8, 7.0)  # block 5 belongs to an idle row: must stay untouched
    ids = np.array([2, 0], np.int32)  # the request's blocks, out of order on purpose
    pools = _load_prompt(spec, pools, kvs, ids, 100)
    seq = list(prompt) + [int(np.argmax(np.asarray(forward(params, spec, jnp.asarray(prompt)))[-1]))]
    table = np.zeros((4, 2), np.int32)
    table[0] = ids
    table[2] = [5, 5]
    got_gaps = []
    for _ in range(6):
        tokens = np.zeros(4, np.int32)
        tokens[0], tokens[2] = seq[-1], 3
        positions = np.zeros(4, np.int32)
        positions[0], positions[2] = len(seq) - 1, 10
        active = np.array([True, False, False, False])
        nxt, gaps, pools = decode_step(params, spec, jnp.asarray(tokens), jnp.asarray(positions), pools,
                                       jnp.asarray(table), jnp.asarray(active))
        seq.append(int(nxt[0]))
        got_gaps.append(float(gaps[0]))
    # one no-cache forward over the decoded sequence: greedy at every decoded position
    ref = np.asarray(forward(params, spec, jnp.asarray(np.array(seq[:-1], np.int32))))[100:]
    assert seq[101:] == [int(t) for t in ref.argmax(axis=-1)]
    np.testing.assert_allclose(got_gaps, [top2_gap(r) for r in ref], atol=ATOL)
    for x in get_block(pools, jnp.int32(5)):
        assert np.all(np.asarray(x) == 7.0)
    # the decoded tokens' KV landed at positions 100.. of the request's blocks (block 0 holds 64..127)
    _, kv_all = forward_with_cache(params, spec, jnp.asarray(np.array(seq[:106], np.int32)), None)
    block0 = get_block(pools, jnp.int32(0))
    for i in range(2):
        np.testing.assert_allclose(np.asarray(block0[i])[0, 100 - 64:106 - 64], np.asarray(kv_all[0][i])[100:106],
                                   atol=ATOL)


def test_reference_greedy_chunked_equals_full():
    spec, params = _model("tiny-gqa")
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, spec.vocab_size, 90).astype(np.int32)
    gen = rng.integers(0, spec.vocab_size, 12).astype(np.int32)
    full = reference_greedy(params, spec, prompt, gen)
    chunked = reference_greedy(params, spec, prompt, gen, chunk_tokens=32)
    np.testing.assert_array_equal(full[0], chunked[0])
    np.testing.assert_allclose(full[1], chunked[1], atol=1e-5)
    # independent check of the first position: argmax of a plain forward over the prompt
    logits = np.asarray(forward(params, spec, jnp.asarray(prompt)))[-1]
    assert full[0][0] == int(np.argmax(logits))
    expected_margin = logits.max() - logits[gen[0]]
    np.testing.assert_allclose(full[2][0], expected_margin, atol=1e-5)


def test_fit_time_model_recovers_known_rates():
    spec = get_spec("tiny-gqa")
    fpk = 4 * spec.n_heads * spec.head_dim  # GQA attention FLOPs per (query, key) per layer
    assert float(cost.prefill_flops(spec, 0, 1)["attention"]) == spec.n_layers * fpk
    a, b = 2e-6, 5e-11
    pairs = [(0, 64), (512, 32), (1024, 256), (2048, 16)]
    keys = lambda c, n: (2 * c + n + 1) * n / 2  # noqa: E731  sum_{i<n} (c + i + 1)
    samples = [ProfileSample(c, n, a * n + b * fpk * keys(c, n)) for c, n in pairs]
    tm = fit_time_model(spec, samples)
    assert tm.flops_per_key == fpk and tm.layers == spec.n_layers
    np.testing.assert_allclose([tm.seconds_per_token, tm.seconds_per_flop], [a, b], rtol=1e-6)
    # time_s: the attention of all layers (what the compute quota bounds, as the simulator's);
    # forward_s: the whole forward; layer_s: one layer of it
    np.testing.assert_allclose(tm.time_s(1024, 64), spec.n_layers * b * fpk * keys(1024, 64), rtol=1e-6)
    np.testing.assert_allclose(tm.forward_s(1024, 64), spec.n_layers * (a * 64 + b * fpk * keys(1024, 64)),
                               rtol=1e-6)
    np.testing.assert_allclose(tm.layer_s(1024, 64), a * 64 + b * fpk * keys(1024, 64), rtol=1e-6)
    # a negative per-token fit is clipped to a non-negative model
    samples = [ProfileSample(c, n, 1e-10 * fpk * keys(c, n) - 1e-7 * n) for c, n in pairs]
    tm = fit_time_model(spec, samples)
    assert tm.seconds_per_token >= 0 and tm.seconds_per_flop > 0
    with pytest.raises(ValueError, match="samples"):
        fit_time_model(spec, samples[:1])


def test_fit_time_model_weighs_every_shape_alike():
    """Relative errors: one large shape that runs 3x slower than the rest's rates (a CPU's cache
    falling short) does not drag the typical shapes' predictions 2-3x off, as it does under
    absolute least squares."""
    spec = get_spec("tiny-gqa")
    fpk = 4 * spec.n_heads * spec.head_dim
    a, b = 2e-6, 5e-11
    keys = lambda c, n: (2 * c + n + 1) * n / 2  # noqa: E731
    small = [(0, 64), (1024, 64), (2048, 128), (3008, 32), (1024, 512)]
    samples = [ProfileSample(c, n, a * n + b * fpk * keys(c, n)) for c, n in small]
    samples.append(ProfileSample(2048, 1024, 3 * (a * 1024 + b * fpk * keys(2048, 1024))))
    tm = fit_time_model(spec, samples)
    ratios = [tm.layer_s(s.cached, s.bsz) / s.layer_s for s in samples[:-1]]
    assert all(0.8 < r < 1.25 for r in ratios), ratios
    assert tm.layer_s(2048, 1024) < samples[-1].layer_s  # the outlier is under-predicted instead


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_thread_cpu_s_splits_a_process_cpu_by_kind_of_thread():
    """CPU a Python thread burns counts as python, one a native library named (here via
    pthread_setname_np) as native, and a large matmul puts CPU on XLA's pool threads; the kinds add
    up to the process total; a process that is gone counts nothing; threads given as a process's
    XLA threads count as xla."""
    import ctypes
    import threading
    import time

    from dualpath_jax.engine.profile import thread_cpu_s

    libc = ctypes.CDLL(None)

    def burn(seconds, name, burned, hold):
        if name:
            libc.pthread_setname_np(ctypes.c_void_p(threading.current_thread().ident), name.encode())
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass
        burned.set()
        hold.wait()  # alive (and named) until read

    me = [os.getpid()]
    for name, kind in ((None, "python"), ("native_tst", "native")):
        burned, hold = threading.Event(), threading.Event()
        before = thread_cpu_s(me)
        th = threading.Thread(target=burn, args=(0.4, name, burned, hold))
        th.start()
        assert burned.wait(60)
        after = thread_cpu_s(me)
        hold.set()
        th.join()
        assert after[kind] - before[kind] >= 0.35, (kind, before, after)
    m = jax.jit(lambda x: x @ x)
    x = jnp.ones((1200, 1200), jnp.float32)
    m(x).block_until_ready()
    before = thread_cpu_s(me)
    for _ in range(8):
        m(x).block_until_ready()
    after = thread_cpu_s(me)
    if (os.cpu_count() or 1) > 1:
        assert after["xla"] - before["xla"] > 0.05, (before, after)
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    now = thread_cpu_s(me)
    assert abs(sum(now.values()) - total) < 0.05  # every CPU-second once (to a tick of reading apart)
    gone = 2 ** 22 + 12345  # above Linux's default pid_max of 4194304
    assert thread_cpu_s([gone]) == {"xla": 0.0, "native": 0.0, "python": 0.0}
    burned, hold = threading.Event(), threading.Event()
    th = threading.Thread(target=burn, args=(0.3, None, burned, hold))
    th.start()
    assert burned.wait(60)
    plain, told = thread_cpu_s(me), thread_cpu_s(me, {os.getpid(): [th.native_id]})
    hold.set()
    th.join()
    assert told["xla"] - plain["xla"] >= 0.25 and plain["python"] - told["python"] >= 0.25, (plain, told)


_BACKEND_THREADS_SCRIPT = """
import json, os, time
import jax, jax.numpy as jnp
from dualpath_jax.engine.profile import start_backends, thread_cpu_s
tids = start_backends()
assert start_backends() == tids  # the first call's finding
me = [os.getpid()]
m = jax.jit(lambda x: x @ x)
x = jnp.ones((1500, 1500), jnp.float32)
m(x).block_until_ready()
c0, k0 = time.process_time(), thread_cpu_s(me, {os.getpid(): tids})
for _ in range(12):
    m(x).block_until_ready()
c1, k1 = time.process_time(), thread_cpu_s(me, {os.getpid(): tids})
print(json.dumps({"tids": len(tids), "cpu": c1 - c0, "xla": k1["xla"] - k0["xla"],
                  "python": k1["python"] - k0["python"]}))
"""


def test_start_backends_after_the_backend_started_says_so(monkeypatch):
    from dualpath_jax.engine import profile

    jax.devices()
    monkeypatch.setattr(profile, "_BACKEND_THREADS", None)  # (not called yet)
    with pytest.warns(RuntimeWarning, match="already started"):
        assert profile.start_backends() == frozenset()
    assert profile.start_backends() == frozenset()  # (once)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_start_backends_finds_the_threads_xla_computes_on():
    # defect: XLA's CPU client runs computations on threads that inherit the process's name, so
    # by name alone their CPU-seconds counted as Python's
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _BACKEND_THREADS_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tids"] > 0
    # the main thread only waits for the matmuls: nearly all of their CPU-seconds are XLA's
    assert got["cpu"] > 0.2 and got["xla"] >= 0.8 * got["cpu"] and got["python"] <= 0.2 * got["cpu"], got

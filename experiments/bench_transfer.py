"""Cross-process KV transport benchmark: JAX transfer-server pulls vs an in-process copy.

    python experiments/bench_transfer.py --workdir=workdir/bench_transfer

Spawns a second process holding a :class:`~dualpath_jax.transfer.remote.KVTransferEndpoint`
(multiprocessing ``spawn``; the control channel is a pipe, the bytes go through the transfer
server), which offers arrays; this process pulls them, one pull at a time, and in the same run,
side by side, copies the same bytes inside the process. Sizes: one Layer Block
``uint8[1, Z, Bt]`` of ``--model``/``--kv_dtype`` (the engine's default, tiny-gqa f32: 16 KiB,
PAPER.md section 2.2), ``--sizes`` (64 KiB, 1 MiB, 16 MiB by default, each an array
``uint8[1, Z, size / Z]``), and ``--blocks_per_pull`` Layer Blocks in one pull (a request's
Layer Blocks of one layer offered together). In-process references, per size: ``np.copyto``
into a preallocated array (memcpy) and ``jnp.array(x, copy=True)`` of the numpy array
(a host-to-device copy on CPU; ``jax.device_put`` is not used because on CPU it may alias the
numpy memory, even with ``may_alias=False``, and then copies nothing).

Each repeat times, per size, ``pulls`` sequential pulls (the offers made beforehand) and the
same number of copies of each kind, the order of pulls and copies alternating between repeats;
every ratio is per repeat (paired), reported as the median with min..max over repeats. Every
first pull of a size is checked byte for byte against the sender's data. The machine's other
load moves absolute numbers; the ratios are what to compare.

Writes ``env.json``, ``config.json`` (the flags) and ``metrics.json`` to the workdir and ends with
``name: value`` lines, the headline figures, each also in ``metrics.json`` under the same name with
the same value (4 significant digits): ``transfer_server_over_memcpy`` (pull throughput over memcpy
throughput at the Layer Block size), ``transfer_server_over_memcpy_16mib`` (the same at 16 MiB, when
measured), per case (``layer_block``, each size as ``64kib``, ``1mib``, ..., and
``layer_blocks_x<n>``) ``pull_gb_per_s_<case>`` and ``memcpy_gb_per_s_<case>`` (GB/s),
``pull_latency_us_layer_block`` (microseconds per pull), every one the median over repeats with
``_min``/``_max`` its spread; then ``cross_process_kv_bytes`` (bytes pulled across the process
boundary), ``num_failed_pulls``, ``bytes_exact`` and ``bench_wall_s``. ``metrics.json`` also holds
the full-precision per-case figures in base units (``pull_bytes_per_s_<case>``,
``memcpy_bytes_per_s_<case>``, ``jnp_copy_bytes_per_s_<case>``, ``pull_latency_s_<case>``,
``transfer_server_over_memcpy_<case>``, ...). A figure that is not a number prints as ``nan`` and
is ``null`` in ``metrics.json``. A bad flag stops the run with one line naming it before the
second process starts. About 20-40 s on a 2-core CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time

import numpy as np
from absl import flags, logging

from dualpath_jax.metrics.writers import significant
from dualpath_jax.studies import cli

_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_transfer",
                               "Output directory (new or empty; --overwrite replaces an earlier run).")
_MODEL = flags.DEFINE_string("model", "tiny-gqa", "Model preset whose Layer Block size is benchmarked "
                             "(the engine's default model).")
_KV_DTYPE = flags.DEFINE_string("kv_dtype", "f32", "Stored KV dtype of the Layer Block (the engine's default).")
_SIZES = flags.DEFINE_list("sizes", ["65536", "1048576", "16777216"],
                           "Further array sizes in bytes (multiples of the block's Z tokens).")
_BLOCKS_PER_PULL = flags.DEFINE_integer("blocks_per_pull", 64,
                                        "Layer Blocks offered and pulled together in the batched case (0: skip).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Paired repeats (median and min..max reported).")
_BYTES_PER_REPEAT = flags.DEFINE_integer("bytes_per_repeat", 32 << 20,
                                         "Bytes pulled per size and repeat (pulls = this / size, clamped).")
_MIN_PULLS = flags.DEFINE_integer("min_pulls", 3, "Fewest pulls per size and repeat.")
_MAX_PULLS = flags.DEFINE_integer("max_pulls", 200, "Most pulls per size and repeat.")
_PARALLEL_COPIES = flags.DEFINE_integer("max_num_parallel_copies", 8,
                                        "Transfer server: parallel copies per transfer (both ends).")
_TRANSFER_SIZE = flags.DEFINE_integer("transfer_size", 256 << 20, "Transfer server: chunk size in bytes.")
_TIMEOUT = flags.DEFINE_float("pull_timeout_s", 60.0, "Longest wait of one pull, seconds.")


def _payload(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The sender's bytes for one case (the receiver regenerates them to check the pulls)."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _sender(conn, parallel_copies: int, transfer_size: int) -> None:
    """The second process: an endpoint that offers what it is asked to, until told to stop.

    Messages: ``(shapes, seed, count)`` -> ``count`` offers of the same arrays (one per shape,
    bytes from ``_payload``), or ``None`` -> reply with the endpoint's stats and exit.
    """
    import jax

    from dualpath_jax.transfer.remote import KVTransferEndpoint

    endpoint = KVTransferEndpoint("sender", max_num_parallel_copies=parallel_copies, transfer_size=transfer_size)
    conn.send(endpoint.address)
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send(endpoint.stats())
            return
        shapes, seed, count = msg
        arrays = [jax.device_put(_payload(s, seed + i)) for i, s in enumerate(shapes)]
        conn.send([endpoint.offer(arrays, tag=f"seed{seed}") for _ in range(count)])


def _label(num_bytes: int) -> str:
    for unit, shift in (("mib", 20), ("kib", 10)):
        if num_bytes % (1 << shift) == 0:
            return f"{num_bytes >> shift}{unit}"
    return f"{num_bytes}b"


def _spread(named: dict, name: str, values: list[float], scale: float = 1.0) -> None:
    """Headline ``name``: the median of ``values`` times ``scale``, with ``name_min`` and ``name_max``."""
    named[name] = significant(scale * statistics.median(values), 4)
    named[f"{name}_min"] = significant(scale * min(values), 4)
    named[f"{name}_max"] = significant(scale * max(values), 4)


def _time(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax
    import jax.numpy as jnp

    from dualpath_jax.config import ConfigError, check_positive
    from dualpath_jax.kvcache import layout_for
    from dualpath_jax.metrics import writers
    from dualpath_jax.model import get_spec
    from dualpath_jax.transfer.remote import KVTransferEndpoint

    # every flag checked before the second process starts, each error naming its flag
    try:
        spec = get_spec(_MODEL.value)
    except ConfigError as e:  # (named model.name by the presets)
        raise ConfigError("model", e.message) from e
    layout = layout_for(spec, _KV_DTYPE.value)
    z = layout.block_tokens
    check_positive("max_num_parallel_copies", _PARALLEL_COPIES.value, integer=True)
    check_positive("transfer_size", _TRANSFER_SIZE.value, integer=True)
    check_positive("pull_timeout_s", _TIMEOUT.value)
    for name, value in (("repeats", _REPEATS.value), ("bytes_per_repeat", _BYTES_PER_REPEAT.value),
                        ("min_pulls", _MIN_PULLS.value), ("max_pulls", _MAX_PULLS.value)):
        if value <= 0:
            raise ConfigError(name, f"must be > 0 (got {value})")
    if _BLOCKS_PER_PULL.value < 0:
        raise ConfigError("blocks_per_pull", f"must be >= 0 (got {_BLOCKS_PER_PULL.value})")
    if _MIN_PULLS.value > _MAX_PULLS.value:
        raise ConfigError("min_pulls", f"must be <= max_pulls ({_MIN_PULLS.value} > {_MAX_PULLS.value})")
    # cases: label -> shapes of the arrays of one offer
    cases: dict[str, list[tuple[int, ...]]] = {"layer_block": [layout.layer_block_shape]}
    for text in _SIZES.value:
        try:
            size = int(text)
        except ValueError:
            raise ConfigError("sizes", f"not an integer byte count: {text!r}") from None
        if size <= 0 or size % z:
            raise ConfigError("sizes", f"{size} is not a positive multiple of Z={z}")
        cases[_label(size)] = [(1, z, size // z)]
    if _BLOCKS_PER_PULL.value:
        cases[f"layer_blocks_x{_BLOCKS_PER_PULL.value}"] = [layout.layer_block_shape] * _BLOCKS_PER_PULL.value

    workdir = str(cli.open_workdir(_WORKDIR.value))
    flag_values = {h.name: h.value for h in (_MODEL, _KV_DTYPE, _SIZES, _BLOCKS_PER_PULL, _REPEATS, _BYTES_PER_REPEAT,
                                              _MIN_PULLS, _MAX_PULLS, _PARALLEL_COPIES, _TRANSFER_SIZE, _TIMEOUT)}
    writers.write_json(os.path.join(workdir, "config.json"), flag_values)
    writers.write_env(workdir, device=f"{jax.default_backend()} x {jax.device_count()}")
    t_start = time.perf_counter()

    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_sender, args=(child_conn, _PARALLEL_COPIES.value, _TRANSFER_SIZE.value), daemon=True)
    proc.start()
    receiver = KVTransferEndpoint("receiver", pull_timeout_s=_TIMEOUT.value,
                                  max_num_parallel_copies=_PARALLEL_COPIES.value, transfer_size=_TRANSFER_SIZE.value)
    try:
        if not conn.poll(120):
            raise RuntimeError("the sender process did not start within 120 s")
        conn.recv()  # its address travels in every offer
        rows: dict[str, list[dict[str, float]]] = {label: [] for label in cases}
        exact = True
        plan = {}
        for seed, (label, shapes) in enumerate(cases.items()):
            nbytes = sum(int(np.prod(s)) for s in shapes)
            pulls = int(min(max(_BYTES_PER_REPEAT.value // nbytes, _MIN_PULLS.value), _MAX_PULLS.value))
            conn.send((shapes, 1000 * seed, 1 + pulls * _REPEATS.value))
            offers = conn.recv()
            # warm-up pull (the first on a connection and size allocates), checked byte for byte
            got = receiver.pull_offer(offers[0])
            exact &= all(np.array_equal(np.asarray(g), _payload(s, 1000 * seed + i))
                         for i, (g, s) in enumerate(zip(got, shapes)))
            plan[label] = (shapes, nbytes, pulls, offers[1:])
        for rep in range(_REPEATS.value):
            for label, (shapes, nbytes, pulls, offers) in plan.items():
                mine = iter(offers[rep * pulls:(rep + 1) * pulls])
                src = [_payload(s, 7) for s in shapes]
                dst = [np.empty_like(a) for a in src]
                kinds = {
                    "pull": lambda: receiver.pull_offer(next(mine)),
                    "memcpy": lambda: [np.copyto(d, s) for d, s in zip(dst, src)],
                    "jnp_copy": lambda: jax.block_until_ready([jnp.array(s, copy=True) for s in src]),
                }
                order = list(kinds) if rep % 2 == 0 else list(reversed(kinds))
                seconds = {kind: _time(kinds[kind], pulls) for kind in order}
                rows[label].append({kind: pulls * nbytes / s for kind, s in seconds.items()}
                                   | {"pull_latency_s": seconds["pull"] / pulls})
        conn.send(None)
        sender_stats = conn.recv() if conn.poll(30) else None
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join()

    metrics: dict[str, object] = {"layer_block_bytes": float(layout.layer_block_bytes),
                                  "layer_block_shape": list(layout.layer_block_shape)}
    print(f"\ncross-process pulls (JAX transfer server, {jax.default_backend()}) vs in-process copies; "
          f"Layer Block of {layout.model_name}/{layout.kv_dtype} = {layout.layer_block_bytes} B; "
          f"median (min..max) over {_REPEATS.value} repeats, GB/s")
    print(f"    {'case':22s} {'bytes':>10s} {'pulls':>6s} {'pull':>7s} {'latency':>9s} {'memcpy':>7s} "
          f"{'jnp copy':>8s} {'pull/memcpy':>22s} {'pull/jnp copy':>13s}")
    for label, (shapes, nbytes, pulls, _) in plan.items():
        r = rows[label]
        med = {k: statistics.median(x[k] for x in r) for k in r[0]}
        ratios = [x["pull"] / x["memcpy"] for x in r]
        ratios_jnp = [x["pull"] / x["jnp_copy"] for x in r]
        metrics.update({
            f"pull_bytes_per_s_{label}": med["pull"], f"memcpy_bytes_per_s_{label}": med["memcpy"],
            f"jnp_copy_bytes_per_s_{label}": med["jnp_copy"], f"pull_latency_s_{label}": med["pull_latency_s"],
            f"transfer_server_over_memcpy_{label}": statistics.median(ratios),
            f"transfer_server_over_memcpy_{label}_min": min(ratios),
            f"transfer_server_over_memcpy_{label}_max": max(ratios),
            f"transfer_server_over_jnp_copy_{label}": statistics.median(ratios_jnp),
            f"case_bytes_{label}": float(nbytes), f"pulls_per_repeat_{label}": float(pulls),
        })
        print(f"    {label:22s} {nbytes:10d} {pulls:6d} {med['pull'] / 1e9:7.3f} {1e6 * med['pull_latency_s']:7.0f}us "
              f"{med['memcpy'] / 1e9:7.2f} {med['jnp_copy'] / 1e9:8.2f} "
              f"{statistics.median(ratios):8.4f} ({min(ratios):.4f}..{max(ratios):.4f}) "
              f"{statistics.median(ratios_jnp):13.4f}")
    stats = receiver.stats()
    # the headline figures: printed as the output's last lines and written to metrics.json, the same
    # names and values (4 significant digits), every measured figure with its spread over the repeats
    named: dict[str, object] = {}
    for label in ["layer_block"] + (["16mib"] if "16mib" in plan else []):
        name = "transfer_server_over_memcpy" + ("" if label == "layer_block" else f"_{label}")
        _spread(named, name, [x["pull"] / x["memcpy"] for x in rows[label]])
    for label in plan:
        _spread(named, f"pull_gb_per_s_{label}", [x["pull"] for x in rows[label]], 1e-9)
        _spread(named, f"memcpy_gb_per_s_{label}", [x["memcpy"] for x in rows[label]], 1e-9)
    _spread(named, "pull_latency_us_layer_block", [x["pull_latency_s"] for x in rows["layer_block"]], 1e6)
    named["cross_process_kv_bytes"] = stats.bytes_pulled
    named["num_failed_pulls"] = stats.num_failed
    named["bytes_exact"] = bool(exact)
    named["bench_wall_s"] = significant(time.perf_counter() - t_start, 4)
    metrics["sender_bytes_offered"] = sender_stats.bytes_offered if sender_stats is not None else -1
    metrics["num_pulls"] = stats.num_pulled
    metrics.update(named)
    writers.write_json(os.path.join(workdir, "metrics.json"), metrics)
    print()
    print(writers.format_named_values(named))


if __name__ == "__main__":
    cli.run(main)

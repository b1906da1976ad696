"""From a :class:`~dualpath_jax.engine.result.ClusterResult` to the paper's metrics and checks.

* :func:`request_table`: the run's requests as a metrics ``RequestTable`` (a ``split`` read is
  labelled by the side that read more of its bytes; exact per-side bytes stay in
  :func:`request_rows`).
* :func:`summarize`: JCT, TTFT p50/p99, TTST, TPOT, bytes and busy time per SNIC, SNIC Max/Avg
  (paper Fig. 13 metric over ``window_s`` windows), per-engine compute seconds, failures.
* :func:`conservation`: bytes the store returned to reads = bytes the SNIC read links carried +
  bytes read without a link (``oracle``) + bytes read after a failed block and dropped; and the
  SNIC bytes = the requests' per-side read bytes (of every attempt: one that failed and ran again
  read too).
* :func:`check_tokens`: every variant's greedy tokens against each other and against a plain
  no-cache recompute (:func:`dualpath_jax.engine.compute.reference_greedy`), tie-aware: a
  mismatch counts as a near-tie when the reference's top-1 logit exceeds the logit of the token
  actually produced by less than ``tie_tol`` (float rounding of two correct computations can
  flip such a choice); any other mismatch is a real divergence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from dualpath_jax.engine.result import ClusterResult
from dualpath_jax.engine.compute import reference_greedy
from dualpath_jax.metrics import latency
from dualpath_jax.metrics.records import RequestTable, TransferTable
from dualpath_jax.metrics.traffic import storage_nic_max_avg
from dualpath_jax.model.spec import ModelSpec

__all__ = ["request_table", "request_rows", "summarize", "conservation", "check_tokens", "forward_rows"]


def _side(r) -> str:
    if r.read_bytes_pe + r.read_bytes_de == 0:
        return "none"
    return "de" if r.read_bytes_de >= r.read_bytes_pe else "pe"


def request_table(result: ClusterResult) -> RequestTable:
    """Every request (finished or failed) as a :class:`~dualpath_jax.metrics.RequestTable`."""
    rs = result.requests
    col = lambda f: [f(r) for r in rs]  # noqa: E731
    return RequestTable(
        trajectory_id=col(lambda r: r.trajectory_id), round_index=col(lambda r: r.round_index),
        arrival_s=col(lambda r: r.arrival_s), prefill_start_s=col(lambda r: r.prefill_start_s),
        prefill_finish_s=col(lambda r: r.prefill_finish_s), first_token_s=col(lambda r: r.first_token_s),
        second_token_s=col(lambda r: r.second_token_s), finish_s=col(lambda r: r.finish_s),
        num_gen_tokens=col(lambda r: len(r.generated) if not r.error else r.gen_target),
        num_hit_tokens=col(lambda r: r.hit_tokens), num_append_tokens=col(lambda r: r.prompt_tokens - r.hit_tokens),
        pe=col(lambda r: r.pe), de=col(lambda r: r.de), read_side=col(_side),
        read_bytes=col(lambda r: r.read_bytes_pe + r.read_bytes_de), error=col(lambda r: r.error))


def request_rows(result: ClusterResult) -> list[dict]:
    """Per-request JSON rows: placement, plan, hit, bytes per side, times, tokens and logit gaps."""
    return [{"rid": r.rid, "trajectory_id": r.trajectory_id, "round": r.round_index, "attempt": r.attempt,
             "pe": r.pe, "de": r.de,
             "plan_side": r.side, "de_blocks": r.de_blocks, "lookup_blocks": r.lookup_blocks,
             "hit_tokens": r.hit_tokens, "prompt_tokens": r.prompt_tokens, "gen_tokens": r.gen_target,
             "read_bytes_pe": r.read_bytes_pe, "read_bytes_de": r.read_bytes_de,
             "read_failures": [f.cause.value for f in r.read_failures], "blocks_persisted": r.blocks_persisted,
             "persist_failures": [_failure_name(f) for f in r.persist_failures],
             "arrival_s": r.arrival_s, "attempt_s": r.attempt_s, "placed_s": r.placed_s, "read_done_s": r.read_done_s,
             "prefill_start_s": r.prefill_start_s, "first_token_s": r.first_token_s,
             "decode_start_s": r.decode_start_s, "second_token_s": r.second_token_s, "finish_s": r.finish_s,
             "persisted_s": r.persisted_s, "error": r.error, "tokens": list(r.generated),
             "gaps": [float(g) for g in r.gaps]} for r in result.requests]


def _failure_name(failure) -> str:
    """A persist failure as text: the store's cause (``"unwritable"``, ``"timeout"``...) or the
    transfer error's message."""
    cause = getattr(failure, "cause", None)
    return cause.value if cause is not None else str(failure)


def forward_rows(result: ClusterResult) -> dict:
    """The engine's measured costs for calibrating the simulator: PE forwards (engine, (cached,
    bsz) pairs, wall/compute/load-wait seconds), DE steps, per-engine compute seconds, per-DE
    join seconds and counts."""
    return {
        "pe_forwards": [{"engine": f.engine, "items": [{"rid": i[0], "cached": i[1], "bsz": i[2]} for i in f.items],
                         "start_s": f.start_s, "wall_s": f.wall_s, "compute_s": f.compute_s,
                         "load_wait_s": f.load_wait_s, "loaded_bytes": f.loaded_bytes} for f in result.forwards],
        "de_steps": [{"engine": s.engine, "start_s": s.start_s, "wall_s": s.wall_s, "batch": s.batch,
                      "context_tokens": s.context_tokens} for s in result.steps],
        "compute_s": dict(result.compute_s),
        "de_join_s": dict(result.join_s),
        "de_join_count": dict(result.join_count),
    }


def _snic_links(result: ClusterResult) -> list[str]:
    return sorted(k for k in result.links if k.startswith("snic_read/"))


def summarize(result: ClusterResult, *, window_s: float = 1.0) -> dict:
    """Headline metrics of one run (see module docstring); times in seconds, bytes in bytes."""
    t = request_table(result)
    ttft, ttst, tpot = latency.ttft_s(t), latency.ttst_s(t), latency.tpot_s(t)
    snic = _snic_links(result)
    out = {
        "jct_s": latency.jct_s(t, start_s=0.0),
        "num_requests": int(len(t)), "num_failed": int(np.sum(~t.ok)),
        "failures": sorted({str(e) for e in t.error if e}),
        "ttft_mean_s": latency.summarize(ttft, "mean"), "ttft_p50_s": latency.summarize(ttft, "p50"),
        "ttft_p99_s": latency.summarize(ttft, "p99"), "ttst_mean_s": latency.summarize(ttst, "mean"),
        "tpot_s": latency.summarize(tpot, "mean"), "tpot_p99_s": latency.summarize(tpot, "p99"),
        "snic_bytes": {k.split("/", 1)[1]: result.links[k]["bytes"] for k in snic},
        "snic_busy_s": {k.split("/", 1)[1]: result.links[k]["busy_s"] for k in snic},
        "snic_write_bytes": {k.split("/", 1)[1]: v["bytes"] for k, v in result.links.items()
                             if k.startswith("snic_write/")},
        "cnic_bytes": {k: v["bytes"] for k, v in result.links.items() if k.startswith("cnic_")},
        "compute_s": dict(result.compute_s),
        "hit_tokens": int(np.sum(t.num_hit_tokens)), "append_tokens": int(np.sum(t.num_append_tokens)),
        "gen_tokens": int(sum(len(r.generated) for r in result.requests)),
        "read_sides": {s: int(np.sum(t.read_side == s)) for s in ("pe", "de", "none")},
        "read_failures": int(sum(len(r.read_failures) for r in result.requests)),
        "persist_failures": int(sum(len(r.persist_failures) for r in result.requests)),
        "pe_forwards": len(result.forwards), "de_steps": len(result.steps),
        "attempts_run_again": len(result.failed_attempts), "worker_errors": len(result.worker_errors),
        "faults_injected": dict(result.faults),
        "wall_s": result.wall_s, "alpha_tokens": result.alpha_tokens, "beta_tokens": result.beta_tokens,
    }
    reads = [r for r in result.transfers if r.link in snic and r.outcome.value == "ok"]
    if reads:
        tt = TransferTable.from_records(reads)
        _, ratio = storage_nic_max_avg(tt, snic, window_s, start_s=0.0, end_s=max(out["jct_s"], 1e-9))
        out["snic_max_avg_mean"] = float(np.nanmean(ratio)) if np.any(~np.isnan(ratio)) else math.nan
    else:
        out["snic_max_avg_mean"] = math.nan
    out.update(conservation(result))
    return out


def conservation(result: ClusterResult) -> dict:
    """Byte accounting of reads (see module docstring); ``bytes_conserved`` is the check."""
    snic = sum(result.links[k]["bytes"] for k in _snic_links(result))
    # every attempt's reads: one that failed and ran again read through the SNIC too
    per_request = sum(r.read_bytes_pe + r.read_bytes_de for r in (*result.requests, *result.failed_attempts))
    accounted = snic + result.bypass_read_bytes + result.discarded_read_bytes
    return {"read_bytes_store": int(result.read_bytes_store), "read_bytes_snic": int(snic),
            "read_bytes_requests": int(per_request), "read_bytes_bypass": int(result.bypass_read_bytes),
            "read_bytes_discarded": int(result.discarded_read_bytes),
            "bytes_conserved": bool(accounted == result.read_bytes_store and per_request == snic)}


def check_tokens(results: Mapping[str, ClusterResult], params: dict, spec: ModelSpec, *, tie_tol: float = 1e-4,
                 reference: str | None = None, chunk_tokens: int | None = None) -> dict:
    """Compare generated tokens across variants and with a no-cache recompute (module docstring).

    Args:
      results: variant name -> result (same workload).
      reference: the variant whose tokens every other one is compared with (default: the first).
      chunk_tokens: recompute in chunks of this many tokens (see ``reference_greedy``); None =
        one no-cache forward per request.

    Returns:
      ``{"tokens_identical": bool (exactly equal everywhere and equal to the recompute),
      "tokens_identical_tie_aware": bool, "compared_requests": int, "reference_checked_tokens": int,
      "reference_mismatches": [...], "variant_divergences": [...]}``; every mismatch lists the
      variant, request, position, the two tokens and the reference's top-1/top-2 gap and margin.
    """
    names = list(results)
    base = reference or names[0]
    by_key = {n: {(r.trajectory_id, r.round_index): r for r in results[n].requests if not r.error} for n in names}
    cache: dict = {}

    def ref(r):
        key = (r.trajectory_id, r.round_index, tuple(r.generated))
        if key not in cache:
            cache[key] = reference_greedy(params, spec, r.prompt, np.asarray(r.generated, np.int32),
                                          forced=r.forced, chunk_tokens=chunk_tokens)
        return cache[key]

    ref_mismatch, divergences, checked = [], [], 0
    common = set.intersection(*(set(v) for v in by_key.values())) if by_key else set()
    for n in names:
        for key in sorted(by_key[n]):
            r = by_key[n][key]
            b = by_key[base].get(key)
            if n != base and b is not None and list(b.generated) == list(r.generated):
                continue  # identical to the reference variant: its recompute check covers it
            toks, gaps, margin = ref(r)
            checked += len(toks)
            for i in np.flatnonzero(toks != np.asarray(r.generated)):
                ref_mismatch.append({"variant": n, "request": list(key), "position": int(i),
                                     "engine_token": int(r.generated[i]), "reference_token": int(toks[i]),
                                     "reference_top2_gap": float(gaps[i]), "margin": float(margin[i]),
                                     "near_tie": bool(margin[i] < tie_tol)})
            if n != base and b is not None:
                a, c = list(b.generated), list(r.generated)
                i = next((j for j in range(min(len(a), len(c))) if a[j] != c[j]), min(len(a), len(c)))
                gap = float(gaps[i]) if i < len(gaps) else math.nan
                divergences.append({"variant": n, "request": list(key), "position": i, "tokens": [
                    a[i] if i < len(a) else None, c[i] if i < len(c) else None], "reference_top2_gap": gap,
                    "near_tie": bool(i < len(gaps) and gap < tie_tol)})
    missing = sum(len(set(v) - common) for v in by_key.values())
    identical = not ref_mismatch and not divergences and missing == 0
    tie_ok = missing == 0 and all(m["near_tie"] for m in ref_mismatch) and all(d["near_tie"] for d in divergences)
    return {"tokens_identical": bool(identical), "tokens_identical_tie_aware": bool(tie_ok),
            "compared_requests": len(common), "requests_missing_in_some_variant": int(missing),
            "reference_checked_tokens": int(checked), "reference_mismatches": ref_mismatch,
            "variant_divergences": divergences, "tie_tol": tie_tol}

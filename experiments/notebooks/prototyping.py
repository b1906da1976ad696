# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Prototyping with dualpath_jax
#
# 1. Build the tiny GQA model and fill a tensorstore KV store with a conversation's KV.
# 2. Run a layer-wise prefill with double-buffered loading over a rate-limited link and look at
#    how loading overlaps computation (versus `depth=1` and `full` prefill).
# 3. Write a new read-side policy in a few lines and run it through the cluster simulator
#    against DualPath's, then plot the result.
#
# Everything here calls the library; the notebook holds no logic of its own.
#
# Needs the `notebook` extra: `pip install -e '.[notebook]'` (Jupyter, nbconvert, jupytext), then
# `jupyter lab experiments/notebooks/prototyping.ipynb`, or run it headless with
# `jupyter nbconvert --to notebook --execute --output /tmp/prototyping.ipynb experiments/notebooks/prototyping.ipynb`.
# This notebook is paired with `prototyping.py` by jupytext: edit either and run `jupytext --sync`.

# %%
import jax
import numpy as np

from dualpath_jax.engine import PrefillConfig, PrefillEngine, PrefillRequest, store_layout
from dualpath_jax.model import forward, get_spec, init_params
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.transfer import Link, LinkConfig, Medium

spec = get_spec("tiny-gqa").replace(name="nb-gqa", n_layers=8, d_model=128, d_ff=256)
params = init_params(spec, jax.random.PRNGKey(0))
tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (640,), 0, spec.vocab_size), np.int32)
layout = store_layout(spec, params)  # keys scoped to this spec and these weights (their fingerprint)
print(spec.name, "layers", spec.n_layers, "| Full Block", layout.full_block_bytes, "B | Layer Block",
      layout.layer_block_bytes, "B")

# %% [markdown]
# Turn 1 computes the first 577 tokens and writes the nine complete 64-token Full Blocks among
# them (576 tokens) to the store. Turn 2 is all 640 tokens: its 576 hit tokens are read from the
# store, layer by layer, and the other 64 are computed.
# `PrefillEngine` runs the same prefill path (`dualpath_jax.engine.PrefillPath`) as the PE
# workers of the engine cluster: load a layer's KV, compute the layer, hand its KV on.

# %%
store = KVStore(layout, StoreConfig(backend="memory"))
PrefillEngine(params, spec, store).run([PrefillRequest("turn1", tokens[:577])])
print("blocks written:", store.stats().writes_ok, "| bytes:", store.stats().write_bytes)

# %%
reference = np.asarray(forward(params, spec, tokens))


def prefill(mode: str, depth: int, h2d_bytes_per_s: float | None):
    h2d = Link(LinkConfig("h2d", Medium.PE_BUFFER, Medium.PE_HBM, rate_bytes_per_s=h2d_bytes_per_s))
    engine = PrefillEngine(params, spec, store, h2d_link=h2d,
                           config=PrefillConfig(mode=mode, depth=depth, write_back=False))
    (res,), report = engine.run([PrefillRequest("turn2", tokens)])
    err = float(np.max(np.abs(np.asarray(res.logits) - reference[res.hit_tokens:])))
    return report, err


# calibrate the link so loading one layer takes about as long as computing it
prefill("layerwise", 2, None)  # compiles the layer function
report, _ = prefill("layerwise", 2, None)
per_layer_bytes = report.h2d_bytes / spec.n_layers
rate = per_layer_bytes / max(report.compute_s / spec.n_layers, 1e-4)
rows = []
for mode, depth in (("layerwise", 2), ("layerwise", 1), ("full", 1)):
    report, err = prefill(mode, depth, rate)
    rows.append((mode, depth, report.wall_s, report.compute_s, report.load_wait_s, report.kv_device_peak_bytes, err))
    print(f"{mode:9s} depth={depth}  wall {report.wall_s:.3f}s  compute {report.compute_s:.3f}s  "
          f"waiting for KV {report.load_wait_s:.3f}s  KV peak {report.kv_device_peak_bytes / 1e6:.2f} MB  "
          f"max|logit err| {err:.1e}")

# %% [markdown]
# With `depth=2` (double buffering) the next layer's KV loads while this layer computes, so the
# time spent waiting for KV is shorter than with `depth=1`, which loads each layer only once the
# previous one is done (how much shorter depends on the host's timing). Layer-wise prefill holds
# at most `depth` layers' KV on the device (the KV peaks: one or two layers' worth at `depth=2`,
# as the next layer's load lands before or after this layer's KV is dropped), while `full` holds
# all L = 8 layers' KV at once. The peaks count the device arrays, whose block dimension is padded
# to a power of two (nine hit blocks take sixteen), so one layer shows more than its nine blocks.
#
# ## A new read-side policy in the simulator
#
# The scheduler decides which storage NIC reads a request's hit KV in `read_plan`. Here is a
# policy that reads on the DE side whenever the DE node's queue is less than twice the PE node's
# (a bias toward the otherwise idle decode-side SNICs).

# %%
from dualpath_jax.sched import ClusterScheduler, ReadPlan
from dualpath_jax.sim import HardwareConfig, SimConfig
from dualpath_jax.studies import paper_workload, run_offline


class PreferDE(ClusterScheduler):
    def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
        if self.config.loading != "dual" or hit_blocks == 0:
            return super().read_plan(req, pe_node, de_node, read_q, hit_blocks, block_tokens)
        side = "de" if read_q.get(de_node, 0.0) < 2 * read_q.get(pe_node, 0.0) + 1 else "pe"
        return ReadPlan(side, hit_blocks if side == "de" else 0)


# 64 agents on a 1P2D DS 27B cluster whose SNICs are slowed to 4 GB/s, so that storage is the
# bottleneck at this small scale (the paper's regime, reached there with thousands of agents)
workload = paper_workload("64K", num_agents=64, seed=0)
base = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=2, hardware=HardwareConfig(snic_bytes_per_s=4e9))
results = run_offline(base, workload, ["basic", "dualpath", "oracle"])
results["prefer_de"] = run_offline(base, workload, ["dualpath"], scheduler_cls=PreferDE)["dualpath"]
for name, r in results.items():
    pe_bytes = r["snic_bytes"]["snic_read[0]"]
    de_bytes = sum(v for k, v in r["snic_bytes"].items() if k != "snic_read[0]")
    print(f"{name:10s} JCT {r['jct_s']:8.1f} s   PE SNIC {pe_bytes / 1e12:6.2f} TB   DE SNICs {de_bytes / 1e12:6.2f} TB")

# %%
import matplotlib.pyplot as plt

names = list(results)
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(names, [results[n]["jct_s"] for n in names])
ax.set_ylabel("JCT (s)")
ax.set_title("DS 27B, 1P2D, 64 agents, MAL 64K, 4 GB/s SNICs")
fig.tight_layout()

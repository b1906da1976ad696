"""Run the engine ablation: real model, real KV through store, buffers and emulated links.

    python experiments/run_engine.py --workdir=workdir/engine
    python experiments/run_engine.py --config=configs/engine_ablation.py:quick --workdir=/tmp/engine
    python experiments/run_engine.py --print_config        # every field with its type, default and meaning

The config (default ``configs/engine_ablation.py``) names the agents, the emulated cluster and
the variants; its docstring lists the outputs. Override fields with ``--config.<field>=<value>``
(e.g. ``--config.workload.num_agents=8``; a link rate such as
``--config.cluster.snic_bytes_per_s=5e6`` needs ``--config.calibrate.load_over_oracle=0``, since
calibration sets the rates otherwise); ``--config.scheduler=pkg.module:Class`` runs every variant
with that ClusterScheduler subclass (importable, e.g. with ``PYTHONPATH=.``). The output ends with
``name: value`` lines, also written to ``workdir/metrics.json``.

One engine per JAX device: on a CPU host the device count is forced (``XLA_FLAGS``) to the
cluster's engine count before JAX is imported.

The workdir must be new or empty (``--overwrite`` replaces an earlier run's); its ``status.json``
says ``running``, then ``finished`` or ``failed``. A bad field or override ends the run with one
line on stderr naming it (``--verbose`` for the traceback) and exit status 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

_CONFIG_DEFAULT = str(Path(__file__).resolve().parent.parent / "configs" / "engine_ablation.py")


if __name__ == "__main__":
    from dualpath_jax.studies.cli import force_host_devices  # (imports no JAX)

    force_host_devices(sys.argv[1:], _CONFIG_DEFAULT)

from absl import flags, logging  # noqa: E402

from dualpath_jax.studies import cli  # noqa: E402  (imports no JAX)

_CONFIG = cli.define_config_file(
    "config", _CONFIG_DEFAULT, "Engine ablation config (configs/engine_ablation.py); append :quick or :big for the "
    "variants its docstring describes; override fields with --config.<field>=<value> "
    "(e.g. --config.workload.num_agents=8); --print_config lists every field.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
_JIT_CACHE = flags.DEFINE_string(
    "jit_cache_dir",
    os.environ.get("DUALPATH_JIT_CACHE", os.path.join(tempfile.gettempdir(), "dualpath_jax_jit_cache")),
    "Persistent XLA compilation cache (reruns skip compilation); empty to disable.")
_PROGRESS = flags.DEFINE_enum(
    "progress", "auto", ["auto", "on", "off"],
    "Progress bars on stderr (stages with elapsed time and ETA; the current run's requests with rate and ETA). "
    "auto: only when stderr is a terminal.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend-probe INFO lines out of the output
    import jax

    from dualpath_jax.metrics import writers
    from dualpath_jax.config import overridden_fields
    from dualpath_jax.studies.engine_ablation import check_config, check_overrides, run_ablation
    from dualpath_jax.studies.seeds import printed

    cli.use_jit_cache(_JIT_CACHE.value)
    config = _CONFIG.value
    check_config(config)  # a bad field fails here, before the workdir is touched
    check_overrides(config, overridden_fields(sys.argv[1:]))  # an override the run would replace fails
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, config)
    writers.write_env(workdir, device=f"{jax.default_backend()} x {jax.device_count()} "
                                      f"({', '.join(str(d) for d in jax.devices())})")
    t0 = time.perf_counter()
    progress = None if _PROGRESS.value == "auto" else _PROGRESS.value == "on"
    named = run_ablation(config, workdir, log=lambda s: print(s, flush=True), progress=progress)
    named["wall_s"] = time.perf_counter() - t0
    writers.write_named_values(workdir, named)
    writers.append_metrics(workdir, {"experiment": "engine_ablation", **named})
    print()
    print(writers.format_named_values(printed(named)))


def _describe(config) -> str:
    from dualpath_jax.studies.engine_config import describe_engine_config  # (imports no JAX)
    return describe_engine_config(config)


if __name__ == "__main__":
    cli.run(main, config=_CONFIG, describe=_describe)

"""Recommend the P:D split, DRAM buffer, alpha/beta and compute quota for a workload.

    python experiments/advise.py --workdir=W                                   # configs/advise.py
    python experiments/advise.py --config=configs/advise.py:online --workdir=W
    python experiments/advise.py --config=configs/advise.py:validate --workers=2 --workdir=W
    python experiments/advise.py --config.model=qwen2.5-32b --config.nodes=4 --config.hardware.gpu=h200 --workdir=W

The advisor (``dualpath_jax.studies.advisor``) prunes the P:D splits with Eq. 9, searches them
coarse to fine, then the secondary knobs, in simulated runs (in parallel with ``--workers=N`` or
``--ray_address``). It writes ``advise.md/.csv`` (the recommendation with its 95% interval and the
runners-up), ``advise_runs.md/.csv`` (every configuration it simulated), ``advise.png`` (the
objective over P/D) and ``advise.json`` into the workdir, and ends its output with ``name: value``
lines (``recommended_*``, ``predicted_jct_s`` or ``predicted_max_aps`` with ``_ci95``,
``binding_resource``, ``advisor_runs``). With ``config.validate`` (``:validate``) it runs the
advisor and an exhaustive sweep of the same space on each named case, writes each case's outputs
into ``W/<case>/`` and ``validate.md/.csv``, and prints ``advisor_regret`` and
``advisor_run_fraction``. ``--print_config`` lists every field; a bad field ends the run with one
line naming it.
"""

from __future__ import annotations

import time

from absl import flags, logging

from dualpath_jax.metrics import writers
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies import RunCache, cli
from dualpath_jax.studies.advisor import advise
from dualpath_jax.studies.advisor_report import (advisor_config, describe_advisor_config, validate, validation_cases,
                                                 write_advice)
from dualpath_jax.studies.seeds import printed

_CONFIG = cli.define_config_file("config", "configs/advise.py", "Advisor config file (configs/advise.py; "
                                 ":online, :validate or :tiny for the variants its docstring describes); override "
                                 "any field with --config.<field>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
cli.define_sweep_flags()
cli.define_resume_flag()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    cases = validation_cases(config) if config.validate else None
    request = None if cases else advisor_config(config)  # every field checked before any run
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, config)
    writers.write_env(workdir, device="simulator (virtual time)")
    policies = {scheduler_name(c.scheduler) for c in (cases or [request])} - {""}
    if policies:
        print(f"scheduler {', '.join(sorted(policies))}", flush=True)
    t0 = time.perf_counter()
    cache = RunCache(max_entries=1 << 16, sweep=cli.sweep_from_flags(), store=cli.run_store(workdir))
    log = lambda s: print(s, flush=True)  # noqa: E731
    if cases:
        named = validate(cases, workdir, cache, log)
    else:
        advice = advise(request, cache, log)
        named = write_advice(workdir, advice)
        print()
        print(f"recommended: {advice.best.choice.label}")
        key = "predicted_jct_s" if request.objective == "jct" else "predicted_max_aps"
        print(f"predicted {request.objective}: {named[key]:.4g} {request.unit} (95% CI ± {named[key + '_ci95']:.2g}, "
              f"{len(advice.per_seed)} seed{'s' if len(advice.per_seed) > 1 else ''})")
        for i, e in enumerate(advice.runners_up):
            print(f"runner-up {i + 1}: {e.choice.label}: {e.objective:.4g} {request.unit} (first seed)")
        if named["runners_up_within_ci"]:
            print(f"{named['runners_up_within_ci']} runner(s)-up lie within the interval: the seeds' spread cannot "
                  "tell them from the recommendation")
        print(f"binding: {advice.why}")
    named["wall_s"] = time.perf_counter() - t0
    writers.write_named_values(workdir, named)
    writers.append_metrics(workdir, {"scheduler": ", ".join(sorted(policies)), **named})
    cli.report_resumed(cache, workdir)
    print()
    print(writers.format_named_values(printed(named)))


if __name__ == "__main__":
    cli.run(main, config=_CONFIG, describe=describe_advisor_config)

"""Table-2-style statistics (PAPER.md section 6.2) of a trace source.

Commands (from the repository root):
  python experiments/trace_stats.py --source=agentic [--max_files=N] [--subagents=separate|drop] [--traces_dir=DIR]
  python experiments/trace_stats.py --source=mooncake [--mooncake=conversation|synthetic|PATH]
  python experiments/trace_stats.py --source=synthetic --mal=64K [--seed=0] [--num_agents=500]

Runtime on one CPU core: all 609 agentic traces 10-40 s (the host's load), Mooncake about 3 s, synthetic < 1 s.

Output: a Markdown table of the statistics (for ``synthetic`` next to the paper's Table 2 with
the relative error), then ``name: value`` lines ending with ``turns_mean``, ``append_mean``,
``gen_mean``, ``context_mean``, ``hit_rate``. Files in ``--workdir`` (default
``./workdir/trace_stats/<source>[_<mal>|_<mooncake file>|_<traces_dir name>]``):
``trace_stats.json``, ``trace_stats.md``, ``metrics.json`` (the named values), ``config.json``
(the flags), ``env.json``, ``status.json``; the folder must be new or empty (``--overwrite``
replaces an earlier run's). A bad trace file ends the run with one line naming the file, request
and field (``--verbose`` for the traceback).
Definitions of every statistic: ``dualpath_jax/workload/stats.py``.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from dualpath_jax.config import ConfigError
from dualpath_jax.metrics import (format_named_values, markdown_table, write_config, write_env, write_json,
                                  write_named_values)
from dualpath_jax.studies import cli
from dualpath_jax.workload import TABLE2, load_source, trace_stats
from dualpath_jax.workload.agentic import trace_stem

_SOURCE = flags.DEFINE_enum("source", "synthetic", ["agentic", "mooncake", "synthetic"], "Trace source.")
_MAL = flags.DEFINE_enum("mal", "64K", ["32K", "48K", "64K"], "MAL of the synthetic dataset.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic generator.")
_NUM_AGENTS = flags.DEFINE_integer("num_agents", 500, "Synthetic agents (500 = the base trajectories).")
_MAX_FILES = flags.DEFINE_integer("max_files", 0, "Agentic: load only the first N files (0 = all).")
_MOONCAKE = flags.DEFINE_string("mooncake", "conversation", "Mooncake file: conversation, synthetic or a path.")
_MOONCAKE_BLOCK_TOKENS = flags.DEFINE_integer("mooncake_block_tokens", 512, "Mooncake: tokens per hash id (512 in "
                                              "Mooncake's traces).")
_SUBAGENTS = flags.DEFINE_enum("subagents", "separate", ["separate", "drop"], "Agentic sub-agent handling.")
_TRACES_DIR = flags.DEFINE_string("traces_dir", "", "Agentic: the folder of *.json.gz / *.json trace files, or one "
                                  "trace file (default: the shared agentic_traces/, or "
                                  "$DUALPATH_DATA_DIR/agentic_traces).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Output folder (default "
                                "./workdir/trace_stats/<source>[_<mal>|_<file>|_<traces_dir name>]).")

_APPLIES_TO = {"mal": "synthetic", "seed": "synthetic", "num_agents": "synthetic", "max_files": "agentic",
               "subagents": "agentic", "traces_dir": "agentic", "mooncake": "mooncake",
               "mooncake_block_tokens": "mooncake"}
_HEADLINE = ("turns_mean", "append_mean", "gen_mean", "context_mean", "hit_rate")
_TABLE2_FIELDS = {"turns_mean": "turns", "append_mean": "append", "gen_mean": "gen", "total_mean": "total",
                  "context_mean": "context"}


def main(argv):
    del argv
    source = _SOURCE.value
    if _MAX_FILES.value < 0:
        raise ConfigError("max_files", f"must be >= 0 (0 = every file; got {_MAX_FILES.value})")
    if _MOONCAKE_BLOCK_TOKENS.value < 1:
        raise ConfigError("mooncake_block_tokens", f"must be >= 1 (got {_MOONCAKE_BLOCK_TOKENS.value})")
    for flag, owner in _APPLIES_TO.items():  # a flag of another source would be ignored: say so
        if flags.FLAGS[flag].present and owner != source:
            raise ConfigError(flag, f"applies to --source={owner}; this run reads --source={source}")
    tag = {"synthetic": f"synthetic_{_MAL.value}", "mooncake": f"mooncake_{trace_stem(Path(_MOONCAKE.value))}",
           "agentic": f"agentic_{trace_stem(Path(_TRACES_DIR.value))}" if _TRACES_DIR.value else "agentic"}[source]
    workdir = cli.open_workdir(_WORKDIR.value or Path("workdir") / "trace_stats" / tag)
    config = {"source": source, "mal": _MAL.value, "seed": _SEED.value, "num_agents": _NUM_AGENTS.value,
              "max_files": _MAX_FILES.value, "mooncake": _MOONCAKE.value, "subagents": _SUBAGENTS.value,
              "traces_dir": _TRACES_DIR.value, "mooncake_block_tokens": _MOONCAKE_BLOCK_TOKENS.value}
    write_config(workdir, config)
    write_env(workdir)

    try:
        trajectories = load_source(source, mal=_MAL.value, seed=_SEED.value, num_agents=_NUM_AGENTS.value,
                                   max_files=_MAX_FILES.value or None, mooncake=_MOONCAKE.value,
                                   subagents=_SUBAGENTS.value, traces_dir=_TRACES_DIR.value,
                                   mooncake_block_tokens=_MOONCAKE_BLOCK_TOKENS.value)
    except FileNotFoundError as e:  # no trace file where the flags point
        raise ConfigError("traces_dir" if source == "agentic" else source, str(e)) from None
    stats = trace_stats(trajectories).as_dict()

    rows = []
    paper = TABLE2[_MAL.value] if source == "synthetic" else None
    for name, value in stats.items():
        row = {"statistic": name, "value": value}
        if paper is not None and name in _TABLE2_FIELDS:
            ref = getattr(paper, _TABLE2_FIELDS[name])
            row.update({"table2": ref, "rel_error": value / ref - 1.0})
        rows.append(row)
    columns = ["statistic", "value"] + (["table2", "rel_error"] if paper is not None else [])
    title = f"trace_stats: {tag} ({trajectories.source})"
    table = markdown_table(rows, columns)
    (workdir / "trace_stats.md").write_text(f"# {title}\n\n{table}")
    write_json(workdir / "trace_stats.json", {"source": source, "config": config, "stats": stats,
                                              "table2": paper})
    named = {k: v for k, v in stats.items() if k not in _HEADLINE}
    if paper is not None:
        named.update({f"{k}_rel_error_vs_table2": r["rel_error"] for k, r in
                      ((r["statistic"], r) for r in rows) if "rel_error" in r})
    named.update({k: stats[k] for k in _HEADLINE})
    write_named_values(workdir, named)
    print(f"# {title}\n")
    print(table)
    print(format_named_values(named))


if __name__ == "__main__":
    cli.run(main)

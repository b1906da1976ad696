"""Metrics: the record vocabulary engine and simulator write, metric math, and run artifacts.

Pure numpy + stdlib (matplotlib only inside :func:`plot_lines`); never imports the engine,
simulator or scheduler.

* :mod:`.records`  :class:`RequestRecord`, :class:`TransferRecord`, :class:`AttentionRecord` and
  their columnar tables.
* :mod:`.latency`  JCT, TTFT, TTST, TPOT, trajectory completion time, SLO and max APS search.
* :mod:`.traffic`  bytes per link over windows, storage-NIC Max/Avg, bytes per path, link
  utilisation, attention-time Max/Avg.
* :mod:`.stats`    mean of repeats with a Student-t confidence interval.
* :mod:`.writers`  ``config.json``, ``env.json``, ``metrics.jsonl``, Markdown/CSV tables, PNG plots.
"""

from dualpath_jax.metrics.latency import (SLO, ApsTrial, MaxApsResult, evaluate_slo, jct_s, latency_summary,
                                          max_aps_under_slo, summarize, tpot_s, trajectory_completion_s, ttft_s,
                                          ttst_s)
from dualpath_jax.metrics.records import (READ_SIDES, AttentionRecord, RequestRecord, RequestTable, TransferRecord,
                                          TransferTable, as_request_table, as_transfer_table)
from dualpath_jax.metrics.stats import mean_ci, t_quantile
from dualpath_jax.metrics.traffic import (WindowedTraffic, attention_max_avg, bytes_per_link, bytes_per_path,
                                          cumulative_bytes, link_bytes_in_windows, link_utilization, max_avg_ratio,
                                          storage_nic_max_avg)
from dualpath_jax.metrics.writers import (append_metrics, collect_env, format_named_values, markdown_table,
                                          plot_lines, read_metrics, to_jsonable, write_config, write_env,
                                          write_json, write_named_values, write_table)

__all__ = [
    "READ_SIDES", "RequestRecord", "RequestTable", "TransferRecord", "TransferTable", "AttentionRecord",
    "as_request_table", "as_transfer_table",
    "ttft_s", "ttst_s", "tpot_s", "jct_s", "trajectory_completion_s", "summarize", "latency_summary",
    "SLO", "evaluate_slo", "ApsTrial", "MaxApsResult", "max_aps_under_slo",
    "WindowedTraffic", "cumulative_bytes", "link_bytes_in_windows", "max_avg_ratio", "storage_nic_max_avg",
    "bytes_per_path", "bytes_per_link", "link_utilization", "attention_max_avg",
    "to_jsonable", "write_json", "write_config", "collect_env", "write_env", "append_metrics", "read_metrics",
    "markdown_table", "write_table", "plot_lines", "format_named_values", "write_named_values",
    "mean_ci", "t_quantile",
]

"""Knobs declared once: the switches and scheduler knobs of both runtimes come from SchedKnobs, and
the config files derive their defaults from the dataclasses."""

import dataclasses
import pathlib
import subprocess
import sys

import pytest

from dualpath_jax.config import ConfigError, overridden_fields
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.sched.knobs import KNOB_FIELDS, SchedKnobs
from dualpath_jax.sim.config import SimConfig, sim_config_dict

from config_files import config_module

ROOT = pathlib.Path(__file__).resolve().parent.parent




@pytest.mark.parametrize("cls", [SimConfig, ClusterConfig])
def test_both_runtimes_take_the_knobs_from_one_dataclass(cls):
    assert issubclass(cls, SchedKnobs)
    own = {f.name: f for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(SchedKnobs):
        assert own[f.name].default == f.default  # not re-declared with another default
    # a knob's error names the runtime's field
    prefix = cls.field_prefix
    with pytest.raises(ConfigError, match=f"^{prefix}fetch_period_s: must be > 0"):
        cls(fetch_period_s=0.0)
    with pytest.raises(ConfigError, match=f"^{prefix}z_factor: must be finite"):
        cls(z_factor=float("nan"))
    with pytest.raises(ConfigError, match=f"^{prefix}z_factor: must be >= 1"):
        cls(z_factor=0.9)


def test_sim_config_files_carry_every_knob_at_its_default():
    sim = sim_config_dict()
    for name in KNOB_FIELDS:
        assert sim[name] == getattr(SchedKnobs(), name)


def test_engine_config_file_derives_from_cluster_config():
    cluster = config_module("engine_ablation").get_config(None).cluster.to_dict()
    defaults = dataclasses.asdict(ClusterConfig())
    differ = {k for k, v in cluster.items() if v != defaults[k]}
    # the runtime-specific choices the file makes on purpose (each with its reason in the file)
    assert differ == {"fetch_period_s", "basic_max_batch_tokens"}
    # the switches come from each variant, not from `cluster`
    assert set(defaults) - set(cluster) == {"loading", "prefill", "policy"}


def test_engine_config_file_loads_no_jax():
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('c', 'configs/engine_ablation.py');"
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); m.get_config('quick');"
            "assert 'jax' not in sys.modules, 'jax loaded'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_calibrated_link_rate_override_is_rejected_with_what_to_change():
    from dualpath_jax.studies.engine_ablation import check_overrides

    config = config_module("engine_ablation").get_config("quick")
    argv = ["--config=configs/engine_ablation.py:quick", "--config.cluster.snic_bytes_per_s=5e6",
            "--workdir", "w"]
    assert overridden_fields(argv) == ["cluster.snic_bytes_per_s"]
    with pytest.raises(ConfigError, match=r"^cluster.snic_bytes_per_s: .*--config.calibrate.load_over_oracle=0"):
        check_overrides(config, overridden_fields(argv))
    config.calibrate.load_over_oracle = 0.0
    check_overrides(config, overridden_fields(argv))  # with calibration off the rate is used as given
    check_overrides(config_module("engine_ablation").get_config("quick"), ["cluster.max_decode_batch"])


FLOAT_KNOBS = [f.name for f in dataclasses.fields(SchedKnobs) if f.type in (float, "float")]


@pytest.mark.parametrize("cls", [SimConfig, ClusterConfig])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, True, "3"])
def test_every_float_knob_rejects_non_finite_and_out_of_range_values_by_its_name(cls, value):
    assert set(FLOAT_KNOBS) == {"alpha_s", "beta_s", "z_factor", "compute_quota_s", "fetch_period_s"}
    for name in FLOAT_KNOBS:
        with pytest.raises(ConfigError) as e:
            cls(**{name: value})
        assert e.value.field == cls.field_prefix + name  # "sim." / "cluster.", never "sched."
    for name in ("basic_max_batch_tokens", "layerwise_depth"):
        with pytest.raises(ConfigError, match=f"^{cls.field_prefix}{name}: "):
            cls(**{name: 2.5})

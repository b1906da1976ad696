"""Load the committed config files (``configs/<name>.py``) the way ``--config`` does."""

import importlib.util
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_module(name):
    """The module of ``configs/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(name, arg=None):
    """``get_config(arg)`` of ``configs/<name>.py`` (a ConfigDict)."""
    return config_module(name).get_config(arg)


def load_sim_config(study, arg="tiny"):
    """The config of ``configs/sim_<study>.py`` (the tiny variant by default)."""
    return get_config(f"sim_{study}", arg)


def engine_config(arg="quick", **overrides):
    """``configs/engine_ablation.py``'s config (the quick variant by default) with ``overrides``,
    dotted field -> value (``engine_config(**{"workload.num_agents": 9})``)."""
    config = get_config("engine_ablation", arg)
    for path, value in overrides.items():
        node = config
        *head, leaf = path.split(".")
        for part in head:
            node = node[part]
        node[leaf] = value
    return config

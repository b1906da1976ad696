"""Session-wide fixtures: one local Ray instance for every test that needs Ray.

The Ray tests carry ``pytest.mark.xdist_group("ray")`` and the suite runs with ``--dist
loadgroup`` (pyproject), so under ``pytest -n 2`` they all run in one worker and share this
instance (started once, about 5 s)."""

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """The ``ray`` module, connected to a local instance of 2 CPUs and no GPU (started here if needed)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        from dualpath_jax.raylaunch import local_temp_dir
        temp = local_temp_dir()  # (a long TMPDIR: Ray's socket names would not fit)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,  # the same on GPU hosts
                 **({"_temp_dir": temp} if temp else {}))
    yield ray
    if started:
        ray.shutdown()

"""Ctrl-C and SIGTERM during a study whose runs go to Ray: the script ends at once with the
signal's status (130 / 143) and one line, its workdir marked failed, and a script that runs
several studies stops instead of carrying on with the next."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _signal_while_runs_go(tmp_path, args, signum, *, group=False):
    """Start ``args`` with ``--workers=2``, send ``signum`` 5 s after Ray started (to the script's
    whole process group with ``group``, as a terminal's Ctrl-C does); returns (exit status,
    stderr, seconds from the signal to the exit, workdir)."""
    workdir, err_path = tmp_path / "w", tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, *args, f"--workdir={workdir}", "--workers=2"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=group)
    try:
        deadline = time.monotonic() + 120
        while "Started a local Ray instance" not in err_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(5.0)  # the runs are going
        assert proc.poll() is None
        t0 = time.monotonic()
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(timeout=60)
        return proc.returncode, err_path.read_text(), time.monotonic() - t0, workdir
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_ray_sweep_at_once_with_its_status(tmp_path, signum):
    args = ["experiments/run_sim.py", "--config=configs/sim_ablation.py:quick", "--config.seeds=1"]
    code, err, seconds, workdir = _signal_while_runs_go(tmp_path, args, signum)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err[-2000:]
    assert err.strip().splitlines()[-1] == f"Interrupted: {name}"
    assert "Traceback" not in err
    assert seconds < 30  # the runs still going are cancelled, not waited for
    status = json.loads((workdir / "status.json").read_text())
    assert (status["status"], status["error"]) == ("failed", f"Interrupted: {name}")


def test_ctrl_c_stops_every_study_of_reproduce_paper(tmp_path):
    args = ["experiments/reproduce_paper.py", "--quick", "--seeds=1", "--studies=ablation,pd_sweep"]
    code, err, seconds, workdir = _signal_while_runs_go(tmp_path, args, signal.SIGINT, group=True)
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "Interrupted: SIGINT"
    assert not (workdir / "pd_sweep").exists()  # the next study did not start

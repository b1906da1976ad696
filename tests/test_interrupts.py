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


_OWN_CONNECTION = """
import _thread, os, signal, sys, threading, time
import ray
from dualpath_jax.studies.sweep import Sweep

# a child inherits ignored signals (a test run started in the background by a non-interactive shell
# ignores SIGINT), and then interrupt_main does nothing
signal.signal(signal.SIGINT, signal.default_int_handler)

class Sleeps:  # pickled by value (defined in __main__)
    def __init__(self, folder):
        self.folder = folder

    def __call__(self, x):
        import os, time
        open(os.path.join(self.folder, str(os.getpid())), "w").close()
        time.sleep(x)
        return x

def interrupt_when_both_run(folder):  # Ctrl-C once both runs are going
    while len(os.listdir(folder)) < 2:
        time.sleep(0.1)
    _thread.interrupt_main()

def _running(pid):  # neither gone nor a zombie
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

class FailsOnceTheOtherRuns(Sleeps):  # run 0 raises once run 60 is going
    def __call__(self, x):
        import os, time
        if x == 0:
            deadline = time.monotonic() + 60
            while not os.listdir(self.folder) and time.monotonic() < deadline:
                time.sleep(0.05)
            raise ValueError("bad run")
        return super().__call__(x)

def report_stopped(folder):
    deadline = time.monotonic() + 30
    pids = [int(name) for name in os.listdir(folder)]
    while time.monotonic() < deadline:
        if not [pid for pid in pids if _running(pid)]:
            print(f"workers stopped: {len(pids)}", flush=True)
            return
        time.sleep(0.2)

folder = sys.argv[1]
threading.Thread(target=interrupt_when_both_run, args=(folder,), daemon=True).start()
try:
    Sweep(workers=2).map(Sleeps(folder), [60, 60])
except KeyboardInterrupt:
    print("connected" if ray.is_initialized() else "disconnected", flush=True)
report_stopped(folder)
errors = os.path.join(folder, "error")  # a run's error: the same (the next sweep connects again)
os.mkdir(errors)
try:
    Sweep(workers=2).map(FailsOnceTheOtherRuns(errors), [0, 60])
except ValueError as e:
    print(f"{e}: " + ("connected" if ray.is_initialized() else "disconnected"), flush=True)
report_stopped(errors)
"""


def test_ctrl_c_or_an_error_in_a_sweep_that_started_ray_ends_its_ray_job(tmp_path):
    # Ctrl-C, or a run's error, ends the connection the sweep made rather than cancelling runs one
    # by one, which can race Ray's own completion of a run and abort the process
    folder = tmp_path / "pids"
    folder.mkdir()
    out = subprocess.run([sys.executable, "-c", _OWN_CONNECTION, str(folder)], cwd=ROOT, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["disconnected", "workers stopped: 2", "bad run: disconnected",
                                       "workers stopped: 1"], out.stdout + out.stderr[-2000:]

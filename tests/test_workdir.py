"""Workdirs of the experiment scripts (dualpath_jax.studies.cli): a run never mixes with another,
says whether it finished (a signal included), and --resume continues one that stopped."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from script_runs import ABLATION_TINY, ROOT, SMALL, lines as _lines, run_script as _run

from dualpath_jax.config import ConfigError
from dualpath_jax.metrics import writers
from dualpath_jax.studies import cli


def _snapshot(directory):
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_second_run_into_the_same_workdir_leaves_the_first_unchanged(tmp_path):
    workdir = tmp_path / "w"
    first = _run("run_sim.py", ABLATION_TINY, *SMALL, f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((workdir / "status.json").read_text())["status"] == "finished"
    before = _snapshot(workdir)
    assert {"ablation.json", "config.json", "metrics.json", "metrics.jsonl", "status.json"} <= set(before)
    second = _run("run_sim.py", ABLATION_TINY, *SMALL, "--config.sim.beta_s=1", f"--workdir={workdir}")
    assert second.returncode == 1
    (line,) = _lines(second.stderr)
    assert line.startswith(f"ConfigError: workdir: {workdir} already holds a previous run (finished)")
    assert "--overwrite" in line
    assert _snapshot(workdir) == before  # every file of the first run, bytes and times
    third = _run("run_sim.py", ABLATION_TINY, *SMALL, "--config.sim.beta_s=1", "--overwrite", f"--workdir={workdir}")
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((workdir / "config.json").read_text())["sim"]["beta_s"] == 1.0
    # the config as given leaves the dtypes to the model; the resolved one says what ran (MLA: FP8 KV,
    # DeepSeek weights FP8 at H800's FP8 peak, PAPER.md Table 1 and section 6.1)
    assert json.loads((workdir / "config.json").read_text())["sim"]["kv_dtype"] is None
    resolved = json.loads((workdir / "sim_resolved.json").read_text())
    assert (resolved["model"], resolved["kv_dtype"], resolved["weight_dtype"]) == ("deepseek-v3.2", "fp8", "fp8")
    assert resolved["peak_flops"] == 1979e12 and resolved["beta_s"] == 1.0
    assert len(writers.read_metrics(workdir)) == 1  # replaced, not appended to


def test_prepare_workdir_refuses_files_and_replaces_only_a_run(tmp_path):
    assert writers.prepare_workdir(tmp_path / "new").is_dir()
    writers.prepare_workdir(tmp_path / "new")  # empty: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # not a run's workdir: never emptied
        with pytest.raises(ConfigError, match="^workdir: ") as e:
            writers.prepare_workdir(other, overwrite=overwrite)
        assert e.value.field == "workdir"
    assert (other / "notes.txt").read_text() == "mine"
    run = writers.prepare_workdir(tmp_path / "run")
    writers.write_status(run, "failed", error="ConfigError: x")
    (run / "sub").mkdir()
    (run / "sub" / "f").write_text("1")
    with pytest.raises(ConfigError, match=r"already holds a previous run \(failed\)"):
        writers.prepare_workdir(run)
    writers.prepare_workdir(run, overwrite=True)
    assert list(run.iterdir()) == []
    early = writers.prepare_workdir(tmp_path / "early")  # failed on bad input before its first output
    writers.write_json(early / "config.json", {"a": 1})
    writers.write_json(early / "env.json", {"b": 2})
    writers.write_status(early, "running")
    with pytest.raises(ConfigError, match=r"already holds a previous run \(running\)"):
        writers.prepare_workdir(early)  # it may be a run that is just starting: left alone
    writers.write_status(early, "failed", error="Interrupted: SIGINT")  # not bad input: kept
    with pytest.raises(ConfigError, match=r"already holds a previous run \(failed\)"):
        writers.prepare_workdir(early)
    writers.write_status(early, "failed", error="TraceFormatError: t.json.gz: truncated", input_error=True)
    assert writers.prepare_workdir(early) == early and list(early.iterdir()) == []
    for extra in ("metrics.json", "ablation.csv"):  # any output of the failed run: kept unless --overwrite
        writers.write_status(early, "failed", error="ConfigError: x", input_error=True)
        (early / extra).write_text("{}")
        with pytest.raises(ConfigError, match=r"already holds a previous run \(failed\)"):
            writers.prepare_workdir(early)
        (early / extra).unlink()
    with pytest.raises(ConfigError, match="is a file"):
        writers.prepare_workdir(other / "notes.txt")
    with pytest.raises(ConfigError, match="^workdir: cannot create .*notes.txt/sub"):  # a parent is a file
        writers.prepare_workdir(other / "notes.txt" / "sub")


@pytest.mark.parametrize("launcher", ["plain", "blocks_signals"])
@pytest.mark.parametrize("sig, name", [("TERM", "SIGTERM"), ("INT", "SIGINT")])
def test_a_run_stopped_by_a_signal_is_marked_failed_in_one_line(tmp_path, sig, name, launcher):
    # defect: a run started with SIGTERM blocked (as a CI runner started the test suite) slept on
    # through it: the handler was installed, the signal never delivered
    import select
    import signal
    import time
    script = tmp_path / "slow.py"
    script.write_text(
        "import sys, time\n"
        "from absl import flags\n"
        "from dualpath_jax.studies import cli\n"
        "W = flags.DEFINE_string('workdir', None, '')\n"
        "def main(argv):\n"
        "    cli.open_workdir(W.value)\n"
        "    print('started', flush=True)\n"
        "    time.sleep(60)\n"
        "cli.run(main)\n")
    # the child inherits the mask of the thread that starts it (no preexec_fn: forking this
    # multithreaded process to run Python in the child may deadlock)
    blocked = {signal.SIGINT, signal.SIGTERM} if launcher == "blocks_signals" else set()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        proc = subprocess.Popen([sys.executable, str(script), f"--workdir={tmp_path / 'w'}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the run did not start within 60 s"
        assert proc.stdout.readline().strip() == "started"
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    t0 = time.perf_counter()
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    out, err = proc.communicate(timeout=30)
    assert time.perf_counter() - t0 < 10  # not at the end of the sleep
    assert proc.returncode == 128 + getattr(signal, f"SIG{sig}")
    assert _lines(err) == [f"Interrupted: {name}"]
    status = writers.read_status(tmp_path / "w")
    assert (status["status"], status["error"]) == ("failed", f"Interrupted: {name}")


def test_crosscheck_refuses_an_engine_run_that_did_not_finish(tmp_path):
    engine = tmp_path / "engine"
    engine.mkdir()
    writers.write_status(engine, "failed", error="KeyboardInterrupt: ")
    done = _run("crosscheck_engine_sim.py", f"--engine_workdir={engine}", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert line.startswith(f"ConfigError: engine_workdir: the run in {engine} is failed")
    assert not (tmp_path / "w").exists()


# ---- --resume -------------------------------------------------------------------------------------
def test_resume_reads_back_the_runs_a_stopped_run_finished_and_gives_the_same_figures(tmp_path):
    policy = tmp_path / "crashing.py"
    policy.write_text(
        "import os\n"
        "from dualpath_jax.sched import ClusterScheduler\n"
        "class CrashOnDualPath(ClusterScheduler):  # the built-in policy, but a dualpath run dies with CRASH set\n"
        "    def select_pe(self, group_id, waiting, loads, read_q):\n"
        "        if os.environ.get('CRASH') and self.config.policy == 'dualpath':\n"
        "            raise MemoryError('the machine ran out of memory')\n"
        "        return super().select_pe(group_id, waiting, loads, read_q)\n")
    args = (ABLATION_TINY, *SMALL, "--config.scheduler=crashing:CrashOnDualPath")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(*extra, crash=False):
        return subprocess.run([sys.executable, str(ROOT / "experiments" / "run_sim.py"), *args, *extra], cwd=ROOT,
                              env={**env, "CRASH": "1"} if crash else env, capture_output=True, text=True,
                              timeout=300)

    fresh = run(f"--workdir={tmp_path / 'fresh'}")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert not (tmp_path / "fresh" / cli.RUN_STORE).exists()  # a finished run keeps nothing to resume
    stopped = tmp_path / "stopped"
    crashed = run(f"--workdir={stopped}", crash=True)
    assert crashed.returncode != 0 and "MemoryError" in crashed.stderr
    assert writers.read_status(stopped)["status"] == "failed"
    kept = len(list((stopped / cli.RUN_STORE).glob("*.pkl")))
    assert kept >= 1  # the Basic runs ended before a DualPath run died

    other = run(f"--workdir={stopped}", "--resume", "--config.sim.beta_s=1")
    assert other.returncode == 1 and _lines(other.stderr)[-1].startswith(
        "ConfigError: workdir: --resume continues the stopped run's command")
    resumed = run(f"--workdir={stopped}", "--resume", "--workers=1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed: {kept} finished run(s) read back from {stopped / cli.RUN_STORE}" in resumed.stdout
    drop = {"wall_s", "wall_s_ci95", "wall_s_lo", "wall_s_hi"}
    figures = [{k: v for k, v in json.loads((w / "metrics.json").read_text()).items() if k not in drop}
               for w in (tmp_path / "fresh", stopped)]
    assert figures[0] == figures[1]
    assert writers.read_status(stopped)["status"] == "finished" and not (stopped / cli.RUN_STORE).exists()
    again = run(f"--workdir={stopped}", "--resume")
    assert again.returncode == 1 and _lines(again.stderr) == [
        f"ConfigError: workdir: {stopped} holds a finished run: nothing to resume (drop --resume and pass "
        f"--overwrite to replace it)"]


def _wait_running(process, command, timeout_s=30.0):
    """Until ``process`` runs ``command`` (before its exec, /proc shows the parent's command line)."""
    deadline = time.monotonic() + timeout_s
    while not cli._alive(process.pid, command) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_resume_compares_commands_as_the_runs_would_differ_and_refuses_a_live_run(tmp_path, monkeypatch):
    same = cli._same_run
    assert same(["experiments/run_sim.py", "--config=c.py", "--workers", "2", "--workdir", "w"]) == same(
        ["/abs/experiments/run_sim.py", "--resume", f"--workdir={pathlib.Path('w').resolve()}", "--config", "c.py"])
    assert same(["run_sim.py", "--config=c.py"]) != same(["run_sim.py", "--config=c.py", "--config.sim.beta_s=1"])
    assert same(["run_sim.py", "--verbose", "--config=c.py"]) == same(["run_sim.py", "--config=c.py"])
    workdir = tmp_path / "w"
    workdir.mkdir()
    monkeypatch.setattr(sys, "argv", ["run_sim.py", f"--workdir={workdir}"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *sys.argv])  # as the run's process
    try:
        _wait_running(live, sys.argv)
        writers.write_status(workdir, "running", command=list(sys.argv), pid=live.pid, host=cli.socket.gethostname())
        with pytest.raises(ConfigError, match=r"run is still running \(process \d+\): stop it first"):
            cli._resumable(workdir)
    finally:
        live.kill()
        live.wait(timeout=30)
    writers.write_status(workdir, "running", command=list(sys.argv), pid=2**22 + 12345, host=cli.socket.gethostname())
    assert cli._resumable(workdir)  # its process is gone (killed): resumable
    writers.write_status(workdir, "running", command=list(sys.argv), pid=1, host=cli.socket.gethostname())
    assert cli._resumable(workdir)  # its pid now runs something else
    writers.write_status(workdir, "failed", command=["run_sim.py", "--other"], input_error=True)
    assert not cli._resumable(workdir)  # it stopped on bad input before any run: a new run replaces it
    writers.write_status(workdir, "finished", command=list(sys.argv))
    assert not cli._resumable(workdir, overwrite=True)  # --resume --overwrite: a new run replaces it


def test_overwrite_never_replaces_a_live_run_and_an_unwritable_workdir_is_one_error(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "metrics.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["run_sim.py", f"--workdir={workdir}"])
    monkeypatch.setattr(cli, "_opened", [])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *sys.argv])  # as the run's process
    try:
        _wait_running(live, sys.argv)
        writers.write_status(workdir, "running", command=list(sys.argv), pid=live.pid, host=cli.socket.gethostname())
        before = _snapshot(workdir)
        with pytest.raises(ConfigError, match=rf"workdir: {workdir}'s run is still running \(process {live.pid}\)"):
            cli.open_workdir(workdir, overwrite=True)
        assert _snapshot(workdir) == before  # the live run's files, untouched
    finally:
        live.kill()
        live.wait(timeout=30)
    assert cli.open_workdir(workdir, overwrite=True) == workdir  # its process is gone: --overwrite replaces it
    assert not (workdir / "metrics.json").exists() and writers.read_status(workdir)["pid"] == os.getpid()

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "status.json.tmp"))

    monkeypatch.setattr(writers, "write_status", refused)  # as a directory this process may not write to
    denied = r"^workdir: cannot write to .*ro: Permission denied \(.*status\.json\.tmp\)$"
    with pytest.raises(ConfigError, match=denied) as e:
        cli.open_workdir(tmp_path / "ro")
    assert e.value.field == "workdir"


def test_a_workdir_another_process_holds_is_refused_before_anything_is_read_or_removed(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "metrics.json").write_text("{}")
    writers.write_status(workdir, "finished", command=["run_sim.py"])  # as a run's: --overwrite would empty it
    monkeypatch.setattr(cli, "_opened", [])
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(workdir)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # (a run opening it, emptying it or running in it)
        before = _snapshot(workdir)
        with pytest.raises(ConfigError, match=rf"^workdir: {workdir} is in use by another run"):
            cli.open_workdir(workdir, overwrite=True)
        assert _snapshot(workdir) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert cli.open_workdir(workdir, overwrite=True) == workdir and not (workdir / "metrics.json").exists()
    take = [sys.executable, "-c", f"import fcntl, os\nfd = os.open({str(workdir)!r}, os.O_RDONLY)\n"
                                  "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"]
    assert subprocess.run(take, capture_output=True, timeout=60).returncode != 0  # held while the run runs
    cli._finish("finished")  # its status written, the lock is released: another process may take it
    assert subprocess.run(take, timeout=60).returncode == 0 and writers.read_status(workdir)["status"] == "finished"

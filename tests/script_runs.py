"""What the tests that run the experiment scripts share: the repository root, a few-second
simulator ablation, and a run of a script with its output captured."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
ABLATION_TINY = f"--config={ROOT / 'configs' / 'sim_ablation.py'}:tiny"
SMALL = ("--config.num_agents=(8,)", "--config.variants=('basic','dualpath')")  # a run of a few seconds


def run_script(script, *args, timeout=300):
    """``experiments/<script>`` with ``args``, from the repository root; stdout and stderr as text."""
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def lines(text):
    """The lines of ``text`` that are not blank."""
    return [line for line in text.splitlines() if line.strip()]

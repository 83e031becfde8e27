"""Report section: the scheduling cost of an automatic round against a manual ``psy run -c``.

Needs a running Slurm (``bash scripts/local-slurm.sh start``); without one the
section reports why it was skipped. Run it with ``python benchmarks/report_rounds.py``.

One task, ``Param(x=range(4))`` in one process job, whose job crashes
(SIGKILL, as on a node that dies) at ``x == 1`` in round 1. Every call of
``execute`` writes the time it starts. The gap measured is from the crash
to the first row of the next round:

- automatic (``max_attempts = 2``): Slurm starts the merge job (``afterany``),
  which merges, asks Slurm why the job ended and submits round 2 (split,
  process, merge); the gap ends when round 2's process job runs its first row;
- manual (``max_attempts = 1``): a script polls ``squeue`` every 0.2 s until
  the task's jobs are gone or blocked, then runs ``psy run -c`` at once (a
  person would take longer); same end of the gap.

Both runs must end with every row in the result exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMEOUT = 180.0

TASK = """
import os
import signal
import sys
import time

from psyrun import Param, Slurm

TIMES = {times!r}
pspace = Param(x=list(range(4)))
max_jobs = 1
max_attempts = {attempts}
scheduler = Slurm()
scheduler_args = {{"timelimit": "5", "memory_per_cpu": "200M"}}
python = sys.executable


def execute(x):
    with open(TIMES, "a") as f:
        f.write(f"{{x}} {{os.environ.get('PSYRUN_ATTEMPT')}} {{time.time()}}\\n")
    if x == 1 and not os.path.exists(TIMES + ".crashed"):
        open(TIMES + ".crashed", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return {{"y": x * x}}
"""


def _psy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "psyrun.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _rows(times: Path) -> list[tuple[int, str, float]]:
    if not times.exists():
        return []
    out = []
    for line in times.read_text().split("\n"):
        if line.strip():
            x, attempt, t = line.split()
            out.append((int(x), attempt, float(t)))
    return out


def _queue_empty(tag_name: str) -> bool:
    proc = subprocess.run(
        ["squeue", "-h", "-o", "%j %t %r"], capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith(tag_name) and "DependencyNeverSatisfied" not in rest:
            return False
    return True


def measure(automatic: bool) -> float:
    """Return the seconds from the crash to round 2's first row."""
    root = Path(tempfile.mkdtemp(prefix="psyrun-rounds-"))
    try:
        times = root / "times.txt"
        tasks = root / "psy-tasks"
        tasks.mkdir()
        source = TASK.format(times=str(times), attempts=2 if automatic else 1)
        (tasks / "task_gap.py").write_text(source)
        proc = _psy("run", "gap", cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout + proc.stderr)
        deadline = time.monotonic() + TIMEOUT
        if not automatic:
            # Wait for the crash, then for the task's jobs to leave the queue.
            while not (times.parent / (times.name + ".crashed")).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("round 1 never crashed")
                time.sleep(0.05)
            while not _queue_empty("gap:"):
                if time.monotonic() > deadline:
                    raise RuntimeError("round 1's jobs stayed in the queue")
                time.sleep(0.2)
            proc = _psy("run", "-c", "gap", cwd=root)
            if proc.returncode != 0:
                raise RuntimeError(proc.stdout + proc.stderr)
        while True:
            rows = _rows(times)
            done = [x for x, _, _ in rows]
            if sorted(set(done)) == [0, 1, 2, 3] and _queue_empty("gap:"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sweep did not finish: {rows}")
            time.sleep(0.2)
        from psyrun.store.pickle import PickleStore

        result = PickleStore().load(str(root / "psy-work" / "gap" / "result.pkl"))
        if sorted(result["x"].tolist()) != [0, 1, 2, 3]:
            raise RuntimeError(f"rows not exactly once: {sorted(result['x'].tolist())}")
        crash = next(t for x, _, t in rows if x == 1)
        again = min(t for _, _, t in rows if t > crash)
        return again - crash
    finally:
        if _queue_empty("gap:"):
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from slurm_helpers import slurm_unavailable_reason

    reason = slurm_unavailable_reason()
    if reason is not None:
        print(f"rounds on Slurm: skipped ({reason})")
        return 0
    auto = measure(automatic=True)
    manual = measure(automatic=False)
    print("rounds on Slurm: from a crashed job to the first row of the next round")
    print(f"  automatic round (max_attempts = 2):      {auto:6.2f} s")
    print(f"  manual psy run -c (polled, no delay):    {manual:6.2f} s")
    print(f"  extra scheduling of the automatic round: {auto - manual:+6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whether a real Slurm answers here: the one check behind every Slurm test and report.

Used by ``test_slurm_live.py``, ``test_slurm_psy.py`` (``pytestmark =
slurm_marks()``: skipped, with the reason) and ``benchmarks/report_slurm.py``
(to report the section as skipped). pytest is imported only by
:func:`slurm_marks`, so the benchmark does not need it.
"""

from __future__ import annotations

import shutil
import subprocess


def slurm_unavailable_reason() -> str | None:
    """Return why Slurm cannot be used here, or None when it can."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (start a local cluster: bash scripts/local-slurm.sh start)"
    try:
        proc = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return one_line(f"scontrol ping failed: {e}")
    if "is UP" not in proc.stdout:
        said = one_line(proc.stdout.strip() or proc.stderr.strip() or "no output")
        return f"the Slurm controller does not answer: {said}"
    return None


def one_line(text: str, limit: int = 160) -> str:
    """`text` (a command's banner over several lines) as one short line, for a skip reason."""
    joined = " ".join(part.strip() for part in text.splitlines() if part.strip())
    joined = " ".join(joined.split())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def slurm_marks() -> list:
    """Return the marks of a test module that needs a real Slurm.

    ``slurm``, and a skip with the reason when :func:`slurm_unavailable_reason`
    finds that Slurm cannot be used here.
    """
    import pytest

    reason = slurm_unavailable_reason()
    # pytest prints the reason in its summary line: keep it one line.
    reason = None if reason is None else one_line(reason)
    return [pytest.mark.slurm, pytest.mark.skipif(reason is not None, reason=str(reason))]

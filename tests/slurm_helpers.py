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
        return f"scontrol ping failed: {e}"
    if "is UP" not in proc.stdout:
        return (
            f"the Slurm controller does not answer: {proc.stdout.strip() or proc.stderr.strip()}"
        )
    return None


def slurm_marks() -> list:
    """Return the marks of a test module that needs a real Slurm.

    ``slurm``, and a skip with the reason when :func:`slurm_unavailable_reason`
    finds that Slurm cannot be used here.
    """
    import pytest

    reason = slurm_unavailable_reason()
    return [pytest.mark.slurm, pytest.mark.skipif(reason is not None, reason=str(reason))]

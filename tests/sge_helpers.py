"""Whether a real Grid Engine answers here: the one check behind every test marked ``sge``.

Start one with ``bash scripts/local-sge.sh start``. pytest is imported only by
:func:`sge_marks`, so a benchmark script can use :func:`sge_unavailable_reason`.
"""

from __future__ import annotations

import shutil
import subprocess


def sge_unavailable_reason() -> str | None:
    """Return why Grid Engine cannot be used here, or None when it can."""
    if shutil.which("qsub") is None or shutil.which("qstat") is None:
        return "qsub is not installed (start a local Grid Engine: bash scripts/local-sge.sh start)"
    try:
        proc = subprocess.run(
            ["qstat", "-f"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"qstat failed: {e}"
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return f"the Grid Engine qmaster does not answer: {said[0] if said else 'no output'}"
    # A queue instance whose load is -NA- has no execd behind it: jobs would never start.
    lines = [line.split() for line in proc.stdout.splitlines() if "@" in line.split(" ", 1)[0]]
    if not any(len(f) >= 5 and f[3] != "-NA-" and len(f) == 5 for f in lines):
        return "no Grid Engine queue instance accepts jobs (qstat -f shows none without states)"
    return None


def sge_marks() -> list:
    """Return the marks of a test module that needs a real Grid Engine.

    ``sge``, and a skip with the reason when :func:`sge_unavailable_reason`
    finds that Grid Engine cannot be used here.
    """
    import pytest

    reason = sge_unavailable_reason()
    return [pytest.mark.sge, pytest.mark.skipif(reason is not None, reason=str(reason))]

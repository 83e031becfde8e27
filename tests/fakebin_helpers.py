"""The fake cluster commands of ``tests/fakebin``, as the scheduler tests drive them.

The scripts there (``sbatch``, ``squeue``, ``sqsub``, ...) log every call to a
JSON-lines file and answer with what a test scripted for them. The ``fake``
fixture (``conftest.py``) puts them first on ``PATH`` and returns a
:class:`FakeCluster` that reads the log and scripts the answers. The PBS
(``qsub``, ``qstat``, ``qdel``) and LSF (``bsub``, ``bjobs``, ``bkill``) fakes
live in subdirectories, put on ``PATH`` only by the ``fake_pbs`` and
``fake_lsf`` fixtures, so that a real (Grid Engine) ``qsub`` is never shadowed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

FAKEBIN = Path(__file__).parent / "fakebin"


class FakeCluster:
    """The state directory of the fake commands: their call log and scripted answers."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.log = directory / "calls.jsonl"

    def calls(self, prog: str | None = None) -> list[list[str]]:
        """Return the argv of every logged call (of `prog` only, when given), in order."""
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r["argv"] for r in records if prog is None or r["prog"] == prog]

    def stdins(self, prog: str) -> list[str]:
        """Return the job script given on stdin to every logged call of `prog`."""
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r.get("stdin", "") for r in records if r["prog"] == prog]

    def script(self, prog: str, out: str | None = None, err: str | None = None, rc: int = 0):
        """Make `prog` print `out` and `err` and exit with `rc` (None: its default)."""
        for ext, value in (("out", out), ("err", err), ("rc", str(rc))):
            path = self.dir / f"{prog}.{ext}"
            if value is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(value)


def start_fake_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str | None = None
) -> FakeCluster:
    """Put the fake commands first on ``PATH`` with a fresh state directory.

    `system` ``"pbs"`` or ``"lsf"`` adds that system's fakes (``tests/fakebin/<system>``).
    """
    d = tmp_path / "fake"
    d.mkdir()
    path = [str(FAKEBIN / system)] if system else []
    monkeypatch.setenv("PATH", os.pathsep.join([*path, str(FAKEBIN), os.environ["PATH"]]))
    monkeypatch.delenv("PSYRUN_FAKE_RUN", raising=False)
    monkeypatch.setenv("PSYRUN_FAKE_DIR", str(d))
    monkeypatch.setenv("PSYRUN_FAKE_LOG", str(d / "calls.jsonl"))
    monkeypatch.setenv("PSYRUN_FAKE_PYTHON", sys.executable)
    monkeypatch.delenv("PSYRUN_FAKE_MAX_ARRAY_SIZE", raising=False)
    return FakeCluster(d)

"""Running the external commands of cluster schedulers (sbatch, squeue, sqsub, ...)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from psyrun.scheduler.base import SchedulerError

#: Seconds before a scheduler command counts as hanging (a dead munged makes
#: Slurm's clients retry for about 49 s before failing).
COMMAND_TIMEOUT = 120.0


def run_command(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (no shell) and return the completed process with text output.

    Raises
    ------
    SchedulerError
        When the program is missing or does not finish within `timeout`.
    """
    argv = list(argv)
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SchedulerError(
            f"cannot run {argv[0]!r}: not found on PATH. Is this a machine of the cluster, "
            f"with the scheduler's client commands installed?"
        ) from None
    except subprocess.TimeoutExpired as exc:
        # What it printed before it was stopped often says why (sbatch prints
        # "Slurm temporarily unable to accept job" while it retries).
        said = "\n".join(
            _text(s).strip() for s in (exc.stdout, exc.stderr) if s and _text(s).strip()
        )
        raise SchedulerError(
            f"{shlex.join(argv)} did not answer within {timeout:.0f} s; "
            "is the cluster's controller (and munge) running?"
            + (f"\nits output so far: {said}" if said else "")
        ) from None


def _text(data: str | bytes) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def command_error(what: str, argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> str:
    """Describe a failed command: what failed, its exit status, its output, the command line."""
    output = "\n".join(s.strip() for s in (proc.stdout, proc.stderr) if s and s.strip())
    return (
        f"{what} failed (exit status {proc.returncode}): {output or '(no output)'}\n"
        f"command: {shlex.join(list(argv))}"
    )

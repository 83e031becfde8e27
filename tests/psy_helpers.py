"""The one way tests run ``psy``: in this process, or as a user would in a subprocess.

:func:`psy` runs a ``psy`` command and returns a :class:`PsyResult` with the
same fields in both modes:

- in-process (default): click's CliRunner calls :data:`psyrun.cli.main`;
  exceptions propagate to the test, so a bug shows its traceback. Fast, and
  jobs forked by the local scheduler inherit the test's modules.
- ``subprocess=True``: the ``psy`` console script runs in a new session from
  `cwd`, with plain output (no colours, a fixed width); a run that outlives
  `timeout` is killed with its process group and the test fails.

``tests/cli_helpers.py`` and ``tests/e2e_helpers.py`` keep their old names
(``psy`` in-process and ``psy(..., cwd=...)`` in a subprocess) as thin aliases.
"""

from __future__ import annotations

import os
import signal
import subprocess as _subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds one ``psy`` call in a subprocess may take before the test gives up on it.
PSY_TIMEOUT = 120


@dataclass
class PsyResult:
    """How one ``psy`` call ended (fields of click's Result and of CompletedProcess).

    Attributes
    ----------
    args : list of str
        The full command line (``["psy", ...]`` in-process).
    exit_code : int
        The exit status (also as ``returncode``).
    stdout, stderr : str
        What ``psy`` printed to each stream.
    output : str
        What a user saw: both streams (interleaved in-process, stdout first
        for a subprocess).
    """

    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    output: str = field(default="")

    @property
    def returncode(self) -> int:
        """The exit status, as :class:`subprocess.CompletedProcess` names it."""
        return self.exit_code


def psy_command() -> list[str]:
    """The argv prefix that runs ``psy`` with this interpreter."""
    script = Path(sys.executable).with_name("psy")
    if script.exists():
        # The installed console script, run by this interpreter (no PATH shims).
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "psyrun.cli"]


def psy(
    *args: str,
    cwd: str | os.PathLike | None = None,
    subprocess: bool = False,
    timeout: float = PSY_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> PsyResult:
    """Run ``psy *args`` (from `cwd`, default the current directory) and return how it ended.

    Parameters
    ----------
    *args
        The arguments of ``psy``.
    cwd : path, optional
        Directory to run in (in-process: changed to for the call, then back).
    subprocess : bool
        Run the console script in a subprocess instead of calling click here.
    timeout : float
        Seconds a subprocess may take (ignored in-process).
    env : mapping, optional
        Extra environment variables.
    """
    args = tuple(os.fspath(a) for a in args)
    if subprocess:
        return _run_subprocess(args, cwd if cwd is not None else os.getcwd(), timeout, env)
    return _run_in_process(args, cwd, env)


def _run_in_process(args, cwd, env) -> PsyResult:
    from click.testing import CliRunner

    from psyrun.cli import main

    before = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)
    finally:
        os.chdir(before)
    return PsyResult(["psy", *args], result.exit_code, result.stdout, result.stderr, result.output)


def _run_subprocess(args, cwd, timeout, env) -> PsyResult:
    full_env = dict(os.environ)
    # Plain output: no colours, no terminal progress bars, a stable width.
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    full_env.pop("PYTHONWARNINGS", None)
    if env:
        full_env.update(env)
    cmd = [*psy_command(), *args]
    proc = _subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=_subprocess.PIPE,
        stderr=_subprocess.PIPE,
        stdin=_subprocess.DEVNULL,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except _subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"`psy {' '.join(args)}` did not finish within {timeout} s\n"
            f"stdout:\n{out}\nstderr:\n{err}"
        ) from None
    return PsyResult(cmd, proc.returncode, out, err, out + err)


def describe(result: PsyResult) -> str:
    """The command, exit status and output of a finished ``psy`` call."""
    return (
        f"command: {' '.join(result.args[1:])}\nexit status: {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def ok(result: PsyResult) -> PsyResult:
    """Assert that a ``psy`` call succeeded, showing its output if not."""
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result


def write_task(project: str | os.PathLike, name: str, text: str) -> Path:
    """Write ``psy-tasks/task_<name>.py`` (dedented `text`) under `project`."""
    path = Path(project) / "psy-tasks" / f"task_{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def task_paths(project: str | os.PathLike, name: str, ext: str = ".pkl"):
    """The :class:`psyrun.paths.TaskPaths` of task `name` in `project` (default workdir)."""
    from psyrun.paths import TaskPaths

    return TaskPaths(name, os.path.join(os.fspath(project), "psy-work"), ext)


def task_result(project: str | os.PathLike, name: str, ext: str = ".pkl") -> dict:
    """Load the result file of task `name` in `project` with the store of `ext`."""
    from psyrun.store import get_store

    return get_store(ext).load(task_paths(project, name, ext).result)

"""The ``psy`` command as a function, under the name psyrun 0.8 gave it.

The command line itself is the click group :data:`psyrun.cli.psy`;
:func:`psy_main` runs it in-process and returns the exit status instead of
exiting, so scripts and tests written for psyrun 0.8 keep working::

    from psyrun.main import psy_main
    status = psy_main(["run", "--taskdir", "psy-tasks", "square"])
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["psy_main"]


def psy_main(argv: Sequence[str] | None = None, init_venv: bool = True) -> int:
    """Run a ``psy`` command and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``psy`` (``["run", "-c", "mytask"]``); by default
        those of the running program (``sys.argv[1:]``).
    init_venv : bool, optional
        Accepted for psyrun 0.8 compatibility and ignored: psyrun 0.8
        activated ``$VIRTUAL_ENV`` here, while jobs now run with the Python
        interpreter ``psy`` itself runs with (start ``psy`` from the
        environment its jobs need).

    Returns
    -------
    int
        0 on success; the status ``psy`` would exit with otherwise (1 for
        errors, 2 for usage mistakes).
    """
    import click

    from psyrun.cli import psy

    args = None if argv is None else [str(a) for a in argv]
    try:
        # standalone_mode=False: return instead of calling sys.exit; --help and
        # --version come back as their exit status.
        status = psy.main(args=args, prog_name="psy", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except SystemExit as exc:
        # Commands end with sys.exit(status) when something failed.
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        click.echo(exc.code, err=True)
        return 1
    return status if isinstance(status, int) else 0

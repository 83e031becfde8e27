"""Run every page of the documentation as a test, in document order.

Each ``.rst`` page is one test that runs in a fresh temporary directory and
executes, from top to bottom:

* ``>>>`` examples, checked like doctests (one namespace per page);
* ``.. code-block:: python`` blocks with a ``:caption:`` that is a file path
  (``psy-tasks/task_square.py``): the block is written to that file, so the
  page can show a task file and then run it; ``.. literalinclude::`` with such
  a caption copies the included file there (examples from ``examples/``);
* ``.. code-block:: console`` blocks: each ``$ command`` line is run (``psy``
  is the installed command, ``python`` this interpreter) and what it prints
  (stdout and stderr) is compared with the lines below it, with doctest's
  ``...`` ellipsis and whitespace normalisation.

pytest's own ``--doctest-glob=*.rst`` would collect the same pages without
the files and commands, so this runner takes their place.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Plots in recipes render to files, never to a screen.
os.environ.setdefault("MPLBACKEND", "Agg")

DOCS_DIR = Path(__file__).parent
_DIRECTIVE = re.compile(
    r"^(?P<indent>\s*)\.\. (?P<kind>code-block|literalinclude)::\s*(?P<arg>\S+)\s*$"
)
_OPTION = re.compile(r"^\s*:(?P<name>[\w-]+):\s*(?P<value>.*)$")
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Later examples of a page build on earlier ones: report the first failure only.
_RUN_FLAGS = _FLAGS | doctest.REPORT_ONLY_FIRST_FAILURE

#: Pages skipped when an optional package is missing: page name -> modules.
_NEEDS = {
    "recipes.rst": ("pandas", "xarray", "matplotlib"),
    "dask.rst": ("distributed",),
    "sampling.rst": ("pandas", "scipy"),
}


def _blocks(text: str):
    """Split a page into ('text', lineno, str) and directive blocks, in order."""
    lines = text.splitlines()
    i = 0
    chunk_start = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if match and match["kind"] == "literalinclude":
            lang = "include"
        elif match and match["arg"] in ("python", "console"):
            lang = match["arg"]
        else:
            i += 1
            continue
        if i > chunk_start:
            yield "text", chunk_start, "\n".join(lines[chunk_start:i])
        base = len(match["indent"])
        options = {}
        j = i + 1
        while j < len(lines) and _OPTION.match(lines[j]):
            option = _OPTION.match(lines[j])
            options[option["name"]] = option["value"].strip()
            j += 1
        body = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base
        ):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        content = "\n".join(b[indent:] for b in body)
        if lang == "include":
            content = match["arg"]
        yield lang, i, (options, content)
        i = chunk_start = j
    if chunk_start < len(lines):
        yield "text", chunk_start, "\n".join(lines[chunk_start:])


def _command_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "psy":
        psy = shutil.which("psy", path=os.path.dirname(sys.executable)) or shutil.which("psy")
        argv[:1] = [psy] if psy else [sys.executable, "-c", "from psyrun.cli import main; main()"]
    elif argv[0] == "python":
        argv[0] = sys.executable
    return argv


def _console_steps(content: str):
    """Yield (command, expected output) for each ``$`` line of a console block."""
    command = None
    expected: list[str] = []
    for line in content.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, "\n".join(expected)
            command, expected = line[2:].strip(), []
        elif command is not None:
            expected.append(line)
    if command is not None:
        yield command, "\n".join(expected)


class DocPageError(Exception):
    """A step of a documentation page did not do what the page says."""


class DocPage(pytest.Item):
    """One documentation page, run from top to bottom."""

    def runtest(self) -> None:
        """Run the page's examples, files and commands in a fresh directory."""
        missing = [m for m in _NEEDS.get(self.path.name, ()) if not _importable(m)]
        if missing:
            pytest.skip(
                f"{self.path.name} needs {', '.join(missing)} (pip install "
                '"psyrun[analysis]" matplotlib)'
            )
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(prefix=f"psyrun-docs-{self.path.stem}-") as tmp:
            os.chdir(tmp)
            try:
                self._run(self.path.read_text(encoding="utf-8"), Path(tmp))
            finally:
                os.chdir(cwd)
                if "matplotlib.pyplot" in sys.modules:
                    sys.modules["matplotlib.pyplot"].close("all")

    def _run(self, text: str, tmp: Path) -> None:
        globs = {"__name__": "__doc_page__"}
        parser = doctest.DocTestParser()
        for kind, lineno, payload in _blocks(text):
            if kind == "text":
                test = parser.get_doctest(payload, globs, self.name, str(self.path), lineno)
                if not test.examples:
                    continue
                report: list[str] = []
                runner = doctest.DocTestRunner(optionflags=_RUN_FLAGS)
                runner.run(test, out=report.append, clear_globs=False)
                globs.update(test.globs)  # DocTest works on a copy of the namespace
                if runner.failures:
                    raise DocPageError("".join(report))
            elif kind in ("python", "include"):
                options, content = payload
                target = options.get("caption", "")
                if not target.endswith(".py"):
                    continue
                if kind == "include":  # the page shows a file of the repository
                    content = (self.path.parent / content).read_text(encoding="utf-8")
                path = tmp / target
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content.rstrip("\n") + "\n", encoding="utf-8")
            else:
                self._run_console(payload[1], lineno, tmp)

    def _run_console(self, content: str, lineno: int, tmp: Path) -> None:
        env = dict(os.environ, COLUMNS="80", NO_COLOR="1", TERM="dumb")
        checker = doctest.OutputChecker()
        for command, expected in _console_steps(content):
            proc = subprocess.run(
                _command_argv(command),
                cwd=tmp,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
                check=False,
            )
            got = proc.stdout
            want = expected + "\n" if expected else ""
            if not checker.check_output(want, got, _FLAGS):
                example = doctest.Example(command, want)
                raise DocPageError(
                    f"line {lineno + 1}: `$ {command}` (exit status {proc.returncode})\n"
                    + checker.output_difference(example, got, _FLAGS)
                )

    def repr_failure(self, excinfo, style=None):
        """Show the mismatching step instead of a traceback of the runner."""
        if isinstance(excinfo.value, DocPageError):
            return f"{self.path.name}: the page's examples do not match\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        """Name the page in reports."""
        return self.path, None, f"docs page {self.path.name}"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class DocPageFile(pytest.File):
    """A documentation page file yielding its single test."""

    def collect(self):
        """Yield the page's one test."""
        yield DocPage.from_parent(self, name=self.path.stem)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent):
    """Collect each page under docs/ as one :class:`DocPage`."""
    collected = yield
    if file_path.suffix == ".rst" and DOCS_DIR in file_path.parents:
        # --doctest-glob=*.rst collects the page too, without its files and
        # commands; this runner replaces it.
        from _pytest.doctest import DoctestTextfile

        collected = [c for c in collected if not isinstance(c, DoctestTextfile)]
        collected.append(DocPageFile.from_parent(parent, path=file_path))
    return collected

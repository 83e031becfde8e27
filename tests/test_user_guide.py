"""The psyrun 0.8 user guide (``spec/psyrun-user-guide.txt``), section by section.

Every behaviour, setting, command, option, scheduler argument, store and
printed output of the guide is exercised here against the real package, the
way a 0.8 user would: task files written with the 0.8 import paths, ``psy``
run in a subprocess from a temporary directory, results read back with the
stores. Cluster schedulers submit to the fake ``sbatch``/``squeue``/``sqsub``
... in ``tests/fakebin``; the test then plays the cluster by running the
recorded command lines in fresh interpreters.

Deliberate departures from 0.8 (DESIGN.md, last section) are not tested as
0.8 behaviour: whole-row difference and ``missing()`` are checked where the
guide's own examples are (they agree on them).
"""

from __future__ import annotations

import doctest
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

FAKEBIN = Path(__file__).parent / "fakebin"
PSY_TIMEOUT = 120
SUBCOMMANDS = ["run", "clean", "kill", "list", "merge", "new-task", "status", "test"]


# --------------------------------------------------------------------------- helpers


def psy(*args: str, cwd, env: dict | None = None, check: bool = True):
    """Run ``psy *args`` in `cwd` as a user would; return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    full_env.pop("PYTHONWARNINGS", None)
    full_env.update(env or {})
    script = Path(sys.executable).with_name("psy")
    cmd = (
        [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "psyrun.cli"]
    )
    result = subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=PSY_TIMEOUT,
    )
    if check:
        assert result.returncode == 0, show(result)
        assert "Traceback" not in result.stderr, show(result)
    return result


def show(result) -> str:
    return (
        f"command: psy {' '.join(result.args[2:])}\nexit status: {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def write(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def age(root, seconds: float = 100.0) -> None:
    """Move every mtime under `root` into the past so a later edit is clearly newer."""
    then = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (then, then))


def square_task(side_file, values, header: str = "", settings: str = "") -> str:
    """A 0.8-style task: ``pspace = Param(x=values)``, ``execute`` returns ``y = x**2``.

    Every ``execute`` call appends its x to `side_file`.
    """
    return (
        "from psyrun import Param\n"
        + textwrap.dedent(header)
        + f"\npspace = Param(x={list(values)!r})\n"
        + textwrap.dedent(settings)
        + "\n\ndef execute(x):\n"
        + f"    with open({os.fspath(side_file)!r}, 'a') as f:\n"
        + "        f.write(f'{x}\\n')\n"
        + "    return {'y': x * x}\n"
    )


def executed(side_file) -> list[int]:
    path = Path(side_file)
    return sorted(int(v) for v in path.read_text().split()) if path.exists() else []


def rows(data, keys=None) -> list[tuple]:
    """Rows of a column mapping as sorted tuples of plain Python values."""
    keys = keys or sorted(data)
    cols = [np.asarray(data[k]).tolist() for k in keys]
    return sorted(zip(*cols))


def marks(stdout: str) -> list[tuple[str, str]]:
    return re.findall(r"^([.-]) (\S+)$", stdout, flags=re.MULTILINE)


def fake_env(tmp_path) -> dict:
    """Environment putting the fake cluster commands first on PATH (see tests/fakebin)."""
    d = tmp_path / "fake"
    d.mkdir(exist_ok=True)
    return {
        "PATH": f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}",
        "PSYRUN_FAKE_DIR": str(d),
        "PSYRUN_FAKE_LOG": str(d / "calls.jsonl"),
        "PSYRUN_FAKE_PYTHON": sys.executable,
    }


def fake_calls(env: dict, prog: str) -> list[list[str]]:
    log = Path(env["PSYRUN_FAKE_LOG"])
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return [r["argv"] for r in records if r["prog"] == prog]


def script_fake(env: dict, prog: str, out: str) -> None:
    Path(env["PSYRUN_FAKE_DIR"], f"{prog}.out").write_text(out)


# sbatch options: every spelling -> one canonical name.
_SBATCH_NAMES = {
    "-t": "time", "--time": "time", "--mem": "mem", "--mem-per-cpu": "mem-per-cpu",
    "-c": "cpus-per-task", "--cpus-per-task": "cpus-per-task", "-N": "nodes",
    "--nodes": "nodes", "--cores-per-socket": "cores-per-socket",
    "--sockets-per-node": "sockets-per-node", "-J": "job-name", "--job-name": "job-name",
    "-o": "output", "--output": "output", "-d": "dependency", "--dependency": "dependency",
    "-a": "array", "--array": "array",
}  # fmt: skip
_SBATCH_FLAGS = {"--parsable", "--requeue", "--no-requeue"}


def parse_sbatch(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split an sbatch argv into {option: value} (canonical names) and the script + its args."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        token = argv[i]
        if token in _SBATCH_FLAGS:
            i += 1
            continue
        if token.startswith("--") and "=" in token:
            key, value = token.split("=", 1)
            i += 1
        elif token in _SBATCH_NAMES:
            key, value = token, argv[i + 1]
            i += 2
        elif token[:2] in _SBATCH_NAMES:  # -t10:00
            key, value = token[:2], token[2:]
            i += 1
        else:
            raise AssertionError(f"unexpected sbatch option {token!r} in {argv}")
        opts[_SBATCH_NAMES.get(key, key.lstrip("-"))] = value
    return opts, argv[i:]


def run_sbatch_jobs(env: dict, cwd) -> None:
    """Play Slurm: run every recorded sbatch submission, in order, as its batch script."""
    for argv in fake_calls(env, "sbatch"):
        opts, script = parse_sbatch(argv)
        if "array" in opts:
            lo, hi = (int(v) for v in opts["array"].split("%")[0].split("-"))
            indices = range(lo, hi + 1)
        else:
            indices = [None]
        for index in indices:
            job_env = dict(os.environ)
            out = opts["output"]
            if index is not None:
                job_env["SLURM_ARRAY_TASK_ID"] = str(index)
                out = out.replace("%a", str(index))
            with open(out, "w") as f:
                subprocess.run(
                    ["bash", *script], cwd=cwd, env=job_env, stdout=f, stderr=subprocess.STDOUT,
                    check=True, timeout=PSY_TIMEOUT,
                )  # fmt: skip


_SQSUB_VALUES = {"-r", "-n", "-N", "--mpp", "-o", "-j", "-w", "-q"}


def parse_sqsub(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts, i = {}, 0
    while i < len(argv) and argv[i] in _SQSUB_VALUES:
        opts[argv[i]] = argv[i + 1]
        i += 2
    return opts, argv[i:]


def run_sqsub_jobs(env: dict, cwd) -> None:
    """Play Sharcnet: run every recorded sqsub submission, in order."""
    for argv in fake_calls(env, "sqsub"):
        opts, command = parse_sqsub(argv)
        with open(opts["-o"], "w") as f:
            subprocess.run(
                command, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=True,
                timeout=PSY_TIMEOUT,
            )  # fmt: skip


def load(path):
    from psyrun.store import AutodetectStore

    return AutodetectStore().load(os.fspath(path))


# =========================================================== Constructing parameter spaces
# and Evaluating functions on parameter spaces: the guide's examples, run as doctests so
# that the printed output must match the guide character for character. (The guide's
# rendering lost the argument of ``pprint(`` in the first section; it is
# ``pspace.build()``, as the surrounding text says.)

GUIDE_PSPACE_EXAMPLES = """
>>> from psyrun import Param
>>> pspace = Param(a=[1, 2, 3], b=[4, 5, 6], c=7)

>>> from pprint import pprint
>>> pprint(pspace.build())
{'a': [1, 2, 3], 'b': [4, 5, 6], 'c': [7, 7, 7]}

>>> pspace = Param(a=[1, 2, 3], b=[4, 5, 6]) * Param(c=[7, 8])
>>> pprint(pspace.build())
{'a': [1, 1, 2, 2, 3, 3], 'b': [4, 4, 5, 5, 6, 6], 'c': [7, 8, 7, 8, 7, 8]}

>>> pspace = Param(a=[1, 2]) + Param(a=[2, 3], b=[4, 4])
>>> pprint(pspace.build())
{'a': [1, 2, 2, 3], 'b': [nan, nan, 4, 4]}

>>> pspace = Param(a=[1, 2, 3], b=[1, 2, 3]) - Param(a=[2])
>>> pprint(pspace.build())
{'a': [1, 3], 'b': [1, 3]}

>>> pspace = Param(a=[1, 2, 3]) - Param(a=[2], c=[4])
Traceback (most recent call last):
psyrun.pspace.AmbiguousOperationError: Key `c` not existent in minuend.

>>> from psyrun.pspace import missing
>>> pspace = missing(Param(a=[1, 2, 3]), Param(a=[2], c=[4]))
>>> pprint(pspace.build())
{'a': [1, 3]}

>>> pspace = Param(a=[1, 2]) * Param(b=[3, 4])
>>> for p in pspace.iterate():
...     pprint(p)
{'a': 1, 'b': 3}
{'a': 1, 'b': 4}
{'a': 2, 'b': 3}
{'a': 2, 'b': 4}
"""

GUIDE_MAP_EXAMPLES = """
>>> from psyrun import Param
>>> def basic_math(a, b):
...     return {'sum': a + b, 'product': a * b}

>>> from pprint import pprint
>>> from psyrun import map_pspace, pspace
>>> pspace = Param(a=[1, 2]) * Param(b=[3, 4])
>>> pprint(map_pspace(basic_math, pspace))
{'a': [1, 1, 2, 2],
 'b': [3, 4, 3, 4],
 'product': [3, 4, 6, 8],
 'sum': [4, 5, 5, 6]}

>>> from psyrun import map_pspace_parallel
>>> from psyrun.utils.example import square
>>> pprint(map_pspace_parallel(square, Param(x=[1, 2, 3])))
{'x': [1, 2, 3], 'y': [1, 4, 9]}
"""


@pytest.mark.parametrize(
    "text", [GUIDE_PSPACE_EXAMPLES, GUIDE_MAP_EXAMPLES], ids=["construct", "evaluate"]
)
def test_guide_examples_print_exactly_what_the_guide_shows(text):
    test = doctest.DocTestParser().get_doctest(text, {}, "user-guide", "user-guide.txt", 0)
    report = []
    runner = doctest.DocTestRunner(optionflags=0)
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries == text.count(">>> ")


def test_scalars_are_replicated_only_alongside_a_sequence():
    from psyrun import Param

    # "As long as you pass in at least one sequence, other parameter values are
    # allowed to be scalars": the sequence sets the length, wherever it stands.
    assert Param(c="text", a=np.arange(3)).build() == {"c": ["text"] * 3, "a": [0, 1, 2]}
    assert len(Param(a=[1, 2], b=[3, 4], c=0.5)) == 2


def test_iterate_streams_a_large_space_lazily():
    from psyrun import Param

    # "For very large spaces ... iterate over the parameter assignments without
    # allocating more memory than necessary": a 10**12-row product is fine.
    big = Param(a=np.arange(10**6)) * Param(b=np.arange(10**6))
    first = []
    for p in big.iterate():
        first.append(p)
        if len(first) == 3:
            break
    assert first == [{"a": 0, "b": 0}, {"a": 0, "b": 1}, {"a": 0, "b": 2}]
    assert len(big) == 10**12


# ============================================================ Psyrun command line interface


def test_psy_help_and_every_subcommand_help():
    from psyrun.cli import psy as psy_group

    runner = CliRunner()
    top = runner.invoke(psy_group, ["--help"])
    assert top.exit_code == 0, top.output
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", top.output, flags=re.MULTILINE), top.output
    # The guide's synopses: every subcommand takes -h; the documented options exist.
    expected = {
        "run": ["--taskdir", "-c, --continue", "[TASK]..."],
        "clean": ["--taskdir", "[TASK]..."],
        "kill": ["--taskdir", "[TASK]..."],
        "list": ["--taskdir"],
        "merge": ["DIRECTORY MERGED"],
        "new-task": ["--taskdir", "--scheduler", "NAME"],
        "status": ["--taskdir", "-v", "[TASK]..."],
        "test": ["--taskdir", "[TASK]..."],
    }
    for name, needles in expected.items():
        for flag in ("--help", "-h"):
            result = runner.invoke(psy_group, [name, flag])
            assert result.exit_code == 0, result.output
            assert result.output.startswith(f"Usage: psy {name} "), result.output
            for needle in needles:
                assert needle in result.output, (name, needle, result.output)


def test_psy_console_script_help_runs(tmp_path):
    out = psy("--help", cwd=tmp_path)
    assert "Usage: psy" in out.stdout


def test_run_marks_executed_then_skipped_jobs_like_doit(tmp_path):
    side = tmp_path / "calls"
    write(tmp_path / "psy-tasks" / "task_sq.py", square_task(side, [1, 2, 3]))
    first = psy("run", cwd=tmp_path)
    # max_jobs left at its default: one process job per local job slot (ImmediateRun: 1).
    jobs = ["sq:split", "sq:process:0", "sq:merge"]
    assert first.stdout.splitlines() == [f". {j}" for j in jobs], show(first)
    assert executed(side) == [1, 2, 3]
    second = psy("run", cwd=tmp_path)
    assert second.stdout.splitlines() == [f"- {j}" for j in jobs], show(second)
    assert executed(side) == [1, 2, 3], "an up-to-date task was executed again"
    assert rows(load(tmp_path / "psy-work" / "sq" / "result.pkl")) == [(1, 1), (2, 4), (3, 9)]


def test_run_all_tasks_or_only_the_named_ones(tmp_path):
    for name in ("one", "two", "three"):
        write(tmp_path / "psy-tasks" / f"task_{name}.py", square_task(tmp_path / name, [5]))
    named = psy("run", "one", "three", cwd=tmp_path)
    assert {n.split(":")[0] for _, n in marks(named.stdout)} == {"one", "three"}
    assert not (tmp_path / "psy-work" / "two").exists()
    rest = psy("run", cwd=tmp_path)
    assert {(m, n.split(":")[0]) for m, n in marks(rest.stdout)} == {
        ("-", "one"),
        ("-", "three"),
        (".", "two"),
    }
    for name in ("one", "two", "three"):
        assert executed(tmp_path / name) == [5]


def test_taskdir_option_for_every_task_command(tmp_path):
    tasks = tmp_path / "elsewhere" / "my-tasks"
    write(tasks / "task_far.py", square_task(tmp_path / "calls", [1, 2]))
    # No psy-tasks here: a clear message rather than a traceback.
    default = psy("list", cwd=tmp_path, check=False)
    assert default.returncode != 0
    assert "psy-tasks" in default.stderr
    assert "Traceback" not in default.stderr
    assert psy("list", "--taskdir", str(tasks), cwd=tmp_path).stdout.split() == ["far"]
    psy("test", "--taskdir", str(tasks), cwd=tmp_path)
    psy("run", "--taskdir", str(tasks), cwd=tmp_path)
    assert executed(tmp_path / "calls") == [1, 1, 2]  # psy test evaluated one assignment
    status = psy("status", "--taskdir", str(tasks), "far", cwd=tmp_path)
    assert "far: 2 out of 2 rows completed" in status.stdout
    psy("kill", "--taskdir", str(tasks), "far", cwd=tmp_path)
    psy("clean", "--taskdir", str(tasks), "far", cwd=tmp_path)
    assert not (tmp_path / "psy-work" / "far").exists()
    psy("new-task", "--taskdir", str(tasks), "fresh", cwd=tmp_path)
    assert (tasks / "task_fresh.py").exists()


@pytest.mark.parametrize("flag", ["-c", "--continue"])
def test_run_continue_preserves_and_adds_to_results(tmp_path, flag):
    side = tmp_path / "calls"
    task = tmp_path / "psy-tasks" / "task_grow.py"
    write(task, square_task(side, [1, 2, 3]))
    psy("run", cwd=tmp_path)
    age(tmp_path)
    write(task, square_task(side, [1, 2, 3, 4, 5]))
    psy("run", flag, cwd=tmp_path)
    # Only the new assignments were evaluated; the old results were kept.
    assert executed(side) == [1, 2, 3, 4, 5]
    result = load(tmp_path / "psy-work" / "grow" / "result.pkl")
    assert rows(result) == [(x, x * x) for x in range(1, 6)]


def test_clean_deletes_every_file_generated_for_the_named_task(tmp_path):
    for name in ("gone", "kept"):
        write(
            tmp_path / "psy-tasks" / f"task_{name}.py",
            square_task(tmp_path / name, [1, 2], settings=f"resultfile = 'out/{name}.pkl'"),
        )
    psy("run", cwd=tmp_path)
    assert (tmp_path / "out" / "gone.pkl").exists()
    psy("clean", "gone", cwd=tmp_path)
    assert not (tmp_path / "psy-work" / "gone").exists()
    assert not (tmp_path / "out" / "gone.pkl").exists()
    assert (tmp_path / "psy-work" / "kept").exists()
    assert (tmp_path / "out" / "kept.pkl").exists()
    again = psy("run", cwd=tmp_path)
    assert {(m, n.split(":")[0]) for m, n in marks(again.stdout)} == {(".", "gone"), ("-", "kept")}


def test_list_prints_the_name_of_every_task(tmp_path):
    for name in ("alpha", "beta", "gamma_3"):
        write(tmp_path / "psy-tasks" / f"task_{name}.py", square_task(tmp_path / name, [1]))
    write(tmp_path / "psy-tasks" / "helper.py", "X = 1\n")  # not a task file
    out = psy("list", cwd=tmp_path)
    assert sorted(out.stdout.splitlines()) == ["alpha", "beta", "gamma_3"]


@pytest.mark.parametrize("ext", [".pkl", ".npz", ".h5"])
def test_merge_directory_into_one_file_chosen_by_extension(tmp_path, ext):
    from psyrun.store import AutodetectStore

    store = AutodetectStore()
    parts = tmp_path / "parts"
    parts.mkdir()
    store.save(str(parts / f"0{ext}"), {"x": [1, 2], "y": [1.0, 4.0]})
    store.save(str(parts / f"1{ext}"), {"x": [3], "y": [9.0]})
    store.save(str(parts / f"2{ext}"), {"x": [4, 5], "y": [16.0, 25.0]})
    # A file of another format in the directory is not an input for this extension.
    other = ".npz" if ext != ".npz" else ".pkl"
    store.save(str(parts / f"9{other}"), {"x": [99], "y": [0.0]})
    psy("merge", "parts", f"merged{ext}", cwd=tmp_path)
    merged = store.load(str(tmp_path / f"merged{ext}"))
    assert rows(merged, ["x", "y"]) == [(x, float(x * x)) for x in range(1, 6)]


@pytest.mark.parametrize(
    "options", [[], ["--scheduler", "ImmediateRun"]], ids=["default", "immediate"]
)
def test_new_task_template_loads_tests_and_runs(tmp_path, options):
    psy("new-task", *options, "fresh", cwd=tmp_path)
    path = tmp_path / "psy-tasks" / "task_fresh.py"
    source = path.read_text()
    assert "pspace" in source
    assert "def execute" in source
    assert psy("list", cwd=tmp_path).stdout.split() == ["fresh"]
    psy("test", "fresh", cwd=tmp_path)
    psy("run", "fresh", cwd=tmp_path)
    status = psy("status", "fresh", cwd=tmp_path)
    n = re.search(r"fresh: (\d+) out of (\d+) rows completed", status.stdout)
    assert n, show(status)
    assert n.group(1) == n.group(2), show(status)
    assert int(n.group(1)) > 0, show(status)


@pytest.mark.parametrize("scheduler", ["Slurm", "Sqsub"])
def test_new_task_uses_template_parameters_for_the_scheduler(tmp_path, scheduler):
    env = fake_env(tmp_path)
    psy("new-task", "--scheduler", scheduler, "clustered", cwd=tmp_path)
    source = (tmp_path / "psy-tasks" / "task_clustered.py").read_text()
    assert re.search(rf"^scheduler = {scheduler}\b", source, flags=re.MULTILINE), source
    assert "scheduler_args" in source
    # The template is complete: psy run submits it with its scheduler_args.
    psy("run", "clustered", cwd=tmp_path, env=env)
    prog = "sbatch" if scheduler == "Slurm" else "sqsub"
    assert fake_calls(env, prog), f"{prog} was not called"
    if scheduler == "Sqsub":  # both required arguments are pre-filled
        opts, _ = parse_sqsub(fake_calls(env, "sqsub")[0])
        assert "-r" in opts
        assert "--mpp" in opts


def test_status_counts_rows_and_verbose_lists_missing_assignments(tmp_path):
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_st.py",
        square_task(side, [10, 20, 30, 40], settings="max_jobs = 2"),
    )
    before = psy("status", cwd=tmp_path)
    assert "st: 0 out of 4 rows completed" in before.stdout, show(before)
    assert "{'x': 10}" not in before.stdout  # only -v lists assignments
    verbose = psy("status", "-v", cwd=tmp_path)
    for x in (10, 20, 30, 40):
        assert f"{{'x': {x}}}" in verbose.stdout, show(verbose)
    psy("run", cwd=tmp_path)
    after = psy("status", "-v", "st", cwd=tmp_path)
    assert "st: 4 out of 4 rows completed" in after.stdout, show(after)
    assert "{'x': " not in after.stdout
    assert executed(side) == [10, 20, 30, 40], "status must not evaluate anything"


def test_status_of_all_tasks_or_the_named_ones(tmp_path):
    write(tmp_path / "psy-tasks" / "task_a.py", square_task(tmp_path / "a", [1, 2]))
    write(tmp_path / "psy-tasks" / "task_b.py", square_task(tmp_path / "b", [1, 2, 3]))
    psy("run", "a", cwd=tmp_path)
    both = psy("status", cwd=tmp_path).stdout
    assert "a: 2 out of 2 rows completed" in both
    assert "b: 0 out of 3 rows completed" in both
    only_b = psy("status", "b", cwd=tmp_path).stdout
    assert "b: 0 out of 3 rows completed" in only_b
    assert "a:" not in only_b


def test_test_runs_one_assignment_per_task_without_the_scheduler(tmp_path):
    env = fake_env(tmp_path)
    for name in ("first", "second"):
        write(
            tmp_path / "psy-tasks" / f"task_{name}.py",
            square_task(
                tmp_path / name,
                [7, 8, 9],
                header="from psyrun import Sqsub\n",
                settings="scheduler = Sqsub()\n"
                "scheduler_args = {'timelimit': '1h', 'memory': '1G'}\n",
            ),
        )
    psy("test", cwd=tmp_path, env=env)
    assert executed(tmp_path / "first") == [7]
    assert executed(tmp_path / "second") == [7]
    psy("test", "second", cwd=tmp_path, env=env)
    assert executed(tmp_path / "first") == [7]
    assert executed(tmp_path / "second") == [7, 7]
    assert fake_calls(env, "sqsub") == [], "psy test must not submit jobs"
    assert not (tmp_path / "psy-work" / "first" / "result.pkl").exists()


def test_test_reports_a_failing_task(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_broken.py",
        """
        from psyrun import Param
        pspace = Param(x=[1, 2])
        def execute(x):
            raise RuntimeError('boom in execute')
        """,
    )
    result = psy("test", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "boom in execute" in result.stdout + result.stderr


# ======================================================================= Diagnosing problems


def test_each_job_writes_a_log_named_task_colon_job_in_the_workdir(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_diag.py",
        """
        from psyrun import Param
        pspace = Param(x=[1, 2, 3, 4])
        max_jobs = 2
        def execute(x):
            if x == 3:
                raise ValueError('cannot handle x=3')
            return {'y': x}
        """,
    )
    result = psy("run", cwd=tmp_path, check=False)
    assert result.returncode != 0, show(result)  # a failed job is reported
    work = tmp_path / "psy-work" / "diag"
    names = ["diag:split.log", "diag:process:0.log", "diag:process:1.log", "diag:merge.log"]
    for name in names:
        assert (work / name).is_file(), (name, sorted(os.listdir(work)))
    log = (work / "diag:process:1.log").read_text()
    assert "ValueError" in log
    assert "cannot handle x=3" in log
    assert "cannot handle" not in (work / "diag:process:0.log").read_text()
    # The failed job and its log are easy to find.
    status = psy("status", "-v", cwd=tmp_path)
    assert "diag: 3 out of 4 rows completed" in status.stdout, show(status)
    assert "diag:process:1" in status.stdout
    assert "{'x': 3}" in status.stdout


# ==================================================================== Writing task-files


def test_config_documents_every_special_variable_with_0_8_defaults():
    from psyrun.backend import DistributeBackend
    from psyrun.scheduler import ImmediateRun
    from psyrun.store import PickleStore
    from psyrun.tasks import Config, TaskDef

    assert TaskDef is not None
    doc = Config.__doc__
    documented = [
        "pspace", "execute", "store", "max_jobs", "min_items", "scheduler", "scheduler_args",
        "workdir", "resultfile", "backend", "pool_size", "exclude_from_result", "setup",
        "file_dep", "overwrite_dirty",
    ]  # fmt: skip
    conf = Config()
    for name in documented:
        assert re.search(rf"^\s*{name} :", doc, flags=re.MULTILINE), name
        getattr(conf, name)
    assert conf.max_jobs == 100  # "By default max_jobs is set to 100"
    assert conf.min_items == 1
    # The scheduler and backend defaults are resolved where they are used.
    from psyrun.run import defaults

    task = SimpleNamespace(config=conf)
    assert isinstance(defaults.scheduler_for(task), ImmediateRun)
    assert isinstance(conf.store, PickleStore)
    assert defaults.backend_class(task) is DistributeBackend
    assert conf.scheduler_args == {}
    assert conf.resultfile is None
    assert os.path.basename(conf.workdir) == "psy-work"


def test_the_guides_misspelling_schedular_args_is_pointed_out(tmp_path):
    # The guide itself writes "schedular_args"; a user copying it learns of the typo.
    write(
        tmp_path / "psy-tasks" / "task_typo.py",
        square_task(tmp_path / "calls", [1], settings="schedular_args = {'timelimit': '1h'}"),
    )
    out = psy("list", cwd=tmp_path)
    assert out.stdout.split() == ["typo"]
    assert "schedular_args" in out.stderr, show(out)
    assert "scheduler_args" in out.stderr, show(out)


@pytest.mark.parametrize(
    ("imp", "expr", "ext"),
    [
        ("from psyrun.store.h5 import H5Store", "H5Store()", ".h5"),
        ("from psyrun.store.npz import NpzStore", "NpzStore()", ".npz"),
        ("from psyrun.store.pickle import PickleStore", "PickleStore", ".pkl"),
        ("from psyrun import DefaultStore", "DefaultStore()", ".pkl"),
        ("from psyrun.store.zarr import ZarrStore", "ZarrStore()", ".zarr"),
    ],
)
def test_store_setting_selects_the_result_format(tmp_path, imp, expr, ext):
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_st.py",
        square_task(
            side, [0.5, 1.5, 2.5, 3.5], header=imp, settings=f"store = {expr}\nmax_jobs = 2"
        ),
    )
    psy("run", cwd=tmp_path)
    result = tmp_path / "psy-work" / "st" / f"result{ext}"
    assert result.exists(), sorted(os.listdir(result.parent))
    assert rows(load(result), ["x", "y"]) == [(x, x * x) for x in (0.5, 1.5, 2.5, 3.5)]


@pytest.mark.parametrize(
    ("n_rows", "settings", "n_process"),
    [
        # "By default max_jobs is set to 100": a cluster gets that many jobs (and so
        # does a local run that sets it, tests/test_local_jobs.py); a local run that
        # leaves it at its default gets one job per job slot, ImmediateRun has one.
        (1000, "max_jobs = 100", 100),
        (1000, "", 1),
        (12, "min_items = 4\nmax_jobs = 100", 3),
        (12, "min_items = 4\nmax_jobs = 2", 2),
        (5, "max_jobs = 8", 5),
    ],
)
def test_max_jobs_and_min_items_bound_the_processing_jobs(tmp_path, n_rows, settings, n_process):
    # The cases divide evenly: for, say, 10 rows and min_items = 4, psyrun 0.8 made
    # ceil(10 / 4) = 3 batches (3, 3, 4 rows), below the guide's "at least min_items",
    # and ours does the same; that wording is not pinned down here.
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_mj.py",
        f"""
        import os
        from psyrun import Param
        pspace = Param(x=list(range({n_rows})))
        {settings.replace(chr(10), chr(10) + " " * 8)}
        def execute(x):
            with open({str(side)!r}, 'a') as f:
                f.write(f'{{x}} {{os.getpid()}}\\n')
            return {{'y': x}}
        """,
    )
    out = psy("run", cwd=tmp_path)
    process = [n for m, n in marks(out.stdout) if ":process:" in n]
    assert process == [f"mj:process:{i}" for i in range(n_process)], show(out)
    records = [tuple(map(int, line.split())) for line in side.read_text().splitlines()]
    assert sorted(x for x, _ in records) == list(range(n_rows))
    # Equally sized batches, one per processing job (each job is its own process here),
    # each with at least min_items items.
    sizes = sorted(Counter(pid for _, pid in records).values())
    assert len(sizes) == n_process
    assert sizes[-1] - sizes[0] <= 1
    match = re.search(r"min_items = (\d+)", settings)
    assert sizes[0] >= (int(match.group(1)) if match else 1)


def test_workdir_and_resultfile_settings(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_wd.py",
        square_task(
            tmp_path / "calls",
            [1, 2],
            settings="workdir = 'scratch/fast'\nresultfile = 'results/wd_result.pkl'",
        ),
    )
    psy("run", cwd=tmp_path)
    assert (tmp_path / "scratch" / "fast" / "wd" / "wd:split.log").exists()
    assert (tmp_path / "results" / "wd_result.pkl").exists()
    assert not (tmp_path / "psy-work").exists()
    assert rows(load(tmp_path / "results" / "wd_result.pkl")) == [(1, 1), (2, 4)]
    assert "wd: 2 out of 2 rows completed" in psy("status", cwd=tmp_path).stdout


@pytest.mark.parametrize(
    ("imp", "store", "ext"),
    [
        ("", "", ".pkl"),
        ("from psyrun.store.h5 import H5Store", "store = H5Store()", ".h5"),
        ("from psyrun.store.npz import NpzStore", "store = NpzStore()", ".npz"),
    ],
)
def test_backend_setting_load_balancing(tmp_path, imp, store, ext):
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_lb.py",
        square_task(
            side,
            range(20),
            header=f"from psyrun.backend import LoadBalancingBackend\n{imp}\n",
            settings=f"backend = LoadBalancingBackend\nmax_jobs = 3\n{store}",
        ),
    )
    out = psy("run", cwd=tmp_path)
    assert [n for _, n in marks(out.stdout)] == [
        "lb:split", "lb:process:0", "lb:process:1", "lb:process:2", "lb:merge"
    ]  # fmt: skip
    assert executed(side) == list(range(20))  # every item fetched exactly once
    assert rows(load(tmp_path / "psy-work" / "lb" / f"result{ext}")) == [
        (x, x * x) for x in range(20)
    ]
    assert marks(psy("run", cwd=tmp_path).stdout)[0] == ("-", "lb:split")


ALGEBRA_TASK = """
from psyrun import Param
from psyrun.pspace import missing

pspace = (
    Param(a=[1, 2]) + Param(a=[2, 3], b=[4, 4])
    + (Param(a=[1, 2, 3], b=[1, 2, 3]) - Param(a=[2]))
    + missing(Param(a=[5, 6, 7]), Param(a=[6], c=[4]))
) * Param(k=['u', 'v'])
{settings}

def execute(a, k, b=None):
    return {{'desc': f'{{k}}{{a}}', 'b_is_nan': b != b}}
"""


@pytest.mark.parametrize(
    "settings",
    ["", "from psyrun.backend import LoadBalancingBackend\nbackend = LoadBalancingBackend"],
    ids=["distribute", "loadbalancing"],
)
def test_guide_algebra_in_a_task_file_matches_map_pspace(tmp_path, settings):
    """Product, sum with nan fill, difference and missing() in a task file run by psy."""
    from psyrun import Param, map_pspace
    from psyrun.pspace import missing

    write(tmp_path / "psy-tasks" / "task_alg.py", ALGEBRA_TASK.format(settings=settings))
    psy("run", cwd=tmp_path)
    result = load(tmp_path / "psy-work" / "alg" / "result.pkl")
    space = (
        Param(a=[1, 2]) + Param(a=[2, 3], b=[4, 4])
        + (Param(a=[1, 2, 3], b=[1, 2, 3]) - Param(a=[2]))
        + missing(Param(a=[5, 6, 7]), Param(a=[6], c=[4]))
    ) * Param(k=["u", "v"])  # fmt: skip

    def expected_fn(a, k, b=None):
        return {"desc": f"{k}{a}", "b_is_nan": b != b}

    expected = map_pspace(expected_fn, space)
    assert len(space) == 16
    keys = ["a", "k", "desc", "b_is_nan"]
    assert rows(result, keys) == rows(expected, keys)
    # b: nan where the guide says "missing values will be filled with nan".
    got_b = sorted(repr(float(v)) for v in np.asarray(result["b"], dtype=float))
    want_b = sorted(repr(float(v)) for v in np.asarray(expected["b"], dtype=float))
    assert got_b == want_b
    assert got_b.count("nan") == 8


SHARCNET_TASK = """
import numpy as np
from psyrun import Param, Sqsub
from psyrun.store.npz import NpzStore

pspace = Param(radius=np.linspace(0., 1., 10)) * Param(trial=np.arange(5))
min_items = 10
store = NpzStore()
workdir = {workdir!r}
scheduler = Sqsub(workdir)
scheduler_args = {{
    'timelimit': '15m',
    'memory': '1G',
}}

def execute(radius, trial):
    n = 100
    x = np.random.random((n, 2)) * 2. - 1.
    return {{'a_frac': np.mean(np.linalg.norm(x, axis=1) < radius), 'x': x}}
"""


def test_sharcnet_example_task_file(tmp_path):
    """The guide's Sharcnet task file (a smaller space: 50 rows, so 5 processing jobs)."""
    env = fake_env(tmp_path)
    workdir = tmp_path / "work" / "user" / "mc_circle_area"
    write(tmp_path / "psy-tasks" / "task_mc.py", SHARCNET_TASK.format(workdir=str(workdir)))
    out = psy("run", cwd=tmp_path, env=env)
    names = ["mc:split", *(f"mc:process:{i}" for i in range(5)), "mc:merge"]
    assert [n for m, n in marks(out.stdout) if m == "."] == names, show(out)
    calls = fake_calls(env, "sqsub")
    assert len(calls) == 7
    parsed = [parse_sqsub(argv) for argv in calls]
    ids = [str(100 + i) for i in range(7)]  # the fake sqsub numbers jobs from 100
    for (opts, command), name in zip(parsed, names):
        assert opts["-r"] == "15m"
        assert opts["--mpp"] == "1G"
        assert opts["-n"] == "1"  # n_cpus defaults to 1
        assert "-N" not in opts
        assert opts["-j"] == name
        assert Path(opts["-o"]).parent == workdir / "mc"
        assert Path(opts["-o"]).name == f"{name}.log"
        assert command[0] == sys.executable
    assert "-w" not in parsed[0][0]
    for opts, _ in parsed[1:6]:
        assert opts["-w"] == ids[0]
    assert parsed[6][0]["-w"].split(",") == ids[1:6]
    # Nothing has run yet.
    status = psy("status", cwd=tmp_path, env=env)
    assert "mc: 0 out of 50 rows completed" in status.stdout, show(status)
    # The cluster runs the jobs; then everything is there.
    run_sqsub_jobs(env, tmp_path)
    status = psy("status", cwd=tmp_path, env=env)
    assert "mc: 50 out of 50 rows completed" in status.stdout, show(status)
    from psyrun.store.npz import NpzStore

    result = NpzStore().load(str(workdir / "mc" / "result.npz"))
    assert sorted(result) == ["a_frac", "radius", "trial", "x"]
    assert result["x"].shape == (50, 100, 2)
    assert np.all((result["a_frac"] >= 0) & (result["a_frac"] <= 1))
    assert result["a_frac"][result["radius"] == 0.0].tolist() == [0.0] * 5
    assert marks(psy("run", cwd=tmp_path, env=env).stdout)[0] == ("-", "mc:split")


# ============================================================================= Data stores


def test_autodetect_store_selects_by_extension(tmp_path):
    import tables

    from psyrun.store import AutodetectStore

    data = {"a": np.array([1, 2, 3]), "b": np.array([0.5, 1.5, 2.5])}
    store = AutodetectStore()
    for ext in (".pkl", ".npz", ".h5", ".PKL"):
        store.save(str(tmp_path / f"d{ext}"), data)
        store.append(str(tmp_path / f"d{ext}"), {"a": [4], "b": [3.5]})
        loaded = store.load(str(tmp_path / f"d{ext}"))
        assert loaded["a"].tolist() == [1, 2, 3, 4]
        assert loaded["b"].tolist() == [0.5, 1.5, 2.5, 3.5]
    # Each file is really in the format its extension names.
    with open(tmp_path / "d.pkl", "rb") as f:
        assert pickle.load(f) is not None
    with np.load(tmp_path / "d.npz", allow_pickle=True) as npz:
        assert {"a", "b"} <= set(npz.files)
    with tables.open_file(str(tmp_path / "d.h5")) as h5:
        assert h5 is not None
    with pytest.raises(ValueError, match=r"\.pkl"):
        store.save(str(tmp_path / "d.unknown"), data)


def test_autodetect_store_as_a_task_store_follows_the_resultfile(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_ad.py",
        square_task(
            tmp_path / "calls", [1, 2, 3],
            header="from psyrun.store import AutodetectStore\n",
            settings="store = AutodetectStore()\nresultfile = 'out/result.h5'\nmax_jobs = 2",
        ),
    )  # fmt: skip
    psy("run", cwd=tmp_path)
    from psyrun.store.h5 import H5Store

    assert rows(H5Store().load(str(tmp_path / "out" / "result.h5"))) == [(1, 1), (2, 4), (3, 9)]
    assert "ad: 3 out of 3 rows completed" in psy("status", cwd=tmp_path).stdout


def test_stores_append_to_existing_files(tmp_path):
    from psyrun.store.h5 import H5Store
    from psyrun.store.npz import NpzStore
    from psyrun.store.pickle import PickleStore

    for store in (PickleStore(), NpzStore(), H5Store()):
        path = str(tmp_path / f"file{store.ext}")
        store.append(path, {"x": [1, 2], "y": [0.1, 0.2]})  # creates the file
        store.append(path, {"x": [3], "y": [0.3]})
        loaded = store.load(path)
        assert loaded["x"].tolist() == [1, 2, 3], store
        assert np.allclose(loaded["y"], [0.1, 0.2, 0.3]), store
        assert {k: v.tolist() for k, v in store.load(path, row=1).items()} == {
            "x": [2],
            "y": [0.2],
        }


def test_pickle_store_keeps_any_picklable_value(tmp_path):
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_obj.py",
        f"""
        from fractions import Fraction
        from psyrun import Param
        pspace = Param(name=['a', 'bb'])
        def execute(name):
            with open({str(side)!r}, 'a') as f:
                f.write('1\\n')
            return {{'info': {{'name': name, 'n': len(name)}}, 'frac': Fraction(1, len(name))}}
        """,
    )
    psy("run", cwd=tmp_path)
    from psyrun.store import DefaultStore, PickleStore

    assert DefaultStore is PickleStore
    result = PickleStore().load(str(tmp_path / "psy-work" / "obj" / "result.pkl"))
    by_name = {n: (i, f) for n, i, f in zip(result["name"], result["info"], result["frac"])}
    from fractions import Fraction

    assert by_name == {
        "a": ({"name": "a", "n": 1}, Fraction(1, 1)),
        "bb": ({"name": "bb", "n": 2}, Fraction(1, 2)),
    }


EXT_STORE_SOURCE = '''
"""A third-party store for the .ext format: one JSON object per line."""

import json
import os

import numpy as np

from psyrun.store import Store


class ExtStore(Store):
    ext = ".ext"

    def save(self, filename, data):
        if os.path.exists(filename):
            os.remove(filename)
        self.append(filename, data)

    def append(self, filename, data):
        cols = {k: np.asarray(v).tolist() for k, v in data.items()}
        n = len(next(iter(cols.values()))) if cols else 0
        with open(filename, "a") as f:
            for i in range(n):
                f.write(json.dumps({k: v[i] for k, v in cols.items()}) + "\\n")

    def load(self, filename, row=None):
        with open(filename) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if row is not None:
            records = records[row : row + 1]
        keys = sorted({k for r in records for k in r})
        return {k: np.array([r.get(k) for r in records]) for k in keys}
'''


def make_store_plugin(root: Path) -> Path:
    """An installed-looking distribution providing ``.ext`` in the ``psyrun.stores`` group."""
    site = root / "site"
    write(site / "extstore.py", EXT_STORE_SOURCE)
    info = site / "psyrun_ext_store-1.0.dist-info"
    write(info / "METADATA", "Metadata-Version: 2.1\nName: psyrun-ext-store\nVersion: 1.0\n")
    write(info / "entry_points.txt", "[psyrun.stores]\n.ext = extstore:ExtStore\n")
    return site


def test_store_plugins_from_the_psyrun_stores_entry_point_group(tmp_path):
    site = make_store_plugin(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    code = textwrap.dedent(
        f"""
        from psyrun.store import AutodetectStore
        store = AutodetectStore()
        path = {str(tmp_path / "direct.ext")!r}
        store.save(path, {{"x": [1, 2]}})
        store.append(path, {{"x": [3]}})
        print(type(store.load(path)["x"]).__name__, store.load(path)["x"].tolist())
        import extstore
        print(open(path).read().count("\\n"))
        """
    )
    direct = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=PSY_TIMEOUT,
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.split("\n")[:2] == ["ndarray [1, 2, 3]", "3"]

    # A task using the plugin store, and psy merge picking it by extension.
    write(
        tmp_path / "psy-tasks" / "task_plug.py",
        square_task(
            tmp_path / "calls", [1, 2, 3],
            header="from extstore import ExtStore\n", settings="store = ExtStore()\nmax_jobs = 3",
        ),
    )  # fmt: skip
    psy("run", cwd=tmp_path, env=env)
    result = tmp_path / "psy-work" / "plug" / "result.ext"
    assert len(result.read_text().splitlines()) == 3
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "0.ext").write_text('{"x": 1}\n{"x": 2}\n')
    (parts / "1.ext").write_text('{"x": 3}\n')
    psy("merge", "parts", "all.ext", cwd=tmp_path, env=env)
    merged = [json.loads(line)["x"] for line in (tmp_path / "all.ext").read_text().splitlines()]
    assert sorted(merged) == [1, 2, 3]


# ================================================================================ Backends


def test_distribute_backend_splits_processes_and_merges(tmp_path):
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_dist.py",
        square_task(
            side, range(10),
            header="from psyrun.backend import DistributeBackend\n",
            settings="backend = DistributeBackend\nmax_jobs = 4\nmin_items = 2",
        ),
    )  # fmt: skip
    out = psy("run", cwd=tmp_path)
    assert [n for _, n in marks(out.stdout)] == [
        "dist:split",
        *(f"dist:process:{i}" for i in range(4)),
        "dist:merge",
    ]
    result = load(tmp_path / "psy-work" / "dist" / "result.pkl")
    # The distributed result keeps the parameter space's order.
    assert np.asarray(result["x"]).tolist() == list(range(10))
    assert np.asarray(result["y"]).tolist() == [x * x for x in range(10)]


GPU_RECIPE_TASK = """
import os
import threading

from psyrun import Param
from psyrun.backend import LoadBalancingBackend

pspace = Param(x=list(range(24)))

backend = LoadBalancingBackend
pool_size = 4  # Adjust to the number of GPUs you have
max_jobs = 1  # Single job that will start multiple parallel processes.

exclude_from_result = ['cl_context']  # The context cannot be saved to disk.


class FakeContext:
    # Like an OpenCL context: it cannot be pickled (a lock inside).
    def __init__(self, answers):
        self.answers = answers
        self.lock = threading.Lock()


def setup(proc_id):
    with open({side!r}, 'a') as f:
        f.write(f'{{proc_id}} {{os.getpid()}}\\n')
    return {{
        'cl_context': FakeContext(answers=[0, proc_id]),
    }}


def execute(cl_context, **kwargs):
    result = {{'y': kwargs['x'] ** 2, 'device': cl_context.answers[1], 'pid': os.getpid()}}
    return result
"""


def test_gpu_load_balancing_recipe(tmp_path):
    side = tmp_path / "setups"
    write(tmp_path / "psy-tasks" / "task_gpu.py", GPU_RECIPE_TASK.format(side=str(side)))
    out = psy("run", cwd=tmp_path)
    assert [n for _, n in marks(out.stdout)] == ["gpu:split", "gpu:process:0", "gpu:merge"]
    result = load(tmp_path / "psy-work" / "gpu" / "result.pkl")
    assert "cl_context" not in result
    assert rows(result, ["x", "y"]) == [(x, x * x) for x in range(24)]
    setups = [tuple(map(int, line.split())) for line in side.read_text().splitlines()]
    proc_ids = [p for p, _ in setups]
    assert len(proc_ids) == len(set(proc_ids))
    assert set(proc_ids) <= {0, 1, 2, 3}
    # Each row was computed by a process with the context its setup(proc_id) made.
    pid_of = {pid: p for p, pid in setups}
    devices = np.asarray(result["device"]).tolist()
    pids = np.asarray(result["pid"]).tolist()
    assert all(pid_of[pid] == dev for pid, dev in zip(pids, devices))
    assert len(set(pids)) > 1, "pool_size = 4 but one process did all the work"
    # psy test runs setup and one assignment directly, also for this task.
    tested = psy("test", "gpu", cwd=tmp_path)
    assert "gpu" in tested.stdout
    assert len(side.read_text().splitlines()) == len(setups) + 1


# ============================================================================== Schedulers


SLURM_ARGS = """
scheduler_args = {
    'timelimit': lambda name: '2:00:00' if name.endswith('merge') else '10:00',
    'memory': '4G',
    'memory_per_cpu': '1G',
    'n_cpus': lambda name: 4 if ':process' in name else 1,
    'n_nodes': 1,
    'cores-per-socket': 2,
    'sockets-per-node': 1,
}
"""


@pytest.mark.parametrize("form", ["Slurm", "Slurm()"])
def test_slurm_scheduler_args_become_sbatch_options(tmp_path, form):
    env = fake_env(tmp_path)
    side = tmp_path / "calls"
    write(
        tmp_path / "psy-tasks" / "task_sl.py",
        square_task(
            side, range(6),
            header="from psyrun import Slurm\n",
            settings=f"scheduler = {form}\nmax_jobs = 3\n{SLURM_ARGS}",
        ),
    )  # fmt: skip
    out = psy("run", cwd=tmp_path, env=env)
    assert [n for m, n in marks(out.stdout) if m == "."] == [
        "sl:split", "sl:process:0", "sl:process:1", "sl:process:2", "sl:merge"
    ], show(out)  # fmt: skip
    assert executed(side) == [], "jobs ran on submission"
    submissions = [parse_sbatch(argv)[0] for argv in fake_calls(env, "sbatch")]
    assert submissions, "sbatch was not called"
    common = {
        "mem": "4G", "mem-per-cpu": "1G", "nodes": "1", "cores-per-socket": "2",
        "sockets-per-node": "1",
    }  # fmt: skip
    by_name: dict[str, dict] = {}
    for opts in submissions:
        for key, value in common.items():
            assert opts.get(key) == value, (key, opts)
        # On the batch system the name carries the run's tag: `sl:merge.1a2b3c4d`.
        name, tag = opts["job-name"].rsplit(".", 1)
        assert len(tag) == 8, opts["job-name"]
        by_name[name] = opts
    # Callables are called with the job name.
    merge = next(o for n, o in by_name.items() if n.endswith("merge"))
    split = next(o for n, o in by_name.items() if n.endswith("split"))
    process = [o for n, o in by_name.items() if ":process" in n]
    assert (merge["time"], merge["cpus-per-task"]) == ("2:00:00", "1")
    assert (split["time"], split["cpus-per-task"]) == ("10:00", "1")
    assert process
    assert all((o["time"], o["cpus-per-task"]) == ("10:00", "4") for o in process)
    # Processing waits for the split, the merge for the processing.
    assert all("afterok" in o.get("dependency", "") for o in (merge, *process))
    if form == "Slurm":
        return  # the rest does not depend on how the scheduler was given

    # Jobs in the queue (the fake sbatch numbered them 100, 101 (the array), 102) are
    # shown by psy status and killed by psy kill.
    script_fake(
        env, "squeue", "101_[0-2]|PD|Dependency|sl:process\n100|R|None|sl:split\n"
        "102|PD|Dependency|sl:merge\n",
    )  # fmt: skip
    status = psy("status", "-v", cwd=tmp_path, env=env)
    assert "sl: 0 out of 6 rows completed" in status.stdout, show(status)
    for name in ("sl:split", "sl:merge"):
        assert name in status.stdout, show(status)
    again = psy("run", cwd=tmp_path, env=env, check=False)
    assert len(fake_calls(env, "sbatch")) == len(submissions), "queued jobs were resubmitted"
    assert "queue" in again.stderr, show(again)
    psy("kill", "sl", cwd=tmp_path, env=env)
    killed = {i for argv in fake_calls(env, "scancel") for i in argv}
    assert {"100", "102"} <= killed
    assert {"101"} <= killed or {"101_0", "101_1", "101_2"} <= killed

    # Slurm runs the jobs (the queue is empty again): the task completes.
    script_fake(env, "squeue", "")
    run_sbatch_jobs(env, tmp_path)
    assert executed(side) == list(range(6))
    status = psy("status", cwd=tmp_path, env=env)
    assert "sl: 6 out of 6 rows completed" in status.stdout, show(status)
    assert rows(load(tmp_path / "psy-work" / "sl" / "result.pkl")) == [
        (x, x * x) for x in range(6)
    ]


@pytest.mark.parametrize("form", ["Sqsub", "Sqsub()"])
def test_sqsub_scheduler_args_become_sqsub_options(tmp_path, form):
    env = fake_env(tmp_path)
    write(
        tmp_path / "psy-tasks" / "task_sq.py",
        square_task(
            tmp_path / "calls", range(4),
            header="from psyrun import Sqsub\n",
            settings=f"scheduler = {form}\nmax_jobs = 2\n" + textwrap.dedent('''
                scheduler_args = {
                    'timelimit': lambda name: '2h' if name.endswith('merge') else '10m',
                    'n_cpus': 2,
                    'n_nodes': lambda name: 3,
                    'memory': '2G',
                }
            '''),
        ),
    )  # fmt: skip
    psy("run", cwd=tmp_path, env=env)
    parsed = [parse_sqsub(argv)[0] for argv in fake_calls(env, "sqsub")]
    assert [o["-j"] for o in parsed] == ["sq:split", "sq:process:0", "sq:process:1", "sq:merge"]
    for opts in parsed:
        assert (opts["-n"], opts["-N"], opts["--mpp"]) == ("2", "3", "2G")
        assert opts["-r"] == ("2h" if opts["-j"] == "sq:merge" else "10m")
    # Queued jobs: psy kill calls sqkill with their ids.
    script_fake(
        env, "sqjobs",
        "  jobid  queue state ncpus   nodes time command\n"
        "------ ------ ----- ----- ------- ---- -------\n"
        "   101 serial     Q     2       -  0s  python\n"
        "   103 serial     Q     2       -  0s  python\n",
    )  # fmt: skip
    status = psy("status", "-v", cwd=tmp_path, env=env)
    assert "sq:process:0" in status.stdout, show(status)
    assert "sq:merge" in status.stdout, show(status)
    psy("kill", "sq", cwd=tmp_path, env=env)
    assert {i for argv in fake_calls(env, "sqkill") for i in argv} == {"101", "103"}


def test_sqsub_requires_timelimit_and_memory(tmp_path):
    env = fake_env(tmp_path)
    write(
        tmp_path / "psy-tasks" / "task_req.py",
        square_task(
            tmp_path / "calls", [1],
            header="from psyrun import Sqsub\n",
            settings="scheduler = Sqsub()\nscheduler_args = {'timelimit': '1h'}\n",
        ),
    )  # fmt: skip
    result = psy("run", cwd=tmp_path, env=env, check=False)
    assert result.returncode != 0
    assert "memory" in result.stderr, show(result)
    assert "Traceback" not in result.stderr, show(result)
    assert fake_calls(env, "sqsub") == []


CUSTOM_SCHEDULER_TASK = '''
import json
import os

from psyrun import Param
from psyrun.scheduler import JobState, JobStatus, Scheduler


class FileQueue(Scheduler):
    """Only the four methods the guide names; jobs wait in a JSON file."""

    def __init__(self, path):
        self.path = path

    def _load(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return json.load(f)

    def _save(self, jobs):
        with open(self.path, "w") as f:
            json.dump(jobs, f)

    def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
        jobs = self._load()
        jobid = str(len(jobs))
        jobs.append({{"id": jobid, "args": list(args), "out": output_filename, "name": name,
                     "depends_on": list(depends_on or []), "args_seen": scheduler_args,
                     "state": "queued"}})
        self._save(jobs)
        return jobid

    def get_status(self, jobid):
        for job in self._load():
            if job["id"] == jobid and job["state"] == "queued":
                return JobStatus(jobid, JobState.QUEUED, job["name"])
        return None

    def get_jobs(self):
        return [job["id"] for job in self._load() if job["state"] == "queued"]

    def kill(self, jobid):
        jobs = self._load()
        for job in jobs:
            if job["id"] == jobid:
                job["state"] = "killed"
        self._save(jobs)


pspace = Param(x=list(range({n})))
min_items = {min_items}
scheduler = FileQueue({queue!r})
scheduler_args = {{"queue": "long"}}


def execute(x):
    return {{"y": x * x}}
'''


def test_interfacing_other_schedulers(tmp_path):
    queue = tmp_path / "queue.json"
    write(
        tmp_path / "psy-tasks" / "task_own.py",
        CUSTOM_SCHEDULER_TASK.format(n=5000, min_items=10, queue=str(queue)),
    )
    out = psy("run", cwd=tmp_path)
    jobs = json.loads(queue.read_text())
    # 5000 rows, min_items = 10 and the default max_jobs = 100: 100 processing jobs.
    names = ["own:split", *(f"own:process:{i}" for i in range(100)), "own:merge"]
    assert [j["name"] for j in jobs] == names, show(out)
    assert all(j["args_seen"] == {"queue": "long"} for j in jobs)
    assert all(j["depends_on"] == ["0"] for j in jobs[1:101])
    assert sorted(jobs[101]["depends_on"], key=int) == [str(i) for i in range(1, 101)]
    status = psy("status", "-v", "-v", cwd=tmp_path)
    assert "own: 0 out of 5000 rows completed" in status.stdout
    assert "own:merge" in status.stdout
    psy("kill", "own", cwd=tmp_path)
    assert {j["state"] for j in json.loads(queue.read_text())} == {"killed"}
    assert "own:merge" not in psy("status", cwd=tmp_path).stdout.split("failed")[0]

    # The same task with fewer jobs, run to completion by "the cluster".
    queue.unlink()
    psy("clean", "own", cwd=tmp_path)
    write(
        tmp_path / "psy-tasks" / "task_own.py",
        CUSTOM_SCHEDULER_TASK.format(n=30, min_items=10, queue=str(queue)),
    )
    psy("run", cwd=tmp_path)
    jobs = json.loads(queue.read_text())
    assert len(jobs) == 5
    for job in jobs:
        with open(job["out"], "w") as f:
            subprocess.run(job["args"], cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT,
                           check=True, timeout=PSY_TIMEOUT)  # fmt: skip
        job["state"] = "done"
        queue.write_text(json.dumps(jobs))
    assert "own: 30 out of 30 rows completed" in psy("status", cwd=tmp_path).stdout
    assert rows(load(tmp_path / "psy-work" / "own" / "result.pkl")) == [
        (x, x * x) for x in range(30)
    ]


SCHEDULER_0_8_TASK = """
import json
import os

from psyrun import Param
from psyrun.scheduler import JobStatus, Scheduler

QUEUE = {queue!r}


class OldQueue(Scheduler):
    # Written against psyrun 0.8, as its Sqsub was: integer job ids and the
    # documented status letters 'Q' (queued), '*Q' (waiting on another job),
    # 'R' (running), 'D' (completed).

    def _load(self):
        if not os.path.exists(QUEUE):
            return []
        with open(QUEUE) as f:
            return json.load(f)

    def _save(self, jobs):
        with open(QUEUE, 'w') as f:
            json.dump(jobs, f)

    def submit(self, args, output_filename, name=None, depends_on=None,
               scheduler_args=None):
        jobs = self._load()
        jobid = len(jobs)
        jobs.append({{'id': jobid, 'args': args, 'out': output_filename, 'name': name,
                      'status': '*Q' if depends_on else 'Q'}})
        self._save(jobs)
        return jobid

    def kill(self, jobid):
        jobs = self._load()
        for job in jobs:
            if job['id'] == jobid:
                job['status'] = 'killed'
        self._save(jobs)

    def get_status(self, jobid):
        for job in self._load():
            if job['id'] == jobid and job['status'] in ('Q', '*Q', 'R', 'D'):
                return JobStatus(jobid, job['status'], job['name'])
        return None

    def get_jobs(self):
        return [job['id'] for job in self._load() if job['status'] in ('Q', '*Q', 'R')]


pspace = Param(x=list(range(4)))
max_jobs = 2
scheduler = OldQueue()


def execute(x):
    return {{'y': x * x}}
"""


def test_scheduler_written_for_0_8_with_int_ids_and_status_letters(tmp_path):
    queue = tmp_path / "queue.json"
    write(tmp_path / "psy-tasks" / "task_old.py", SCHEDULER_0_8_TASK.format(queue=str(queue)))
    psy("run", cwd=tmp_path)
    assert len(json.loads(queue.read_text())) == 4
    status = psy("status", "-v", cwd=tmp_path)
    assert "old: 0 out of 4 rows completed" in status.stdout, show(status)
    assert "did not finish" not in status.stdout, show(status)  # they are queued
    for name in ("old:split", "old:process:0", "old:process:1", "old:merge"):
        assert name in status.stdout, show(status)
    again = psy("run", cwd=tmp_path)
    assert len(json.loads(queue.read_text())) == 4, "queued jobs were submitted again"
    assert "queue" in again.stderr, show(again)
    psy("kill", "old", cwd=tmp_path)
    assert {job["status"] for job in json.loads(queue.read_text())} == {"killed"}


def test_immediate_run_is_the_default_and_runs_jobs_on_submission(tmp_path):
    write(tmp_path / "psy-tasks" / "task_now.py", square_task(tmp_path / "calls", [3, 4]))
    psy("run", cwd=tmp_path)
    # When psy run returns, every job has run: no queue, complete results.
    assert executed(tmp_path / "calls") == [3, 4]
    assert (tmp_path / "psy-work" / "now" / "result.pkl").exists()
    from psyrun import ImmediateRun
    from psyrun.run import defaults
    from psyrun.tasks import Config

    assert isinstance(defaults.scheduler_for(SimpleNamespace(config=Config())), ImmediateRun)


# ================================================================================= Recipes


def test_convert_results_to_a_pandas_data_frame(tmp_path):
    import pandas as pd

    import psyrun

    write(tmp_path / "psy-tasks" / "task_df.py", square_task(tmp_path / "calls", [1, 2, 3]))
    psy("run", cwd=tmp_path)
    store = psyrun.PickleStore()
    df = pd.DataFrame(store.load(str(tmp_path / "psy-work" / "df" / "result.pkl")))
    assert sorted(df.columns) == ["x", "y"]
    assert sorted(zip(df["x"].tolist(), df["y"].tolist())) == [(1, 1), (2, 4), (3, 9)]


# =========================================================== Module paths users already import


IMPORTS = {
    "psyrun": [
        "Param", "map_pspace", "map_pspace_parallel", "map_pspace_hdd_backed",
        "DistributeBackend", "LoadBalancingBackend", "ImmediateRun", "Sqsub", "Slurm",
        "PickleStore", "DefaultStore",
    ],
    "psyrun.pspace": ["Param", "missing", "AmbiguousOperationError"],
    "psyrun.backend": ["DistributeBackend", "LoadBalancingBackend"],
    "psyrun.scheduler": ["Scheduler", "JobStatus", "ImmediateRun", "Slurm", "Sqsub"],
    "psyrun.store": ["Store", "AutodetectStore", "PickleStore", "DefaultStore"],
    "psyrun.store.pickle": ["PickleStore"],
    "psyrun.store.npz": ["NpzStore"],
    "psyrun.store.h5": ["H5Store"],
    "psyrun.store.zarr": ["ZarrStore"],
    "psyrun.tasks": ["Config", "TaskDef"],
    "psyrun.utils.example": ["square"],
    "psyrun.mapper": ["map_pspace", "map_pspace_parallel", "map_pspace_hdd_backed"],
}  # fmt: skip


def test_module_paths_users_already_import(tmp_path):
    lines = [f"from {module} import {', '.join(names)}" for module, names in IMPORTS.items()]
    lines.append("import psyrun.pspace, psyrun.backend, psyrun.scheduler, psyrun.store")
    lines.append("from psyrun import Sqsub, Slurm, PickleStore, ImmediateRun")
    lines.append("assert issubclass(Sqsub, Scheduler) and issubclass(Slurm, Scheduler)")
    lines.append("assert issubclass(PickleStore, Store) and DefaultStore is PickleStore")
    lines.append("assert square(3) == {'y': 9}")
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, cwd=tmp_path,
        timeout=PSY_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_map_pspace_hdd_backed_is_resumable(tmp_path):
    from psyrun import Param, map_pspace_hdd_backed
    from psyrun.store.pickle import PickleStore

    # Not in the guide's text but in the import list of 0.8 users: it must work.
    calls = []

    def f(x):
        calls.append(x)
        return {"y": 2 * x}

    path = str(tmp_path / "r.pkl")
    result = map_pspace_hdd_backed(f, Param(x=[1, 2, 3]), path, store=PickleStore())
    assert rows(result, ["x", "y"]) == [(1, 2), (2, 4), (3, 6)]
    calls.clear()
    again = map_pspace_hdd_backed(f, Param(x=[1, 2, 3, 4]), path, store=PickleStore())
    assert calls == [4]
    assert rows(again, ["x", "y"]) == [(1, 2), (2, 4), (3, 6), (4, 8)]

"""Print every benchmark figure next to its target, in one table.

Run with ``python benchmarks/report.py`` (all sections) or name sections:
``python benchmarks/report.py pspace store``; ``--rst`` prints the table as
reStructuredText for ``docs/benchmarks.rst``. The ``slurm`` section needs a
running cluster and is not in the default list. Each section is a module
``benchmarks/report_<name>.py`` with a ``collect()`` function returning rows
``{'what', 'measured', 'target', 'ok'}``. Figures are measured on this machine
in this run; compare them with each other, not with other machines.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time

SECTIONS = [
    "import",
    "pspace",
    "sampling",
    "rng",
    "store",
    "mapper",
    "run",
    "throughput",
    "report",
    "walltime",
    "firstuse",
    "local",
    "bigsweep",
]


def machine() -> str:
    """Describe the machine the figures were measured on."""
    import numpy

    cpu, memory = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the short description will do
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()}, "
        f"Python {platform.python_version()}, NumPy {numpy.__version__}"
    )


def _markdown(rows: list) -> None:
    width = max(len(r["what"]) for _, r in rows)
    print(f"| {'section':<7} | {'what':<{width}} | {'measured':>14} | {'target':<16} | ok  |")
    print(f"|{'-' * 9}|{'-' * (width + 2)}|{'-' * 16}|{'-' * 18}|-----|")
    for name, r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r.get("ok")]
        what, measured, target = r["what"], r["measured"], r["target"]
        print(f"| {name:<7} | {what:<{width}} | {measured:>14} | {target:<16} | {ok:<3} |")


def _rst(rows: list) -> None:
    def cell(text: str) -> str:
        # Leading spaces mark sub-rows in the plain table; keep them visible.
        text = str(text)
        stripped = text.lstrip()
        indent = "\u2003" * ((len(text) - len(stripped)) // 2)
        return (indent + stripped).replace("*", "\\*") or "-"

    print(".. list-table::")
    print("   :header-rows: 1")
    print("   :widths: 10 50 20 20 8")
    print()
    print("   * - Section\n     - Benchmark\n     - Measured\n     - Target\n     - Met")
    for name, r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r.get("ok")]
        print(f"   * - {name}")
        for value in (r["what"], r["measured"], r["target"], ok):
            print(f"     - {cell(value)}")


def main(argv: list[str]) -> int:
    """Run the named report sections (all by default) and print one table."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    # Measure psy as users run it: with Python's bytecode cache. Without it
    # (PYTHONDONTWRITEBYTECODE, set in some sandboxes) every job recompiles
    # each module it imports, which costs tens of milliseconds per job.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    rst = "--rst" in argv
    sections = [a for a in argv if a != "--rst"] or SECTIONS
    known = [*SECTIONS, "slurm"]
    unknown = [name for name in sections if name not in known]
    if unknown:
        print(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    rows = []
    for name in sections:
        module = importlib.import_module(f"report_{name}")
        started = time.perf_counter()
        for row in module.collect():
            rows.append((name, row))
        print(f"[{name}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)

    print(f"Measured on {machine()}, {time.strftime('%Y-%m-%d')}")
    print()
    (_rst if rst else _markdown)(rows)
    return 0 if all(r.get("ok") is not False for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Print every benchmark figure next to its target, in one table.

Run with ``python benchmarks/report.py`` (all sections) or name sections:
``python benchmarks/report.py pspace store``. Each section is a module
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

SECTIONS = ["import", "pspace", "store", "mapper", "run"]


def machine() -> str:
    """Describe the machine the figures were measured on."""
    import numpy

    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, NumPy {numpy.__version__}"
    )


def main(argv: list[str]) -> int:
    """Run the named report sections (all by default) and print one table."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sections = argv or SECTIONS
    rows = []
    for name in sections:
        module = importlib.import_module(f"report_{name}")
        started = time.perf_counter()
        for row in module.collect():
            rows.append((name, row))
        print(f"[{name}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)

    width = max(len(r["what"]) for _, r in rows)
    print(f"Measured on {machine()}, {time.strftime('%Y-%m-%d')}")
    print()
    print(f"| {'section':<7} | {'what':<{width}} | {'measured':>14} | {'target':<16} | ok  |")
    print(f"|{'-' * 9}|{'-' * (width + 2)}|{'-' * 16}|{'-' * 18}|-----|")
    for name, r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r.get("ok")]
        what, measured, target = r["what"], r["measured"], r["target"]
        print(f"| {name:<7} | {what:<{width}} | {measured:>14} | {target:<16} | {ok:<3} |")
    return 0 if all(r.get("ok") is not False for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

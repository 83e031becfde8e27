"""The test suite's own helpers: skip reasons fit on one line (issue 14.12)."""

from __future__ import annotations

from slurm_helpers import one_line, slurm_marks, slurm_unavailable_reason

BANNER = """
slurm_load_partitions: Unable to contact slurm controller (connect failure)
PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST
   (the controller at vm did not answer)
"""


def test_a_three_line_banner_becomes_one_line():
    line = one_line(BANNER)
    assert "\n" not in line
    assert line.startswith("slurm_load_partitions: Unable to contact")
    assert "PARTITION AVAIL TIMELIMIT" in line
    assert one_line("x" * 500).endswith("...")
    assert len(one_line("x" * 500)) == 160


def test_slurm_skip_reason_is_one_line():
    reason = slurm_unavailable_reason()
    assert reason is None or "\n" not in one_line(reason)
    for mark in slurm_marks():
        if mark.name == "skipif":
            assert "\n" not in mark.kwargs["reason"]

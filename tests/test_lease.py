"""Job leases (psyrun.run.lease): what a running job writes, and when it counts as live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from psyrun.run.lease import TTL, JobLease, live_leases, read_lease


def test_a_job_holds_its_lease_while_it_runs_and_removes_it(tmp_path):
    path = tmp_path / "status" / "t_process_0.lease"
    with JobLease(str(path), "t:process:0", refresh=0.05):
        lease = read_lease(str(path))
        assert lease is not None
        assert (lease.job, lease.pid) == ("t:process:0", os.getpid())
        before = os.stat(path).st_mtime_ns
        os.utime(path, (time.time() - 30, time.time() - 30))
        time.sleep(0.3)
        assert os.stat(path).st_mtime_ns >= before  # refreshed by its thread
        assert [x.job for x in live_leases(str(tmp_path / "status"))] == ["t:process:0"]
    assert not path.exists()
    assert live_leases(str(tmp_path / "status")) == []


def test_a_lease_of_a_dead_process_on_this_host_is_not_live(tmp_path):
    path = tmp_path / "t_process_0.lease"
    with JobLease(str(path), "t:process:0"):
        record = json.loads(path.read_text())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    record.update(pid=proc.pid, start=None)
    path.write_text(json.dumps(record))
    assert read_lease(str(path)) is None  # fresh, but its process has ended


def test_a_lease_from_another_host_is_live_until_it_is_stale(tmp_path):
    path = tmp_path / "t_process_1.lease"
    record = {"job": "t:process:1", "host": "elsewhere/boot", "pid": 1, "start": 5}
    path.write_text(json.dumps(record))
    lease = read_lease(str(path))
    assert lease is not None
    assert "pid 1 on elsewhere" in lease.describe()
    old = time.time() - TTL - 1
    os.utime(path, (old, old))
    assert read_lease(str(path)) is None
    path.write_text("{not json")
    assert read_lease(str(path)) is None

"""Run tags, held jobs and ``psy clean`` with jobs queued, against the fake Slurm commands.

The live counterparts (a real Slurm and Grid Engine, psy killed between
submission and reply) are in ``tests/faults/test_faults_cluster.py``; these
check the parsing and the rules without a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from psy_helpers import describe, psy, write_task

from psyrun.jobs import load_run
from psyrun.scheduler import JobState, Slurm
from psyrun.scheduler.gridengine import GridEngine, parse_qstat_xml

TASK = """
from psyrun import Param, Slurm
pspace = Param(x=list(range(6)))
scheduler = Slurm()
max_jobs = 3


def execute(x):
    return {"y": x * x}
"""


def submitted_json(project, task="t"):
    return json.loads((project / "psy-work" / task / "jobs" / "submitted.json").read_text())


def test_names_carry_the_run_tag_recorded_before_the_first_submission(project, fake):
    write_task(project, "t", TASK)
    # Answer every sbatch by failing, so that only the first submission happens.
    fake.script("sbatch", err="sbatch: error: Slurm temporarily unable to accept job", rc=1)
    result = psy("run", "t", cwd=project)
    assert result.returncode == 1, describe(result)
    assert "stay in its queue" in result.stderr, describe(result)
    ((argv,),) = [fake.calls("sbatch")]
    tag, groups = load_run(str(project / "psy-work" / "t" / "jobs" / "submitted.json"))
    assert tag is not None
    assert len(tag) == 8
    assert f"--job-name=t:split.{tag}" in argv
    assert groups == {"t:split": None, "t:process": 3, "t:merge": None}
    assert [job[1] for job in submitted_json(project)["jobs"]] == [""] * 5


def _tagged_queue(tag):
    return (
        f"100|R|None|t:split.{tag}\n"
        f"101_[1-2]|PD|Dependency|t:process.{tag}\n"
        f"101_0|R|None|t:process.{tag}\n"
        f"102|PD|JobHeldUser|t:merge.{tag}\n"
        "103|R|None|t:process.ffffffff\n"  # another run (or project) of a task named t
        f"104|R|None|other:merge.{tag}\n"
    )


def _interrupted_submission(project, fake):
    """A run whose ids never reached psy: submitted.json has the tag, no ids."""
    write_task(project, "t", TASK)
    fake.script("squeue", out="")
    assert psy("run", "t", cwd=project).returncode == 0
    path = project / "psy-work" / "t" / "jobs" / "submitted.json"
    data = json.loads(path.read_text())
    for job in data["jobs"]:
        job[1] = ""  # as if psy had been killed before it received any id
    path.write_text(json.dumps(data))
    fake.script("squeue", out=_tagged_queue(data["run"]))
    fake.log.unlink()


def test_status_kill_and_run_find_jobs_by_tag(project, fake):
    _interrupted_submission(project, fake)
    status = psy("status", "-v", "t", cwd=project)
    assert status.returncode == 0, describe(status)
    for line in [
        "t:split (id 100, running)",
        "t:process:0 (id 101_0, running)",
        "t:process:2 (id 101_2, queued)",
        "t:merge (id 102, queued: held (JobHeldUser))",
        "`scontrol release 102`",
    ]:
        assert line in status.stdout, describe(status)
    assert "103" not in status.stdout
    assert "104" not in status.stdout
    assert "did not finish" not in status.stdout
    assert len(fake.calls("squeue")) == 1  # the search costs no command of its own

    again = psy("run", "-c", "t", cwd=project)
    assert "still in the queue (3 queued, 2 running)" in again.stderr, describe(again)
    assert (
        "Of these, 1 held (JobHeldUser), which start only when released: `scontrol release 102`."
        in again.stderr
    )
    assert fake.calls("sbatch") == []

    killed = psy("kill", "t", cwd=project)
    assert "killed 5 jobs" in killed.stdout, describe(killed)
    (scancel,) = fake.calls("scancel")
    assert set(scancel) == {"100", "101", "102"}  # the array by its own id


def test_clean_refuses_while_jobs_are_queued_and_cancels_blocked_ones(project, fake):
    _interrupted_submission(project, fake)
    workdir = project / "psy-work" / "t"
    refused = psy("clean", "t", cwd=project)
    assert refused.returncode == 1, describe(refused)
    assert "5 jobs of this task are still in the queue" in refused.stderr
    assert "`psy kill t` cancels them" in refused.stderr
    assert workdir.exists()
    assert fake.calls("scancel") == []

    # Only a blocked merge left: it can never start, clean cancels it and cleans.
    tag = submitted_json(project)["run"]
    fake.script("squeue", out=f"102|PD|DependencyNeverSatisfied|t:merge.{tag}\n")
    cleaned = psy("clean", "t", cwd=project)
    assert cleaned.returncode == 0, describe(cleaned)
    assert fake.calls("scancel") == [["102"]]
    assert not workdir.exists()


def test_clean_refuses_when_the_queue_cannot_be_asked(project, fake):
    _interrupted_submission(project, fake)
    fake.script("squeue", err="slurm_load_jobs error: Unable to contact slurm controller", rc=1)
    refused = psy("clean", "t", cwd=project)
    assert refused.returncode == 1, describe(refused)
    assert "cannot tell whether jobs of this task are still in the queue" in refused.stderr
    assert (project / "psy-work" / "t").exists()


def test_slurm_find_run_names_split_arrays_by_their_offset(fake):
    fake.script(
        "squeue",
        out=(
            "7_[0-1]|PD|Resources|t:process.abc\n"
            "8_[0-1]|PD|Resources|t:process.abc+1001\n"
            "9|PD|Dependency|t:merge.abc\n"
            "10_0|R|None|t:process.abd\n"
        ),
    )
    found = Slurm().find_run("abc", {"t:process": 1003, "t:merge": None})
    assert {s.id: s.name for s in found} == {
        "7_0": "t:process:0",
        "7_1": "t:process:1",
        "8_0": "t:process:1001",
        "8_1": "t:process:1002",
        "9": "t:merge",
    }


def test_slurm_submission_puts_the_offset_into_later_array_names(fake):
    sched = Slurm(max_array_size=2)
    sched.run_tag = "abc"
    sched.submit_array(5, ["prog", "%a"], "p%a.log", name="t:process")
    names = [a for argv in fake.calls("sbatch") for a in argv if a.startswith("--job-name=")]
    assert names == [
        "--job-name=t:process.abc",
        "--job-name=t:process.abc+2",
        "--job-name=t:process.abc+4",
    ]
    sched.run_tag = None
    sched.submit(["prog"], "a.log", name="t:merge")
    assert "--job-name=t:merge" in fake.calls("sbatch")[-1]


QSTAT = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <job_list state="running">
      <JB_job_number>4</JB_job_number><state>r</state><tasks>1</tasks>
      <full_job_name>t_process.abc</full_job_name>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>4</JB_job_number><state>qw</state><tasks>2-3:1</tasks>
      <full_job_name>t_process.abc</full_job_name>
    </job_list>
    <job_list state="pending">
      <JB_job_number>5</JB_job_number><state>hqw</state>
      <full_job_name>t_merge.abc</full_job_name>
      <predecessor_jobs_req>4</predecessor_jobs_req><predecessor_jobs>4</predecessor_jobs>
    </job_list>
    <job_list state="pending">
      <JB_job_number>6</JB_job_number><state>hqw</state>
      <full_job_name>t_merge.abd</full_job_name>
    </job_list>
  </job_info>
</job_info>"""


def test_grid_engine_find_run_and_holds():
    statuses = parse_qstat_xml(QSTAT)
    # hqw waiting for a parent is a dependency; hqw with none left is someone's hold.
    assert not statuses["5"].held
    assert statuses["5"].reason is None
    assert statuses["6"].held
    assert statuses["6"].reason == "held (hqw)"
    assert statuses["6"].status is JobState.QUEUED
    sched = GridEngine()
    sched._statuses = statuses  # the cached answer of one qstat call
    found = sched.find_run("abc", {"t:process": 3, "t:merge": None})
    assert {s.id: s.name for s in found} == {
        "4.1": "t:process:0",
        "4.2": "t:process:1",
        "4.3": "t:process:2",
        "5": "t:merge",
    }
    assert sched.tagged_name("t:merge", "abc") == "t:merge.abc"
    assert sched.listed_name("t:merge.abc") == "t_merge.abc"


@pytest.mark.parametrize("tag", [None, ""])
def test_no_tag_no_search(tag, fake):
    assert Slurm().find_run(tag, {"t:merge": None}) is None
    assert fake.calls("squeue") == []


def _all_but_the_merge_done(project, fake) -> str:
    """Submit task t to the fake Slurm, mark every job but the merge done; the merge's id."""
    write_task(project, "t", TASK)
    fake.script("squeue", out="")
    assert psy("run", "t", cwd=project).returncode == 0
    status_dir = project / "psy-work" / "t" / "status"
    status_dir.mkdir(exist_ok=True)
    for job in ["t_split", "t_process_0", "t_process_1", "t_process_2"]:
        (status_dir / f"{job}.done").write_text("")
    return submitted_json(project)["jobs"][-1][1]


def test_blocked_merge_after_jobs_that_all_finished_is_explained(project, fake):
    # The batch system counted a job as failed (its time limit passed as it
    # ended) although it finished: the merge waits for ever, and status says why.
    merge_id = _all_but_the_merge_done(project, fake)
    fake.script("squeue", out=f"{merge_id}|PD|DependencyNeverSatisfied|t:merge.x\n")
    status = psy("status", "-v", "t", cwd=project)
    assert (
        f"t:merge (id {merge_id}, blocked: a job it waits for failed, timed out or was "
        "cancelled in Slurm's view (DependencyNeverSatisfied))"
    ) in status.stdout, describe(status)
    assert "the batch system counts one as failed" in status.stdout, describe(status)
    assert "`psy run -c t` cancels the blocked jobs" in status.stdout


def test_sbatch_timing_out_after_submission_the_job_is_still_found(
    project, fake, tmp_path, monkeypatch
):
    # sbatch takes the merge, then hangs past psyrun's timeout: its id never arrives.
    import psyrun.scheduler.slurm as slurm

    real = slurm.run_command
    monkeypatch.setattr(slurm, "run_command", lambda argv, **kw: real(argv, timeout=1, **kw))
    fakebin = Path(shutil.which("sbatch")).parent
    bindir = tmp_path / "slow"
    bindir.mkdir()
    (bindir / "sbatch").write_text(
        f'#!/bin/sh\n"{fakebin / "sbatch"}" "$@"\ncase "$*" in *:merge.*) exec sleep 3 ;; esac\n'
    )
    (bindir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    write_task(project, "t", TASK)
    fake.script("squeue", out="")
    run = psy("run", "t", cwd=project)
    assert run.returncode == 1, describe(run)
    assert "did not answer within 1 s" in run.stderr, describe(run)
    assert "`psy status t` shows them" in run.stderr, describe(run)
    data = submitted_json(project)
    ids = [job[1] for job in data["jobs"]]
    assert ids == ["100", "101_0", "101_1", "101_2", ""]  # the merge's id never came
    # The batch system has it (the fake numbered it 102): status and -c see it.
    fake.script("squeue", out=f"102|PD|Dependency|t:merge.{data['run']}\n")
    status = psy("status", "-v", "t", cwd=project)
    assert "t:merge (id 102, queued)" in status.stdout, describe(status)
    again = psy("run", "-c", "t", cwd=project)
    assert "still in the queue (1 queued)" in again.stderr, describe(again)
    assert len(fake.calls("sbatch")) == 3


SPY_TASK = """
import json, os
from psyrun import Param
from psyrun.scheduler import Scheduler

SEEN = {seen!r}


class Spy(Scheduler):
    def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
        # What a psy killed at this moment leaves on disk, and the tag this job carries.
        with open("psy-work/t/jobs/submitted.json") as f:
            record = json.load(f)
        with open(SEEN, "a") as f:
            f.write(json.dumps([name, self.run_tag, record]) + "\\n")
        with open(SEEN) as f:
            return str(len(f.read().splitlines()))

    def kill(self, jobid):
        pass

    def get_status(self, jobid):
        return None

    def get_jobs(self):
        return []


pspace = Param(x=list(range(4)))
scheduler = Spy()
max_jobs = 2


def execute(x):
    return {{"y": x}}
"""


def test_the_intent_is_on_disk_before_the_first_job_is_submitted(project):
    seen = project / "seen.jsonl"
    write_task(project, "t", SPY_TASK.format(seen=str(seen)))
    run = psy("run", "t", cwd=project)
    assert run.returncode == 0, describe(run)
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [name for name, _, _ in records] == ["t:split", "t:process:0", "t:process:1", "t:merge"]
    first_tag = records[0][2]["run"]
    for _name, tag, record in records:
        assert tag == first_tag  # every job of the run carries the recorded tag
        assert record["run"] == first_tag
        assert record["groups"] == [["t:split", None], ["t:process", 2], ["t:merge", None]]
    assert all(job[1] == "" for job in records[0][2]["jobs"])
    # Afterwards the ids are recorded.
    assert [job[1] for job in submitted_json(project)["jobs"]] == ["1", "2", "3", "4"]


def test_grid_engine_lists_failed_jobs_it_keeps_as_lingering():
    sched = GridEngine()
    sched._statuses = parse_qstat_xml(
        QSTAT.replace("<state>qw</state><tasks>2-3:1", "<state>Eqw</state><tasks>2-3:1")
    )
    assert sched.get_lingering(["4.1", "4.2", "4.3", "5", "99"]) == ["4.2", "4.3"]
    # Found by the run tag too, so that psy kill and psy run -c delete them.
    found = {s.id: s.status for s in sched.find_run("abc", {"t:process": 3, "t:merge": None})}
    assert found["4.2"] is JobState.FAILED
    assert Slurm().get_lingering([]) == []


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("JobHeldUser", "`scontrol release"),
        ("DependencyNeverSatisfied", "a job it waits for failed"),
    ],
)
def test_watch_ends_when_only_jobs_that_cannot_start_by_themselves_are_left(
    project, fake, reason, said
):
    # A held merge, or one blocked by a failed dependency, waits for a person:
    # --watch says what holds it up and exits 1 instead of waiting for ever.
    merge_id = _all_but_the_merge_done(project, fake)
    fake.script("squeue", out=f"{merge_id}|PD|{reason}|t:merge.x\n")
    watched = psy("status", "--watch", "--interval", "0.1", "t", cwd=project, timeout=60)
    assert watched.returncode == 1, describe(watched)
    assert "jobs cannot start by themselves" in watched.stdout, describe(watched)
    assert said in watched.stdout, describe(watched)
    assert not any(line.endswith("complete") for line in watched.stdout.splitlines())

"""Shared body of the fake cluster commands in this directory (used by unit tests).

Each fake (sbatch, squeue, scancel, scontrol, sqsub, sqjobs, sqkill; in
``pbs/`` qsub, qstat, qdel; in ``lsf/`` bsub, bjobs, bkill) is a tiny shell
script that runs this file with its own name. It

- appends one JSON line ``{"prog": name, "argv": [...]}`` to the file named by
  ``PSYRUN_FAKE_LOG`` (when set);
- prints scripted output from ``$PSYRUN_FAKE_DIR``: ``<name>.out`` to stdout,
  ``<name>.err`` to stderr, and exits with the number in ``<name>.rc``;
- without a ``<name>.out``: sbatch prints the next job id (from a counter in
  ``$PSYRUN_FAKE_DIR/next_id``, starting at 100; with ``--parsable`` just the
  id, else ``Submitted batch job N``), sqsub prints ``submitted as jobid N``,
  ``scontrol show config`` prints a MaxArraySize line (``$PSYRUN_FAKE_MAX_ARRAY_SIZE``,
  default 1001), the others print nothing;
- PBS's qsub prints ``N.fakesrv`` (``N[].fakesrv`` for an array: ``-J``/``-t``)
  and LSF's bsub ``Job <N> is submitted to queue <normal>.``; both read the job
  script from stdin and log it as ``"stdin"``. With ``PSYRUN_FAKE_RUN=1`` they
  also run it with bash, once per array index with the index variable set
  (PBS_ARRAY_INDEX for -J, PBS_ARRAYID for -t, LSB_JOBINDEX for bsub).
"""

import json
import os
import re
import subprocess
import sys


def _next_id(state_dir: str) -> int:
    path = os.path.join(state_dir, "next_id")
    try:
        with open(path) as f:
            value = int(f.read().strip() or 100)
    except FileNotFoundError:
        value = 100
    with open(path, "w") as f:
        f.write(str(value + 1))
    return value


def main() -> int:
    prog, args = sys.argv[1], sys.argv[2:]
    log = os.environ.get("PSYRUN_FAKE_LOG")
    stdin = sys.stdin.read() if prog in ("qsub", "bsub") else None
    if log:
        record = {"prog": prog, "argv": args}
        if stdin is not None:
            record["stdin"] = stdin
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    state_dir = os.environ.get("PSYRUN_FAKE_DIR", "")

    def scripted(ext):
        path = os.path.join(state_dir, f"{prog}.{ext}")
        if state_dir and os.path.exists(path):
            with open(path) as f:
                return f.read()
        return None

    out, err, rc = scripted("out"), scripted("err"), scripted("rc")
    if err:
        sys.stderr.write(err)
    code = int(rc.strip()) if rc else 0
    if out is not None:
        sys.stdout.write(out)
    elif code == 0 and prog == "sbatch":
        jobid = _next_id(state_dir)
        print(jobid if "--parsable" in args else f"Submitted batch job {jobid}")
    elif code == 0 and prog == "qsub":
        jobid = _next_id(state_dir)
        indices, variable = _pbs_array(args)
        print(f"{jobid}[].fakesrv" if indices else f"{jobid}.fakesrv")
        _run_job(stdin, indices, variable)
    elif code == 0 and prog == "bsub":
        jobid = _next_id(state_dir)
        print(f"Job <{jobid}> is submitted to queue <normal>.")
        name = args[args.index("-J") + 1] if "-J" in args else ""
        m = re.search(r"\[(\d+)-(\d+)\]", name)
        indices = range(int(m.group(1)), int(m.group(2)) + 1) if m else None
        _run_job(stdin, indices, "LSB_JOBINDEX")
    elif code == 0 and prog == "sqsub":
        print(f"submitted as jobid {_next_id(state_dir)}")
    elif prog == "scontrol" and args[:2] == ["show", "config"]:
        print("Configuration data as of 2024-01-01T00:00:00")
        print("AccountingStorageType   = accounting_storage/none")
        size = os.environ.get("PSYRUN_FAKE_MAX_ARRAY_SIZE", "1001")
        print(f"MaxArraySize            = {size}")
        print("MaxJobCount             = 10000")
    return code


def _pbs_array(args):
    for flag, variable in (("-J", "PBS_ARRAY_INDEX"), ("-t", "PBS_ARRAYID")):
        if flag in args:
            lo, hi = args[args.index(flag) + 1].split("%", 1)[0].split("-")
            return range(int(lo), int(hi) + 1), variable
    return None, None


def _run_job(script, indices, variable):
    """Run the job script as the batch system would (only with PSYRUN_FAKE_RUN)."""
    if not os.environ.get("PSYRUN_FAKE_RUN") or script is None:
        return
    for index in indices if indices is not None else [None]:
        env = dict(os.environ)
        if index is not None:
            env[variable] = str(index)
        subprocess.run(["bash", "-c", script], env=env, check=False)


if __name__ == "__main__":
    sys.exit(main())

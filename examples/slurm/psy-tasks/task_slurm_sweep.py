"""A template for running a sweep on a Slurm cluster; copy it and adapt it.

Submit from a login node of the cluster, in the directory that holds
``psy-tasks`` (the jobs start there, with the environment of submission, so
activate your virtual environment first)::

    psy test slurm_sweep     # one assignment, right here, as a check
    psy run slurm_sweep      # submit: split job, one job array, merge job
    psy status -v slurm_sweep
    psy run -c slurm_sweep   # after failures or a time-limit kill: only what is missing

``psy new-task --scheduler Slurm <name>`` writes a shorter template like it.
"""

import numpy as np

from psyrun import Param, Slurm
from psyrun.store.npz import NpzStore

# 40 x 25 = 1,000 assignments.
pspace = Param(noise=np.linspace(0.0, 2.0, 40)) * Param(seed=np.arange(25))

scheduler = Slurm()
# 1,000 assignments in 50 processing jobs of 20 each: one sbatch for the split
# job, one job array of 50 tasks, one merge job depending on the array.
max_jobs = 50
min_items = 20
store = NpzStore()

# Put intermediate files and results on a file system the compute nodes see
# (for example a scratch or project directory), not on node-local /tmp.
workdir = "psy-work"


def timelimit(job_name):
    # The merge job reads every part file: give it more time than the rest.
    return "2:00:00" if job_name.endswith(":merge") else "0:30:00"


scheduler_args = {
    "timelimit": timelimit,  # --time; a value or a function of the job name
    "n_cpus": 1,  # --cpus-per-task
    "memory_per_cpu": "2G",  # --mem-per-cpu
    "max_running": 20,  # at most 20 tasks of the array run at once (--array=...%20)
    # Any other sbatch option, as a dict of option -> value or a list of arguments.
    # Adapt the partition to your cluster (`sinfo -s` lists them; the local test
    # cluster of scripts/local-slurm.sh calls its only partition "debug").
    "sbatch_args": {"partition": "compute"},
}


def execute(noise, seed):
    rng = np.random.default_rng(seed)
    signal = np.sin(np.linspace(0.0, 2.0 * np.pi, 500))
    observed = signal + rng.normal(0.0, noise, size=signal.shape)
    return {"rmse": float(np.sqrt(np.mean((observed - signal) ** 2)))}

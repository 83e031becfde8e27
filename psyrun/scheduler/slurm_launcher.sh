#!/bin/bash
# psyrun's fixed Slurm batch script: runs the argv it is given, nothing else.
#
#   sbatch [options] slurm_launcher.sh MODE OUTPUT -- ARGV...
#
# MODE is "single" for one job, or the array offset (an integer) for a job
# array: the task's index is SLURM_ARRAY_TASK_ID + offset (arrays larger than
# the cluster's MaxArraySize are split into several submissions). In array
# mode every "%a" in ARGV is replaced by that index; when OUTPUT is not empty,
# stdout and stderr go to OUTPUT with "%a" replaced the same way (otherwise
# sbatch --output already points at the right file).
set -u
mode=$1
output=$2
shift 2
if [ "${1-}" = "--" ]; then shift; fi
if [ "$mode" != "single" ]; then
    index=$(( ${SLURM_ARRAY_TASK_ID:?not run as an array task} + mode ))
    token='%a'
    argv=()
    for arg in "$@"; do
        argv+=("${arg//"$token"/$index}")
    done
    if [ -n "$output" ]; then
        exec >"${output//"$token"/$index}" 2>&1
    fi
    exec "${argv[@]}"
fi
exec "$@"

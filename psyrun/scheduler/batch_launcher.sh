#!/bin/bash
# psyrun's fixed job script for PBS and LSF: runs the argv it is given, nothing else.
#
#   batch_launcher.sh INDEX_VARIABLE FIRST OFFSET OUTPUT -- ARGV...
#
# INDEX_VARIABLE is empty for a single job. For an array task it names the
# variable that holds the task's index as the batch system counts
# (PBS_ARRAY_INDEX, PBS_ARRAYID, LSB_JOBINDEX); psyrun's index is that value
# minus FIRST (LSF counts from 1) plus OFFSET (arrays split into several
# submissions), and every "%a" in ARGV and OUTPUT becomes it. stdout and
# stderr go to OUTPUT.
set -u
var=$1
first=$2
offset=$3
output=$4
shift 4
if [ "${1-}" = "--" ]; then shift; fi
if [ -n "$var" ]; then
    index=$(( ${!var:?not run as an array task} - first + offset ))
    token='%a'
    argv=()
    for arg in "$@"; do
        argv+=("${arg//"$token"/$index}")
    done
    output=${output//"$token"/$index}
    set -- "${argv[@]}"
fi
exec >"$output" 2>&1
exec "$@"

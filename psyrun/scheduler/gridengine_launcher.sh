#!/bin/sh
# psyrun's fixed Grid Engine job script: runs the argv it is given, nothing else.
#
#   qsub [options] -S /bin/sh gridengine_launcher.sh MODE OUTPUT -- ARGV...
#
# MODE is "single" for one job, or the array offset (an integer) for a task
# array: the task's psyrun index is SGE_TASK_ID - 1 + offset (Grid Engine
# counts tasks from 1, psyrun from 0; arrays larger than the cluster's
# max_aj_tasks are split into several submissions). In array mode every "%a"
# in ARGV and OUTPUT is replaced by that index. When OUTPUT is not empty,
# stdout and stderr go to it (otherwise qsub -o already points at the file).
#
# A failing command exits with status 100: Grid Engine then keeps the job in
# its error state (Eqw), so that jobs submitted with -hold_jid on it never
# start (the "after ok" meaning psyrun's dependencies have). Written for any
# POSIX sh.
mode=$1
output=$2
shift 2
if [ "${1-}" = "--" ]; then shift; fi

# subst TEXT INDEX: print TEXT with every "%a" replaced by INDEX (no newline added).
subst() {
    rest=$1
    done_=
    while :; do
        case $rest in
            *%a*)
                done_=$done_${rest%%"%a"*}$2
                rest=${rest#*"%a"}
                ;;
            *) break ;;
        esac
    done
    printf '%s' "$done_$rest"
}

if [ "$mode" != single ]; then
    case ${SGE_TASK_ID-} in
        ''|*[!0-9]*) echo "psyrun: not run as a Grid Engine array task (SGE_TASK_ID='${SGE_TASK_ID-}')" >&2; exit 100 ;;
    esac
    index=$((SGE_TASK_ID - 1 + mode))
    n=$#
    while [ "$n" -gt 0 ]; do
        # The trailing "x" keeps trailing newlines of an argument.
        arg=$(subst "$1" "$index"; printf x)
        shift
        set -- "$@" "${arg%x}"
        n=$((n - 1))
    done
    if [ -n "$output" ]; then
        output=$(subst "$output" "$index"; printf x)
        output=${output%x}
    fi
fi
if [ -n "$output" ]; then
    exec >"$output" 2>&1
fi
"$@"
status=$?
if [ "$status" -ne 0 ]; then
    echo "psyrun: the job's command exited with status $status" >&2
    exit 100
fi
exit 0

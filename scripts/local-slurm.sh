#!/usr/bin/env bash
# A one-node Slurm on this machine, for psyrun's tests marked `slurm`.
#
#   bash scripts/local-slurm.sh start    # install if missing, configure, start, wait until idle
#   bash scripts/local-slurm.sh status   # exit 0 when sbatch can be used
#   bash scripts/local-slurm.sh stop     # cancel all jobs, stop only the daemons `start` started
#
# Needs root on a Debian-like machine (apt-get, /etc/slurm). No systemd or
# cgroups needed. `start` is idempotent: daemons that already answer are left
# alone (and are not stopped by `stop`, because this script did not start them).
#
# Environment:
#   PSYRUN_SLURM_DIR   state, spool, logs and pid files (default /tmp/psyrun-local-slurm)
#   PSYRUN_SLURM_DEPENDENCY_PARAMETERS
#                      value for slurm.conf's DependencyParameters (default: empty,
#                      see the comment written into slurm.conf)
set -euo pipefail

DIR=${PSYRUN_SLURM_DIR:-/tmp/psyrun-local-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by psyrun scripts/local-slurm.sh"
STARTED="$DIR/started"   # lines "<daemon> <pid>" of the daemons this script started
PACKAGES=(slurmctld slurmd slurm-client munge)
WAIT_SECONDS=${PSYRUN_SLURM_WAIT:-60}

log() { echo "local-slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "run as root (it installs packages and writes $CONF)"
}

have_packages() {
    [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] \
        && command -v sbatch >/dev/null && command -v munge >/dev/null
}

install_packages() {
    if have_packages; then return; fi
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    have_packages || die "the packages ${PACKAGES[*]} did not install"
}

munge_ok() {
    # A dead munged makes every Slurm client call hang for ~49 s: check it first, quickly.
    timeout 5 bash -c 'munge -n | unmunge' >/dev/null 2>&1
}

record() { echo "$1 $2" >>"$STARTED"; }

pid_from_file() {
    local f=$1 i
    for i in $(seq 50); do
        if [ -s "$f" ]; then cat "$f"; return 0; fi
        sleep 0.1
    done
    return 1
}

start_munge() {
    if munge_ok; then log "munged already answers"; return; fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --force
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    local pid
    pid=$(pid_from_file /run/munge/munged.pid) || die "munged wrote no pid file"
    record munged "$pid"
    local i
    for i in $(seq 50); do
        if munge_ok; then log "munged started (pid $pid)"; return; fi
        sleep 0.1
    done
    die "munged (pid $pid) does not answer; see /var/log/munge/munged.log"
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    local host hw cpus boards sockets cores threads mem
    host=$(hostname -s)
    # slurmd -C prints this machine's hardware as a NodeName line.
    hw=$(slurmd -C | head -n 1)
    field() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    # A little below the measured memory so that the node is never drained for it.
    mem=$(( mem * 95 / 100 ))
    mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"
    cat >"$CONF.tmp" <<EOF
$MARKER
# A one-node cluster for psyrun's tests; state, logs and pid files in $DIR.
ClusterName=psyrun-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Back-to-back jobs start 1 s apart instead of 3 s.
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
# MaxArraySize and MaxJobCount are left at Slurm's defaults (1001 and 10000), the
# values users meet on clusters. Every array task counts against MaxJobCount until
# its record is purged MinJobAge after it ended; at the default (300 s) two test runs
# that submit 5000 tasks each in a row make sbatch retry for 2 minutes and fail.
MinJobAge=30
# DependencyParameters: by default a job whose parent failed stays pending with
# reason DependencyNeverSatisfied, as on many production clusters; psyrun must
# detect that (JobState.BLOCKED). Set PSYRUN_SLURM_DEPENDENCY_PARAMETERS=kill_invalid_depend
# to have Slurm cancel such jobs instead.
EOF
    if [ -n "${PSYRUN_SLURM_DEPENDENCY_PARAMETERS:-}" ]; then
        echo "DependencyParameters=$PSYRUN_SLURM_DEPENDENCY_PARAMETERS" >>"$CONF.tmp"
    fi
    cat >>"$CONF.tmp" <<EOF
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [ -e "$CONF" ] && cmp -s "$CONF.tmp" "$CONF"; then
        rm -f "$CONF.tmp"
    else
        mv "$CONF.tmp" "$CONF"
        # A running controller reads a changed file only when told to.
        if ctld_up; then timeout 20 scontrol reconfigure || true; fi
    fi
    NODE=$host
}

ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1; }

start_slurm() {
    if ctld_up; then
        log "slurmctld already answers"
    else
        rm -f "$DIR/slurmctld.pid"
        slurmctld
        local pid
        pid=$(pid_from_file "$DIR/slurmctld.pid") || die "slurmctld did not start; see $DIR/slurmctld.log"
        record slurmctld "$pid"
        log "slurmctld started (pid $pid)"
    fi
    if [ -s "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; then
        log "slurmd already running"
    else
        rm -f "$DIR/slurmd.pid"
        slurmd -N "$NODE"
        local pid
        pid=$(pid_from_file "$DIR/slurmd.pid") || die "slurmd did not start; see $DIR/slurmd.log"
        record slurmd "$pid"
        log "slurmd started (pid $pid)"
    fi
}

wait_idle() {
    local deadline=$((SECONDS + WAIT_SECONDS)) state=""
    while [ $SECONDS -lt $deadline ]; do
        if ctld_up; then
            state=$(node_state)
            case "$state" in
                idle*|mixed*|allocated*) log "node $NODE is $state"; return 0 ;;
                down*|drain*)
                    timeout 10 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
            esac
        fi
        sleep 0.2
    done
    die "the node did not become idle within ${WAIT_SECONDS}s (state '${state}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
}

cmd_start() {
    need_root
    mkdir -p "$DIR"
    touch "$STARTED"
    install_packages
    start_munge
    write_config
    start_slurm
    wait_idle
    log "ready: sbatch, squeue and scancel use $CONF"
}

pid_alive() { kill -0 "$1" 2>/dev/null; }

wait_gone() {
    local pid=$1 i
    for i in $(seq 100); do pid_alive "$pid" || return 0; sleep 0.1; done
    return 1
}

cmd_stop() {
    need_root
    if [ ! -s "$STARTED" ]; then log "nothing to stop: this script started no daemon"; return 0; fi
    local ctld_pid="" slurmd_pid="" munged_pid="" daemon pid
    while read -r daemon pid; do
        case "$daemon" in
            slurmctld) ctld_pid=$pid ;;
            slurmd) slurmd_pid=$pid ;;
            munged) munged_pid=$pid ;;
        esac
    done <"$STARTED"
    if munge_ok && ctld_up; then
        # Cancel every job so that nothing is left running on the node.
        local jobs
        jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            # shellcheck disable=SC2086 - one job id per word
            timeout 20 scancel $jobs || true
            local i
            for i in $(seq 50); do
                [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    # Stop only our own daemons, by pid (never by name).
    for pid in "$slurmd_pid" "$ctld_pid"; do
        if [ -n "$pid" ] && pid_alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$munged_pid" ] && pid_alive "$munged_pid"; then
        kill -TERM "$munged_pid" 2>/dev/null || true
        wait_gone "$munged_pid" || kill -KILL "$munged_pid" 2>/dev/null || true
    fi
    rm -f "$STARTED"
    log "stopped the daemons this script had started"
}

cmd_status() {
    if ! command -v sbatch >/dev/null; then log "Slurm is not installed"; return 1; fi
    if ! munge_ok; then log "munged does not answer"; return 1; fi
    if ! ctld_up; then log "slurmctld does not answer"; return 1; fi
    timeout 10 sinfo -h -o '%P %D %T %C' || true
    [ -s "$STARTED" ] && log "started by this script: $(tr '\n' ' ' <"$STARTED")"
    return 0
}

NODE=$(hostname -s)
case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

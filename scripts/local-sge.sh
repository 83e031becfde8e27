#!/usr/bin/env bash
# A one-node Grid Engine (Son of Grid Engine, Debian's gridengine-* packages) on
# this machine, for psyrun's tests marked `sge`.
#
#   bash scripts/local-sge.sh start    # install if missing, configure, start, wait for the queue
#   bash scripts/local-sge.sh status   # exit 0 when qsub can be used
#   bash scripts/local-sge.sh stop     # delete all jobs, stop only the daemons `start` started
#
# Needs root on a Debian-like machine (apt-get). No systemd needed. `start` is
# idempotent: daemons that already answer are left alone (and `stop` leaves them
# running, because this script did not start them). Clients need
# SGE_ROOT=/var/lib/gridengine SGE_CELL=default in their environment
# (`eval "$(bash scripts/local-sge.sh env)"` prints the exports).
#
# What it sets up: qmaster and execd on `hostname -s`; a queue all.q with one
# slot per CPU; a parallel environment `smp` ($pe_slots) for `-pe smp N`; jobs
# of root allowed (min_uid 0); a scheduler that runs every second and on every
# submission/job end (the default waits 15 s between runs).
#
# Environment:
#   PSYRUN_SGE_DIR    this script's own state: which daemons it started (default
#                     /tmp/psyrun-local-sge)
#   PSYRUN_SGE_SLOTS  slots of all.q (default: the number of CPUs)
#   PSYRUN_SGE_WAIT   seconds to wait for the queue to accept jobs (default 60)
set -euo pipefail

export SGE_ROOT=${SGE_ROOT:-/var/lib/gridengine}
export SGE_CELL=${SGE_CELL:-default}
DIR=${PSYRUN_SGE_DIR:-/tmp/psyrun-local-sge}
STARTED="$DIR/started"   # lines "<daemon> <pid>" of the daemons this script started
COMMON="$SGE_ROOT/$SGE_CELL/common"
SPOOL=/var/spool/gridengine
PACKAGES=(gridengine-master gridengine-exec gridengine-client)
WAIT_SECONDS=${PSYRUN_SGE_WAIT:-60}
HOST=$(hostname -s)
SLOTS=${PSYRUN_SGE_SLOTS:-$(nproc)}
QUEUE=all.q

log() { echo "local-sge: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "run as root (it installs packages and configures $SGE_ROOT)"
}

have_packages() {
    [ -x /usr/sbin/sge_qmaster ] && [ -x /usr/sbin/sge_execd ] \
        && command -v qsub >/dev/null && command -v qconf >/dev/null
}

install_packages() {
    if have_packages; then return; fi
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' scripts try to start the daemons and are refused without an
    # init system ("policy-rc.d denied execution of start"): harmless, we start them.
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    have_packages || die "the packages ${PACKAGES[*]} did not install"
}

record() { echo "$1 $2" >>"$STARTED"; }

# True when pid $1 is alive and runs the program named $2 (guards against reused pids).
pid_is() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

qmaster_up() { timeout 10 qconf -sh >/dev/null 2>&1; }

qmaster_pidfile() {
    local dir
    dir=$(sed -n 's/^qmaster_spool_dir[[:space:]]*//p' "$COMMON/bootstrap" 2>/dev/null)
    echo "${dir:-$SPOOL/qmaster}/qmaster.pid"
}

# execd writes its pid file under <execd_spool_dir>/<the name it resolved for itself>.
execd_pid() {
    local f pid
    for f in "$SPOOL"/execd/*/execd.pid; do
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        if pid_is "$pid" sge_execd; then echo "$pid"; return 0; fi
    done
    return 1
}

write_files() {
    [ -s "$COMMON/bootstrap" ] || die "$COMMON/bootstrap is missing; is gridengine-master installed?"
    # The package leaves act_qmaster empty: clients read the qmaster's host from it.
    if [ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" != "$HOST" ]; then
        echo "$HOST" >"$COMMON/act_qmaster"
    fi
    # qmaster resolves 127.0.0.1 to "localhost" while clients call themselves
    # $HOST, and then refuses every client ("access denied"): alias the two.
    local alias_line="$HOST localhost $HOST"
    if ! grep -qxF "$alias_line" "$COMMON/host_aliases" 2>/dev/null; then
        if qmaster_up; then
            log "warning: a running qmaster reads $COMMON/host_aliases only when it starts"
        fi
        echo "$alias_line" >>"$COMMON/host_aliases"
    fi
    local spooldb
    spooldb=$(sed -n 's/^spooling_params[[:space:]]*//p' "$COMMON/bootstrap")
    spooldb=${spooldb:-$SPOOL/spooldb}
    if [ ! -e "$spooldb/sge" ]; then
        log "initialising the spool database $spooldb"
        mkdir -p "$spooldb"
        chown sgeadmin:sgeadmin "$spooldb"
        /usr/share/gridengine/scripts/init_cluster "$SGE_ROOT" "$SGE_CELL" "$spooldb" sgeadmin
    fi
    mkdir -p "$SPOOL/qmaster" "$SPOOL/execd"
    chown -R sgeadmin:sgeadmin "$SPOOL"
}

start_qmaster() {
    if qmaster_up; then log "sge_qmaster already answers"; return; fi
    local pidfile pid i
    pidfile=$(qmaster_pidfile)
    if [ -s "$pidfile" ] && pid_is "$(cat "$pidfile")" sge_qmaster; then
        die "sge_qmaster (pid $(cat "$pidfile")) runs but does not answer; see $SPOOL/qmaster/messages"
    fi
    rm -f "$pidfile"
    /usr/sbin/sge_qmaster   # daemonises
    for i in $(seq 100); do
        if [ -s "$pidfile" ] && qmaster_up; then break; fi
        sleep 0.2
    done
    pid=$(cat "$pidfile" 2>/dev/null || true)
    pid_is "$pid" sge_qmaster || die "sge_qmaster did not start; see $SPOOL/qmaster/messages"
    record sge_qmaster "$pid"
    qmaster_up || die "sge_qmaster (pid $pid) does not answer; see $SPOOL/qmaster/messages"
    log "sge_qmaster started (pid $pid)"
}

# Set "key value" lines in a qconf configuration file (keys must exist).
set_keys() {
    local file=$1 key value
    shift
    while [ $# -gt 0 ]; do
        key=$1 value=$2
        shift 2
        sed -i "s|^$key[[:space:]].*|$key $value|" "$file"
    done
}

configure() {
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 - expand $tmp now
    trap "rm -rf '$tmp'" RETURN
    if ! qconf -ss 2>/dev/null | grep -qxF "$HOST"; then
        qconf -as "$HOST" >/dev/null
    fi
    if ! qconf -sh 2>/dev/null | grep -qxF "$HOST"; then
        qconf -ah "$HOST" >/dev/null
    fi
    # Jobs of root are refused by default (min_uid 1000); tests run as root.
    qconf -sconf >"$tmp/global"
    if ! grep -qE '^min_uid[[:space:]]+0$' "$tmp/global" \
        || ! grep -qE '^min_gid[[:space:]]+0$' "$tmp/global"; then
        set_keys "$tmp/global" min_uid 0 min_gid 0
        (cd "$tmp" && qconf -Mconf global >/dev/null)   # the file must be named "global"
    fi
    # Schedule every second and at once on submission and job end (default: every 15 s).
    qconf -ssconf >"$tmp/sched"
    if ! grep -qE '^schedule_interval[[:space:]]+0:0:1$' "$tmp/sched" \
        || ! grep -qE '^flush_submit_sec[[:space:]]+1$' "$tmp/sched" \
        || ! grep -qE '^flush_finish_sec[[:space:]]+1$' "$tmp/sched"; then
        set_keys "$tmp/sched" schedule_interval 0:0:1 flush_submit_sec 1 flush_finish_sec 1
        qconf -Msconf "$tmp/sched" >/dev/null
    fi
    if ! qconf -se "$HOST" >/dev/null 2>&1; then
        cat >"$tmp/exechost" <<EOF
hostname $HOST
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
EOF
        qconf -Ae "$tmp/exechost" >/dev/null
    fi
    if ! qconf -sp smp >/dev/null 2>&1; then
        cat >"$tmp/smp" <<'EOF'
pe_name smp
slots 9999
user_lists NONE
xuser_lists NONE
start_proc_args NONE
stop_proc_args NONE
allocation_rule $pe_slots
control_slaves FALSE
job_is_first_task TRUE
urgency_slots min
accounting_summary FALSE
qsort_args NONE
EOF
        qconf -Ap "$tmp/smp" >/dev/null
    fi
    if ! qconf -sq "$QUEUE" >/dev/null 2>&1; then
        # `qconf -sq` without a name prints the template with every key.
        qconf -sq >"$tmp/queue"
        # No load threshold: the machine's load (other work on a shared CI
        # machine) must not put the queue into alarm state.
        set_keys "$tmp/queue" qname "$QUEUE" hostlist "$HOST" slots "$SLOTS" pe_list smp \
            load_thresholds NONE shell /bin/sh shell_start_mode posix_compliant
        qconf -Aq "$tmp/queue" >/dev/null
    fi
}

start_execd() {
    local pid i
    if pid=$(execd_pid); then log "sge_execd already running (pid $pid)"; return; fi
    /usr/sbin/sge_execd   # daemonises
    for i in $(seq 100); do
        if pid=$(execd_pid); then break; fi
        sleep 0.1
    done
    pid=$(execd_pid) || die "sge_execd did not start; see $SPOOL/execd/*/messages"
    record sge_execd "$pid"
    log "sge_execd started (pid $pid)"
}

# The queue instance accepts jobs once execd has reported its load and no
# error/disabled/unknown state is set.
queue_state() {
    timeout 10 qstat -f -q "$QUEUE@$HOST" 2>/dev/null | awk -v q="$QUEUE@$HOST" '
        $1 == q { load = $4; states = (NF >= 6 ? $6 : ""); found = 1 }
        END { if (!found) print "missing"; else if (load == "-NA-") print "noload " states; else print "ok " states }'
}

wait_ready() {
    local deadline=$((SECONDS + WAIT_SECONDS)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(queue_state)
        case "$state" in
            "ok ") log "queue $QUEUE@$HOST accepts jobs"; return 0 ;;
            ok*E*) qmod -c "$QUEUE@$HOST" >/dev/null 2>&1 || true ;;
            ok*d*) qmod -e "$QUEUE@$HOST" >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    die "the queue $QUEUE@$HOST did not become usable within ${WAIT_SECONDS}s (state '$state'); see $SPOOL/qmaster/messages and $SPOOL/execd/*/messages"
}

cmd_start() {
    need_root
    mkdir -p "$DIR"
    touch "$STARTED"
    install_packages
    write_files
    start_qmaster
    configure
    start_execd
    wait_ready
    log "ready: qsub, qstat and qdel need SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
}

wait_gone() {
    local pid=$1 i
    for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}

stop_daemon() {
    local name=$1 pid=$2
    if pid_is "$pid" "$name"; then
        wait_gone "$pid" || { kill -TERM "$pid" 2>/dev/null || true; wait_gone "$pid"; } \
            || kill -KILL "$pid" 2>/dev/null || true
    fi
}

cmd_stop() {
    need_root
    if [ ! -s "$STARTED" ]; then log "nothing to stop: this script started no daemon"; return 0; fi
    local qmaster_pid="" execd_pid="" daemon pid
    while read -r daemon pid; do
        case "$daemon" in
            sge_qmaster) qmaster_pid=$pid ;;
            sge_execd) execd_pid=$pid ;;
        esac
    done <"$STARTED"
    if qmaster_up; then
        # Delete every job so that nothing is left running on the node.
        if [ -n "$(timeout 10 qstat -u '*' 2>/dev/null)" ]; then
            timeout 20 qdel -f -u '*' >/dev/null 2>&1 || true
            local i
            for i in $(seq 50); do
                [ -z "$(timeout 10 qstat -u '*' 2>/dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    # Stop only our own daemons: ask them to exit, then signal them by pid.
    if pid_is "$execd_pid" sge_execd; then
        qmaster_up && timeout 20 qconf -ke "$HOST" >/dev/null 2>&1 || true
        stop_daemon sge_execd "$execd_pid"
    fi
    if pid_is "$qmaster_pid" sge_qmaster; then
        timeout 20 qconf -km >/dev/null 2>&1 || true
        stop_daemon sge_qmaster "$qmaster_pid"
    fi
    rm -f "$STARTED"
    log "stopped the daemons this script had started"
}

cmd_status() {
    if ! command -v qsub >/dev/null; then log "Grid Engine is not installed"; return 1; fi
    if ! qmaster_up; then log "sge_qmaster does not answer (SGE_ROOT=$SGE_ROOT)"; return 1; fi
    local state
    state=$(queue_state)
    timeout 10 qstat -g c 2>/dev/null || true
    [ -s "$STARTED" ] && log "started by this script: $(tr '\n' ' ' <"$STARTED")"
    if [ "$state" != "ok " ]; then log "queue $QUEUE@$HOST is not usable: $state"; return 1; fi
    return 0
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac

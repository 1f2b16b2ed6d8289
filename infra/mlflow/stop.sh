#!/usr/bin/env bash
# Stop the MLflow server that infra/mlflow/server.sh started, with all of its processes.
#
# Usage: infra/mlflow/stop.sh            (with the same TRANSPOSE_MLFLOW_DIR as server.sh, if you set one)
#
# Environment (optional):
#   TRANSPOSE_MLFLOW_DIR     the server's folder holding server.pid (default: <repo>/mlruns/server)
#   TRANSPOSE_MLFLOW_STOP_S  seconds to wait after SIGTERM before SIGKILL (default 20)
#
# Stopping only the `mlflow server` process is not enough: its job runner keeps the huey_consumer processes
# (7 of them with MLflow 3.17) running, and restarts a consumer that exits. This script collects, by pid:
#   - every process in the server's session (server.sh starts it with setsid, so the session id is its pid),
#   - every descendant of the server's pid,
#   - every process of this user whose environment holds the server's TRANSPOSE_MLFLOW_SERVER_TAG (this
#     also finds processes that moved to a session of their own or lost their parent),
# sends them SIGTERM, collects again until none is left, and SIGKILLs what is still there after the grace
# period. Then it removes server.pid and the job queue folder the server made (/dev/shm/tmp*). Data (the
# database and the artifacts) stay. Running it when no server is up is not an error.
set -euo pipefail

fail() {
    echo "stop.sh: error: $*" >&2
    exit 1
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
[ $# -eq 0 ] || fail "no arguments expected (see --help)"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir=${TRANSPOSE_MLFLOW_DIR:-$repo/mlruns/server}
pid_file=$dir/server.pid
grace_s=${TRANSPOSE_MLFLOW_STOP_S:-20}
[[ "$grace_s" =~ ^[0-9]+$ ]] || fail "TRANSPOSE_MLFLOW_STOP_S must be a whole number of seconds, got '$grace_s'"

if [ ! -f "$pid_file" ]; then
    echo "stop.sh: no $pid_file: no server started from $dir is recorded" >&2
    exit 0
fi
pid=$(sed -n 1p "$pid_file")
tag=$(sed -n 2p "$pid_file")
[[ "$pid" =~ ^[0-9]+$ ]] && [ -n "$tag" ] || fail "$pid_file is not a pid file written by server.sh"

# True when process $1 carries this server's tag in its environment (readable for our own processes only).
# Bash builtins only: it runs for every process on the machine.
has_tag() {
    local entry env=()
    [ -r "/proc/$1/environ" ] || return 1
    mapfile -d '' env 2>/dev/null <"/proc/$1/environ" || return 1
    for entry in "${env[@]+"${env[@]}"}"; do
        [ "$entry" != "TRANSPOSE_MLFLOW_SERVER_TAG=$tag" ] || return 0
    done
    return 1
}

# True while process $1 exists and is not a zombie (a zombie has exited and only waits for its parent).
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ "$stat" != Z* ]]
}

# The server's processes now, one pid per line (never this script or its parent).
collect() {
    local -A found=()
    local p sid ppid queue
    # The pid and session from the pid file count only while the pid is still ours: a pid the kernel has
    # given to an unrelated process since would otherwise be killed.
    if has_tag "$pid"; then
        while read -r p sid; do
            [ "$sid" = "$pid" ] && found[$p]=1
        done < <(ps -eo pid=,sid=)
        queue=("$pid")
        found[$pid]=1
        while [ "${#queue[@]}" -gt 0 ]; do
            local parent=${queue[0]}
            queue=("${queue[@]:1}")
            while read -r p ppid; do
                if [ "$ppid" = "$parent" ] && [ -z "${found[$p]:-}" ]; then
                    found[$p]=1
                    queue+=("$p")
                fi
            done < <(ps -eo pid=,ppid=)
        done
    fi
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if [ -z "${found[$p]:-}" ] && has_tag "$p"; then
            found[$p]=1
        fi
    done
    for p in "${!found[@]}"; do
        if [ "$p" != "$$" ] && [ "$p" != "$PPID" ] && alive "$p"; then
            echo "$p"
        fi
    done
}

# The job queue folder of the server (MLflow makes it with mkdtemp and does not remove it).
queue_dir=""
for p in $(collect); do
    queue_dir=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^_MLFLOW_HUEY_STORAGE_PATH=//p' | head -n1) || true
    [ -z "$queue_dir" ] || break
done

mapfile -t procs < <(collect)
if [ "${#procs[@]}" -eq 0 ]; then
    echo "stop.sh: the server recorded in $pid_file (pid $pid) is not running" >&2
else
    echo "stop.sh: stopping ${#procs[@]} process(es) of the MLflow server (pid $pid): ${procs[*]}" >&2
fi
all=("${procs[@]+"${procs[@]}"}")
deadline=$((SECONDS + grace_s))
# SIGTERM everything found, then look again: the job runner restarts a consumer that exits before it does.
while [ "${#procs[@]}" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    kill -TERM "${procs[@]}" 2>/dev/null || true
    sleep 1
    mapfile -t procs < <(collect)
    all+=("${procs[@]+"${procs[@]}"}")
done
if [ "${#procs[@]}" -gt 0 ]; then
    echo "stop.sh: still running after ${grace_s}s, sending SIGKILL: ${procs[*]}" >&2
    for _ in 1 2 3 4 5; do
        kill -KILL "${procs[@]}" 2>/dev/null || true
        sleep 1
        mapfile -t procs < <(collect)
        [ "${#procs[@]}" -gt 0 ] || break
    done
fi
if [ "${#procs[@]}" -gt 0 ]; then
    fail "could not stop process(es) ${procs[*]}"
fi

rm -f "$pid_file"
if [[ "$queue_dir" =~ ^(/dev/shm|${TMPDIR:-/tmp})/tmp[A-Za-z0-9_]+$ ]] && [ -d "$queue_dir" ]; then
    rm -rf -- "$queue_dir"
fi
count=$(printf '%s\n' "${all[@]+"${all[@]}"}" | sed '/^$/d' | sort -u | wc -l)
echo "stop.sh: stopped; $count process(es) in all. Data kept in $dir" >&2

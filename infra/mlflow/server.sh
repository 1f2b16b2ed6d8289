#!/usr/bin/env bash
# Start an MLflow tracking server for the team in the background, wait until it answers, print its URI.
#
# Usage: infra/mlflow/server.sh          (stop it with infra/mlflow/stop.sh and the same TRANSPOSE_MLFLOW_DIR)
#
# Environment (all optional):
#   TRANSPOSE_MLFLOW_DIR          the server's folder: mlflow.db, artifacts/, server.pid, server.log
#                                 (default: <repo>/mlruns/server, git-ignored)
#   TRANSPOSE_MLFLOW_BACKEND_URI  where runs, params, metrics and the model registry live. Default
#                                 sqlite:///$TRANSPOSE_MLFLOW_DIR/mlflow.db; for a larger team a database server,
#                                 e.g. postgresql://USER:PASSWORD@DBHOST:5432/mlflow. That needs a PostgreSQL
#                                 driver in the venv: SQLAlchemy 2.1 maps postgresql:// to psycopg 3
#                                 (pip install "psycopg[binary]"); postgresql+psycopg2:// uses psycopg2-binary
#   TRANSPOSE_MLFLOW_ARTIFACTS    where artifacts are stored (--artifacts-destination): a folder (default
#                                 $TRANSPOSE_MLFLOW_DIR/artifacts) or an object store URI such as s3://bucket/path.
#                                 Clients upload and download through the server (mlflow-artifacts:/ URIs).
#   TRANSPOSE_MLFLOW_HOST         the interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0
#                                 for every interface, so that training nodes can reach it)
#   TRANSPOSE_MLFLOW_PORT         TCP port (default 5000)
#   TRANSPOSE_MLFLOW_WORKERS      uvicorn worker processes (default 2)
#   TRANSPOSE_MLFLOW_ALLOWED_HOSTS  Host headers the server accepts (--allowed-hosts). MLflow's default accepts
#                                 localhost and private addresses (10.*, 172.16-31.*, 192.168.*); set it when
#                                 clients use a DNS name, e.g. mlflow.example.org,mlflow.example.org:5000
#   TRANSPOSE_MLFLOW_URI          the URI to print for clients (default http://HOST:PORT, with this machine's
#                                 name when HOST is 0.0.0.0)
#   TRANSPOSE_MLFLOW_WAIT_S       seconds to wait for GET /health to answer OK (default 90)
#
# The server runs in its own session (setsid), so its uvicorn workers and its job runner with the
# huey_consumer processes it starts can all be found and stopped together; every one of them also carries
# TRANSPOSE_MLFLOW_SERVER_TAG in its environment, which infra/mlflow/stop.sh looks for. To start the server
# without the job runner (it serves MLflow's GenAI jobs, which this project does not use), export
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false first.
set -euo pipefail

fail() {
    echo "server.sh: error: $*" >&2
    exit 1
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
[ $# -eq 0 ] || fail "no arguments expected (settings come from the environment, see --help)"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir=${TRANSPOSE_MLFLOW_DIR:-$repo/mlruns/server}
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
host=${TRANSPOSE_MLFLOW_HOST:-127.0.0.1}
port=${TRANSPOSE_MLFLOW_PORT:-5000}
workers=${TRANSPOSE_MLFLOW_WORKERS:-2}
wait_s=${TRANSPOSE_MLFLOW_WAIT_S:-90}
backend=${TRANSPOSE_MLFLOW_BACKEND_URI:-sqlite:///$dir/mlflow.db}
artifacts=${TRANSPOSE_MLFLOW_ARTIFACTS:-$dir/artifacts}
pid_file=$dir/server.pid
log=$dir/server.log

[[ "$port" =~ ^[1-9][0-9]*$ ]] && [ "$port" -le 65535 ] || fail "TRANSPOSE_MLFLOW_PORT must be a TCP port, got '$port'"
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || fail "TRANSPOSE_MLFLOW_WORKERS must be a whole number >= 1, got '$workers'"
[[ "$wait_s" =~ ^[1-9][0-9]*$ ]] || fail "TRANSPOSE_MLFLOW_WAIT_S must be a whole number of seconds, got '$wait_s'"
command -v curl >/dev/null 2>&1 || fail "curl is needed to check that the server answers"
command -v setsid >/dev/null 2>&1 || fail "setsid (util-linux) is needed to start the server in its own session"

mlflow=${TRANSPOSE_VENV:-$repo/.venv}/bin/mlflow
[ -x "$mlflow" ] || mlflow=$(command -v mlflow) || fail "mlflow not found (no $repo/.venv/bin/mlflow: run scripts/setup.sh)"

# A folder on disk for the artifacts; anything with a scheme (s3://, gs://, ...) is passed as it is.
if [[ "$artifacts" != *://* ]]; then
    mkdir -p "$artifacts"
    artifacts="$(cd "$artifacts" && pwd)"
fi

# The health check goes to this machine; the printed URI is what other machines use.
case "$host" in
    0.0.0.0 | "::" | "[::]") probe_host=127.0.0.1 ;;
    *) probe_host=$host ;;
esac
if [[ "$probe_host" == *:* && "$probe_host" != \[* ]]; then
    probe_host="[$probe_host]"  # a bare IPv6 address goes in brackets in a URL
fi
if [ -n "${TRANSPOSE_MLFLOW_URI:-}" ]; then
    uri=$TRANSPOSE_MLFLOW_URI
elif [ "$probe_host" = 127.0.0.1 ] && [ "$host" != 127.0.0.1 ]; then
    uri="http://$(hostname -f 2>/dev/null || hostname):$port"
else
    uri="http://$probe_host:$port"
fi

# One server per folder: refuse to start a second one, clear a pid file left by one that died.
if [ -f "$pid_file" ]; then
    old_pid=$(sed -n 1p "$pid_file")
    if [[ "$old_pid" =~ ^[0-9]+$ ]] && kill -0 "$old_pid" 2>/dev/null; then
        fail "a server from $dir is already running (pid $old_pid, $(sed -n 3p "$pid_file")); stop it with infra/mlflow/stop.sh"
    fi
    echo "server.sh: removing the stale pid file of pid $old_pid" >&2
    rm -f "$pid_file"
fi
if curl -fsS --max-time 2 "http://$probe_host:$port/health" >/dev/null 2>&1; then
    fail "something already answers on $probe_host:$port: choose another TRANSPOSE_MLFLOW_PORT"
fi

cmd=("$mlflow" server
    --backend-store-uri "$backend"
    --artifacts-destination "$artifacts"
    --host "$host"
    --port "$port"
    --workers "$workers")
if [ -n "${TRANSPOSE_MLFLOW_ALLOWED_HOSTS:-}" ]; then
    cmd+=(--allowed-hosts "$TRANSPOSE_MLFLOW_ALLOWED_HOSTS")
fi

# The backend URI for messages, without a database password.
shown_backend=$(printf '%s' "$backend" | sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#')

# The tag marks every process of this server (children inherit the environment): stop.sh finds them by it.
tag="$(hostname)-$$-$(date +%s)"
echo "== $(date '+%Y-%m-%d %H:%M:%S') starting mlflow server: backend $shown_backend, artifacts $artifacts, $host:$port, $workers worker(s)" >>"$log"
# setsid: a new session and process group led by the server, detached from this terminal (a background job of
# a non-interactive shell is no group leader, so setsid does not fork and $! is the server's pid).
TRANSPOSE_MLFLOW_SERVER_TAG=$tag setsid "${cmd[@]}" >>"$log" 2>&1 </dev/null &
pid=$!
# Line 1 pid, line 2 tag, line 3 URI, line 4 the backend store (no password): read by stop.sh and a second start.
printf '%s\n%s\n%s\n%s\n' "$pid" "$tag" "$uri" "$shown_backend" >"$pid_file"

echo "server.sh: started pid $pid, waiting up to ${wait_s}s for http://$probe_host:$port/health (log: $log)" >&2
deadline=$((SECONDS + wait_s))
until [ "$(curl -fsS --max-time 2 "http://$probe_host:$port/health" 2>/dev/null)" = "OK" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "server.sh: error: the server exited during start-up; the end of $log:" >&2
        tail -n 25 "$log" >&2
        rm -f "$pid_file"
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "server.sh: error: no OK from /health after ${wait_s}s; the end of $log:" >&2
        tail -n 25 "$log" >&2
        echo "server.sh: the server (pid $pid) is left running: infra/mlflow/stop.sh stops it" >&2
        exit 1
    fi
    sleep 1
done

echo "server.sh: MLflow is up (pid $pid): backend $shown_backend, artifacts $artifacts" >&2
echo "export MLFLOW_TRACKING_URI=$uri"

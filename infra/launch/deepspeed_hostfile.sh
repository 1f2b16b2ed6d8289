#!/usr/bin/env bash
# Train on the hosts of a DeepSpeed hostfile with the `deepspeed` launcher.
#
# Usage: infra/launch/deepspeed_hostfile.sh HOSTFILE [STAGE]
#
#   HOSTFILE  `host slots=N` lines (see infra/launch/hostfile.example); the first host is node 0
#   STAGE     the params.yaml section to train (default: pretrain)
#
# Two modes:
#   default (pdsh + ssh)  run once, on any machine that can `ssh` to every host without a password (the
#                         launcher checks the first host). pdsh starts `deepspeed.launcher.launch` on every host
#                         at once, after sourcing infra/launch/env.sh there (--venv_script). Needs `pdsh` here
#                         and the repository and its .venv at this same path on every host (shared file
#                         system or identical checkouts).
#   NO_SSH=1 NODE_RANK=k  for clusters without passwordless ssh: run this script on every host yourself, each
#                         with its own NODE_RANK (its line number among the hosts, from 0), all with the same
#                         hostfile. Nothing is started remotely; the ranks meet at MASTER_ADDR:MASTER_PORT.
#
# Environment (all optional):
#   MASTER_ADDR  address of node 0. Default: with ssh, deepspeed asks the first host (`ssh HOST hostname -I`);
#                with NO_SSH=1, the first host's name from the hostfile (127.0.0.1 for localhost).
#   MASTER_PORT  rendezvous TCP port on node 0 (default 29500)
#   SSH_PORT     ssh port of the hosts, when not 22 (ssh mode only)
#   PARAMS       parameter file (default params.yaml); passed on as `--params`
#   DRY_RUN=1    check the hostfile and print the deepspeed command instead of running it
#
# Examples:
#   infra/launch/deepspeed_hostfile.sh hostfile pretrain                           # from one machine, via ssh
#   NO_SSH=1 NODE_RANK=0 MASTER_ADDR=10.0.0.1 infra/launch/deepspeed_hostfile.sh hostfile pretrain  # node 0
#   NO_SSH=1 NODE_RANK=1 MASTER_ADDR=10.0.0.1 infra/launch/deepspeed_hostfile.sh hostfile pretrain  # node 1
#
# Each rank runs `python -u -m pipelines.train --local_rank=I --stage STAGE` from the repository root. The
# world size is the sum of the slots; rerunning the same command resumes from the newest complete
# checkpoint, with the same world size only.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
}

fail() {
    echo "deepspeed_hostfile.sh: error: $*" >&2
    echo "usage: infra/launch/deepspeed_hostfile.sh HOSTFILE [STAGE]   (-h for help)" >&2
    exit 2
}

is_uint() { [[ "$1" =~ ^(0|[1-9][0-9]*)$ ]]; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    usage
    exit 0
fi
[ $# -ge 1 ] && [ $# -le 2 ] || fail "expected 1 or 2 arguments, got $#"
[ -f "$1" ] && [ -r "$1" ] || fail "hostfile '$1' not found or not readable"
hostfile="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"  # absolute: the script changes directory below
stage=${2:-pretrain}
[[ "$stage" =~ ^[A-Za-z0-9_.-]+$ ]] || fail "STAGE must be a params.yaml section name, got '$stage'"

# Read the hostfile as deepspeed does (deepspeed/launcher/runner.py): `#` lines and empty lines are skipped,
# every other line must start with `HOST slots=N`, and a host may appear once.
hosts=()
world=0
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line="${line#"${line%%[![:space:]]*}"}"  # strip leading blanks
    if [ -z "$line" ] || [[ "$line" == \#* ]]; then continue; fi
    if [[ "$line" =~ ^([^[:space:]]+)[[:space:]]+slots=([0-9]+) ]]; then
        host=${BASH_REMATCH[1]}
        slots=$((10#${BASH_REMATCH[2]}))
    else
        fail "$hostfile line $lineno: expected 'HOST slots=N', got '$line'"
    fi
    [ "$slots" -ge 1 ] || fail "$hostfile line $lineno: $host has slots=0"
    for seen in "${hosts[@]+"${hosts[@]}"}"; do
        [ "$seen" != "$host" ] || fail "$hostfile line $lineno: host '$host' appears twice"
    done
    hosts+=("$host")
    world=$((world + slots))
done <"$hostfile"
[ "${#hosts[@]}" -ge 1 ] || fail "$hostfile lists no host (expected lines 'HOST slots=N')"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
# shellcheck source=infra/launch/env.sh
source infra/launch/env.sh

params=${PARAMS:-params.yaml}
[ -f "$params" ] || fail "parameter file '$params' not found (relative paths start at $repo)"
grep -Eq "^${stage//./\\.}:" "$params" || fail "'$params' has no top-level section '$stage:'"

master_port=${MASTER_PORT:-29500}
is_uint "$master_port" && [ "$master_port" -ge 1 ] && [ "$master_port" -le 65535 ] \
    || fail "MASTER_PORT must be a TCP port (1-65535), got '$master_port'"
command -v deepspeed >/dev/null 2>&1 || fail "deepspeed not found (no $TRANSPOSE_VENV/bin/deepspeed: run scripts/setup.sh)"

cmd=(deepspeed --hostfile "$hostfile" --master_port "$master_port")
if [ "${NO_SSH:-0}" = "1" ]; then
    node_rank=${NODE_RANK:-}
    [ -n "$node_rank" ] || fail "NO_SSH=1 needs NODE_RANK (0..$((${#hosts[@]} - 1)): this host's line among the hosts of $hostfile)"
    is_uint "$node_rank" && [ "$node_rank" -lt "${#hosts[@]}" ] \
        || fail "NODE_RANK must be 0..$((${#hosts[@]} - 1)) for the ${#hosts[@]} host(s) of $hostfile, got '$node_rank'"
    master_addr=${MASTER_ADDR:-${hosts[0]}}
    [ "$master_addr" != localhost ] || master_addr=127.0.0.1
    # Without --master_addr the launcher would ssh to the first host to ask for its address.
    cmd+=(--no_ssh --node_rank "$node_rank" --master_addr "$master_addr")
    where="node $node_rank (${hosts[$node_rank]}) of ${#hosts[@]}, rendezvous $master_addr:$master_port"
else
    if [ "${#hosts[@]}" -gt 1 ] && ! command -v pdsh >/dev/null 2>&1; then
        no_pdsh="pdsh is not installed (the launcher starts the other hosts with it): install pdsh, or run this script on every host with NO_SSH=1 NODE_RANK=k"
        [ "${DRY_RUN:-0}" = "1" ] || fail "$no_pdsh"
        echo "deepspeed_hostfile.sh: warning: $no_pdsh" >&2
    fi
    ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10)
    if [ -n "${SSH_PORT:-}" ]; then
        is_uint "$SSH_PORT" || fail "SSH_PORT must be a port number, got '$SSH_PORT'"
        ssh_opts+=(-p "$SSH_PORT")
        cmd+=(--ssh_port "$SSH_PORT")
    fi
    if [ "${DRY_RUN:-0}" != "1" ]; then
        for host in "${hosts[@]}"; do
            ssh "${ssh_opts[@]}" "$host" true </dev/null >/dev/null 2>&1 || fail "host '$host' is not reachable by passwordless ssh (\`ssh $host true\` failed). Set up ssh keys, or run this script on every host with NO_SSH=1 NODE_RANK=k MASTER_ADDR=<node 0>"
        done
    fi
    if [ -n "${MASTER_ADDR:-}" ]; then
        cmd+=(--master_addr "$MASTER_ADDR")
    fi
    # Sourced on every host before its launcher starts: the venv on PATH and infra/launch/env.sh's settings.
    cmd+=(--venv_script "$repo/infra/launch/env.sh")
    where="${#hosts[@]} host(s) via pdsh/ssh, rendezvous ${MASTER_ADDR:-<first host>}:$master_port"
fi
cmd+=(--module pipelines.train --stage "$stage")
if [ -n "${PARAMS:-}" ]; then
    cmd+=(--params "$params")
fi

echo "deepspeed: ${hosts[*]}; world size $world; $where" >&2
if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"

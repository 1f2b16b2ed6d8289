#!/usr/bin/env bash
# Start this node's share of a multi-node (or single-node) training run with torchrun.
#
# Usage: infra/launch/torchrun_node.sh NODE_RANK NUM_NODES MASTER_ADDR [STAGE]
#
#   NODE_RANK    0 .. NUM_NODES-1; node 0 hosts global rank 0 and the rendezvous (MASTER_ADDR:MASTER_PORT)
#   NUM_NODES    how many nodes take part; run this script once on each of them, with its own NODE_RANK
#   MASTER_ADDR  address of node 0, reachable from every node (127.0.0.1 when NUM_NODES is 1)
#   STAGE        the params.yaml section to train (default: pretrain)
#
# Environment (all optional):
#   NPROC        processes on this node: default the number of GPUs `nvidia-smi -L` lists, else 1.
#                On CPU set it to the ranks you want (one OpenMP thread each, see infra/launch/env.sh).
#                Use the same NPROC on every node.
#   MASTER_PORT  rendezvous TCP port on node 0 (default 29500)
#   PARAMS       parameter file (default params.yaml); passed on as `--params`
#   DRY_RUN=1    print the torchrun command instead of running it
#
# Examples:
#   infra/launch/torchrun_node.sh 0 1 127.0.0.1 pretrain                 # one machine, all its GPUs
#   NPROC=2 infra/launch/torchrun_node.sh 0 1 127.0.0.1 pretrain         # one machine, 2 CPU ranks
#   infra/launch/torchrun_node.sh 0 2 10.0.0.1 pretrain                  # on 10.0.0.1 (node 0) ...
#   infra/launch/torchrun_node.sh 1 2 10.0.0.1 pretrain                  # ... and on the second node
#
# The device (cpu with gloo, or cuda with NCCL) comes from params.yaml `STAGE.device`. Rerunning the same
# command on every node resumes from the newest complete checkpoint in `STAGE.out_dir`; the world size
# (NUM_NODES x NPROC) must be the one that wrote it.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
}

fail() {
    echo "torchrun_node.sh: error: $*" >&2
    echo "usage: infra/launch/torchrun_node.sh NODE_RANK NUM_NODES MASTER_ADDR [STAGE]   (-h for help)" >&2
    exit 2
}

is_uint() { [[ "$1" =~ ^(0|[1-9][0-9]*)$ ]]; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    usage
    exit 0
fi
[ $# -ge 3 ] && [ $# -le 4 ] || fail "expected 3 or 4 arguments, got $#"

node_rank=$1
num_nodes=$2
master_addr=$3
stage=${4:-pretrain}

is_uint "$node_rank" || fail "NODE_RANK must be a whole number >= 0, got '$node_rank'"
is_uint "$num_nodes" && [ "$num_nodes" -ge 1 ] || fail "NUM_NODES must be a whole number >= 1, got '$num_nodes'"
[ "$node_rank" -lt "$num_nodes" ] || fail "NODE_RANK ($node_rank) must be below NUM_NODES ($num_nodes)"
[ -n "$master_addr" ] && [[ "$master_addr" != -* ]] || fail "MASTER_ADDR must be a host name or address, got '$master_addr'"
[[ "$stage" =~ ^[A-Za-z0-9_.-]+$ ]] || fail "STAGE must be a params.yaml section name, got '$stage'"

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

if [ -n "${NPROC:-}" ]; then
    nproc=$NPROC
elif command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') && [ "$gpus" -ge 1 ]; then
    nproc=$gpus
else
    nproc=1
fi
is_uint "$nproc" && [ "$nproc" -ge 1 ] || fail "NPROC must be a whole number >= 1, got '$nproc'"

if [ "$num_nodes" -gt 1 ] && [[ "$master_addr" == 127.* || "$master_addr" == localhost ]]; then
    echo "torchrun_node.sh: warning: MASTER_ADDR $master_addr is a loopback address: other machines cannot reach it" >&2
fi

command -v torchrun >/dev/null 2>&1 || fail "torchrun not found (no $TRANSPOSE_VENV/bin/torchrun: run scripts/setup.sh)"

cmd=(torchrun
    --nnodes "$num_nodes"
    --node_rank "$node_rank"
    --nproc_per_node "$nproc"
    --master_addr "$master_addr"
    --master_port "$master_port"
    -m pipelines.train --stage "$stage")
if [ -n "${PARAMS:-}" ]; then
    cmd+=(--params "$params")
fi

echo "node $node_rank/$num_nodes: $nproc process(es), world size $((num_nodes * nproc)), rendezvous $master_addr:$master_port" >&2
if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"

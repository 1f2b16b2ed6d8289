# Environment for one training node. Source it (bash), do not execute it:
#
#     source infra/launch/env.sh        # from the repository root, or with any path to this file
#
# The launch scripts in this folder source it themselves; `deepspeed_hostfile.sh` also hands it to the
# deepspeed launcher as `--venv_script`, so every node that pdsh reaches sources it before starting its ranks.
# Values already set in the environment win over the defaults below, so override any of them by exporting
# it first (`OMP_NUM_THREADS=4 source infra/launch/env.sh`). It never exits the calling shell and is safe
# under `set -euo pipefail`.

# Refuse to run as a program: as a child process it could not change the caller's environment.
if [ -z "${BASH_VERSION:-}" ]; then
    echo "infra/launch/env.sh: source it from bash" >&2
    return 1 2>/dev/null || exit 1
fi
if [ "${BASH_SOURCE[0]}" = "${0}" ]; then
    echo "infra/launch/env.sh: source it, do not execute it: source ${BASH_SOURCE[0]}" >&2
    exit 1
fi

# The repository root: two folders above this file, whatever the current directory is.
TRANSPOSE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export TRANSPOSE_REPO

# The project's virtual environment (scripts/setup.sh makes it in .venv); another one with TRANSPOSE_VENV.
export TRANSPOSE_VENV="${TRANSPOSE_VENV:-$TRANSPOSE_REPO/.venv}"

# Put its bin/ first on PATH, as `activate` would (python, torchrun, deepspeed, mlflow, and the ninja that the
# DeepSpeed JIT compile needs); VIRTUAL_ENV tells tools which environment is active. Done once per shell.
if [ -x "$TRANSPOSE_VENV/bin/python" ]; then
    export VIRTUAL_ENV="$TRANSPOSE_VENV"
    case ":$PATH:" in
        *":$TRANSPOSE_VENV/bin:"*) ;;
        *) export PATH="$TRANSPOSE_VENV/bin:$PATH" ;;
    esac
else
    echo "infra/launch/env.sh: warning: no virtual environment at $TRANSPOSE_VENV (run scripts/setup.sh)" >&2
fi

# One OpenMP/MKL thread per rank. On CPU every rank is a process, and 2 threads per process collapsed when
# the cores were oversubscribed (shared/notes/stack-train.md, section 2); on GPU the threads only feed the GPU.
# Raise it only when the ranks on a node times the threads stay within its physical cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# Same for MKL (used by some CPU kernels), which otherwise sizes its own pool from all cores.
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"

# Python output straight to the log (SLURM, pdsh and torchrun collect it), not in 8 KB blocks.
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}"

# Rendezvous. MASTER_ADDR is the address of node 0 (global rank 0), reachable from every node; MASTER_PORT a
# free TCP port on it. The launchers pass both to the ranks (torchrun --master_addr/--master_port, deepspeed
# --master_addr/--master_port), so here they are only passed through when set, never defaulted: a plain
# single process (`python -m pipelines.train`) then picks 127.0.0.1 and a free port itself
# (transpose/engine/distributed.py), and two of them on one machine do not collide on a fixed port.
# The launch scripts use 29500 when MASTER_PORT is unset.
if [ -n "${MASTER_ADDR:-}" ]; then export MASTER_ADDR; fi
if [ -n "${MASTER_PORT:-}" ]; then export MASTER_PORT; fi

# Multi-node on CPU (gloo): the network interface gloo uses when the host name resolves to the wrong one
# (for example to 127.0.1.1 or to a management network). Uncomment and name the interface (see `ip addr`).
# export GLOO_SOCKET_IFNAME=eth0

# Multi-node on GPU (NCCL). NCCL picks sensible values itself; uncomment one only for a reason.
# export NCCL_DEBUG=INFO               # print the transport NCCL chose (IB, socket) and any init failure
# export NCCL_SOCKET_IFNAME=eth0       # the interface for NCCL's bootstrap and socket traffic
# export NCCL_IB_DISABLE=1             # no InfiniBand/RoCE: force TCP sockets (slow; for debugging)
# export NCCL_P2P_DISABLE=1            # no GPU peer-to-peer inside a node (some virtualised machines)
# DeepSpeed's pdsh launcher copies the NCCL_* (on CUDA machines), MLFLOW_*, PYTHON*, MV2* and UCX* variables
# of the launching shell to the other nodes. The rest comes from this file as each node sources it, so an
# override exported only in the launching shell does not travel: put it here, or as KEY=VALUE lines in
# ~/.deepspeed_env on the launching node (the launcher exports those on every node).

# Where torch caches JIT-compiled C++ extensions. The first distributed DeepSpeed run on CPU compiles
# deepspeed_shm_comm (about 2 minutes, needs g++ and ninja); later runs load it from this cache. Point it at a
# folder every node (or CI job) keeps, or leave it unset for ~/.cache/torch_extensions.
# export TORCH_EXTENSIONS_DIR="$HOME/.cache/torch_extensions"

# Ray: no usage statistics are collected or sent (Ray Tune / Ray Train stages).
export RAY_USAGE_STATS_ENABLED=0

# DVC: no anonymous usage analytics (`dvc repro` and `dvc exp run`).
export DVC_NO_ANALYTICS=1

# MLflow: a team tracking server (infra/mlflow/server.sh prints the URI to use), passed through when set.
# Unset, the stages log to the local store in mlruns/ (sqlite:///mlruns/mlflow.db, see mlops/tracking/).
# Only rank 0 logs. The deepspeed pdsh launcher copies MLFLOW_* to the other nodes; for torchrun and SLURM
# export it on every node (sbatch passes the submitting shell's environment on).
if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then export MLFLOW_TRACKING_URI; fi

# Optional MLflow grouping (mlops/tracking/): the experiment name (default "transpose") and the id
# that groups the stages of one pipeline run under one parent run (default: the current git commit).
# export TRANSPOSE_EXPERIMENT=transpose
# export TRANSPOSE_PIPELINE_ID=my-run

# The status of `source` is that of its last command: end with success so `set -e` callers carry on.
true

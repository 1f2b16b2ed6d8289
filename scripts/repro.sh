#!/usr/bin/env bash
# Run the whole DVC pipeline (data -> shards -> COCO pretraining -> evaluation -> MPII transfer -> evaluation)
# on what params.yaml says (the embedded synthetic default unless data.source is "real"), with every stage
# recorded in MLflow under one parent run, then say where the results are.
#   bash scripts/repro.sh            # extra arguments go to `dvc repro`, e.g. -s pretrain
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dvc ] || { echo "no .venv: run 'bash scripts/setup.sh' first" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1  # training shares the cores out among its processes
export TRANSPOSE_PIPELINE_ID="${TRANSPOSE_PIPELINE_ID:-repro-$(date -u +%Y%m%dT%H%M%SZ)-$(git rev-parse --short HEAD 2>/dev/null || echo local)}"
start=$(date +%s)
dvc repro "$@"
echo
echo "done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; pipeline id $TRANSPOSE_PIPELINE_ID"
dvc metrics show
dvc status  # up to date: nothing the DAG depends on changed since it ran
cat <<MSG

metrics:  metrics/*.json (dvc metrics show: AP, AP50, AP75, ... on detected boxes; PCKh transfer vs scratch)
figures:  plots/ (dvc plots show -o plots_page: an offline page of the learning curves, where the OKS is lost,
          attention areas)
models:   outputs/pretrain/, outputs/transfer/: best.pth (a bare state_dict, reference format) + model.json
          (its card: architecture, input size, keypoint set); try them: transpose predict --help
MLflow:   ${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
          browse: .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
MSG

#!/usr/bin/env bash
# Start a local MLflow tracking server: SQLite store + artifacts under one data folder, artifacts proxied over HTTP
# (--serve-artifacts), so Ray workers on other nodes upload through the server instead of needing the disk.
#
#   mlflow/start-local.sh                        # http://127.0.0.1:5000, data in ./.defakenet
#   PORT=5001 HOME_DIR=/data/defakenet mlflow/start-local.sh
#   HOST=0.0.0.0 mlflow/start-local.sh --allowed-hosts 'head-node,10.0.*'   # reachable from a LAN / Ray cluster
#
# Then point defakenet at it: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (or --tracking-uri).
# The same HOME_DIR is what defakenet uses without a server (sqlite:///$HOME_DIR/mlflow.db), so runs logged
# before the server existed show up in it. Extra arguments go to `mlflow server`.
set -euo pipefail

HOME_DIR="${HOME_DIR:-.defakenet}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
WORKERS="${WORKERS:-1}"

# prefer the project's virtualenv, then whatever mlflow is on PATH
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLFLOW="${MLFLOW:-}"
if [[ -z "$MLFLOW" ]]; then
  if [[ -x "$repo/.venv/bin/mlflow" ]]; then MLFLOW="$repo/.venv/bin/mlflow"; else MLFLOW="mlflow"; fi
fi

mkdir -p "$HOME_DIR/mlartifacts"
home="$(cd "$HOME_DIR" && pwd)"

# telemetry off: clusters are often air-gapped. No GenAI job runner (an extra process defakenet never uses).
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

echo "MLflow: http://$HOST:$PORT  store: $home/mlflow.db  artifacts: $home/mlartifacts" >&2
exec "$MLFLOW" server \
  --host "$HOST" --port "$PORT" --workers "$WORKERS" \
  --backend-store-uri "sqlite:///$home/mlflow.db" \
  --serve-artifacts --artifacts-destination "$home/mlartifacts" \
  "$@"

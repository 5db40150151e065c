#!/usr/bin/env bash
# A local development cluster: a token-authenticated Ray head, an MLflow tracking server and an S3-compatible
# object store (moto), all on loopback.
#   scripts/cluster.sh start [CPUS]   start them (CPUS: logical CPUs of the head, default: this machine's)
#   scripts/cluster.sh add-node CPUS  start a second raylet on this machine that joins the head (multi-node tests)
#   scripts/cluster.sh stop           stop both (and added nodes)
#   scripts/cluster.sh status         say what runs
# State (MLflow's sqlite store, its artifacts, logs, pid) lives in $CLUSTER_DIR (default ./cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="$PWD/.venv/bin"
STATE="${CLUSTER_DIR:-$PWD/cluster}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
AGENT_PORT="${AGENT_PORT:-$((DASHBOARD_PORT + 1))}"  # Ray's default (52365) is taken by any other local Ray
MLFLOW_ARTIFACTS="${MLFLOW_ARTIFACTS:-$STATE/mlartifacts}"  # a folder or an object-storage URI (s3://...)
S3_PORT="${S3_PORT:-9000}"
S3_BUCKET="${S3_BUCKET:-ssl}"
RAY_TMP="${RAY_TMP:-/tmp/ray_$RAY_PORT}"  # this cluster's own Ray folder (short: it holds sockets); stop kills only it
export RAY_AUTH_MODE=token  # Ray 2.60 clusters require it; keep it on
# Ray's switch for a one-machine Ray: its processes listen on 127.0.0.1 only. Without it Ray takes 127.0.0.1 to mean
# this machine's network address, and the GCS, the raylets and the agents listen on every interface.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export PATH="$VENV_BIN:$PATH"  # jobs run `python` from the venv the head was started from
# Object storage settings as for any S3 endpoint; Ray processes inherit them from `ray start`.
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

mlflow_up() { curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1; }
s3_up() { curl -fsS "http://127.0.0.1:$S3_PORT/" >/dev/null 2>&1; }

s3_start() {
  if ! s3_up; then
    nohup moto_server -H 127.0.0.1 -p "$S3_PORT" >"$STATE/s3.log" 2>&1 &
    echo $! >"$STATE/s3.pid"
    for _ in $(seq 30); do s3_up && break; sleep 1; done
    s3_up || { tail -20 "$STATE/s3.log" >&2; echo "the S3 server did not come up" >&2; exit 1; }
  fi
  python -c "import boto3, sys; s3 = boto3.client('s3'); b = sys.argv[1]; \
[s['Name'] for s in s3.list_buckets()['Buckets']].count(b) or s3.create_bucket(Bucket=b)" "$S3_BUCKET"
}

start() {
  mkdir -p "$STATE"
  s3_start
  ray get-auth-token --generate >/dev/null
  ray start --head --node-ip-address 127.0.0.1 --port "$RAY_PORT" --temp-dir "$RAY_TMP" --dashboard-host 127.0.0.1 \
    --dashboard-port "$DASHBOARD_PORT" --dashboard-agent-listen-port "$AGENT_PORT" --disable-usage-stats ${1:+--num-cpus "$1"} >"$STATE/ray_start.log" 2>&1 \
    || { cat "$STATE/ray_start.log" >&2; echo "ray start failed (is a cluster already running? scripts/cluster.sh stop)" >&2; exit 1; }
  if ! mlflow_up; then
    nohup mlflow server --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$MLFLOW_ARTIFACTS" \
      --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$STATE/mlflow.log" 2>&1 &
    echo $! >"$STATE/mlflow.pid"
    for _ in $(seq 60); do mlflow_up && break; sleep 1; done
    mlflow_up || { tail -20 "$STATE/mlflow.log" >&2; echo "the MLflow server did not come up" >&2; exit 1; }
  fi
  cat <<EOF
Ray head on 127.0.0.1:$RAY_PORT (token auth), dashboard and job server on http://127.0.0.1:$DASHBOARD_PORT
MLflow server on http://127.0.0.1:$MLFLOW_PORT (store $STATE/mlflow.db, artifacts $MLFLOW_ARTIFACTS)
S3 (moto) on $AWS_ENDPOINT_URL, bucket s3://$S3_BUCKET
In your shell:
  export RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:$RAY_PORT RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT \\
      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
  export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \\
      AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
Ingest into object storage, then submit:
  .venv/bin/python -m pipelines.ingest fashion-mnist --out s3://$S3_BUCKET/data/fashion_mnist
  .venv/bin/ray job submit --working-dir . -- python -m pipelines.pretrain --config configs/byol_fmnist_quick.yaml \\
      --set data.path=s3://$S3_BUCKET/data/fashion_mnist --set train.storage_path=s3://$S3_BUCKET/runs \\
      --set tracking.tracking_uri=http://127.0.0.1:$MLFLOW_PORT --set tracking.artifact_location=s3://$S3_BUCKET/mlflow
EOF
}

add_node() {
  # `ray start` refuses a second node under the one-machine switch, and without it would look for the head on this
  # machine's network address: the same command, with 127.0.0.1 left as it is. The node keeps its own Ray folder, as
  # a node on another machine does: sharing the head's, it shared the jobs' unpacked working directories, and losing
  # the node deleted the one a job's driver on the head ran in (its next os.getcwd() failed)
  python - --address "127.0.0.1:$RAY_PORT" --node-ip-address 127.0.0.1 --temp-dir "$RAY_TMP/node2" --num-cpus "${1:-1}" \
    --dashboard-agent-listen-port "${NODE_AGENT_PORT:-$((AGENT_PORT + 1))}" --disable-usage-stats \
    >"$STATE/ray_add_node.log" 2>&1 <<'PYTHON' || { cat "$STATE/ray_add_node.log" >&2; exit 1; }
import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray.scripts.scripts import main

ray_constants.ENABLE_RAY_CLUSTER = True  # in this process only: the node's own processes keep the switch
services.resolve_ip_for_localhost = lambda host: host
sys.argv = ["ray", "start", *sys.argv[1:]]
main()
PYTHON
  echo "a second node with ${1:-1} CPUs joined 127.0.0.1:$RAY_PORT"
}

stop() {
  # the process trees of this cluster's Ray processes, MLflow and S3 servers (scripts/cluster_processes.py)
  python scripts/cluster_processes.py stop "$RAY_TMP" "$RAY_PORT" \
    $(cat "$STATE/mlflow.pid" "$STATE/s3.pid" 2>/dev/null) || true
  rm -f "$STATE/mlflow.pid" "$STATE/s3.pid"
  echo "stopped the Ray head, the MLflow server and the S3 server"
}

status() {
  if ray status --address "127.0.0.1:$RAY_PORT" >/dev/null 2>&1; then echo "Ray: up on 127.0.0.1:$RAY_PORT"; else echo "Ray: down"; fi
  if mlflow_up; then echo "MLflow: up on http://127.0.0.1:$MLFLOW_PORT"; else echo "MLflow: down"; fi
  if s3_up; then echo "S3: up on $AWS_ENDPOINT_URL"; else echo "S3: down"; fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  add-node) shift; add_node "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: scripts/cluster.sh start [CPUS] | add-node CPUS | stop | status" >&2; exit 2 ;;
esac

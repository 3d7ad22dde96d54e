#!/usr/bin/env bash
# A local multi-node Ray cluster on one machine: a head and WORKERS worker nodes (default 2), all on 127.0.0.1,
# token authentication on, telemetry off. Stop it with `start.sh stop` (or `ray stop`).
#   cluster/local/start.sh            # start; prints the dashboard address and how to use the token
#   cluster/local/start.sh stop
# Environment: WORKERS (0-2), HEAD_CPUS (default 2), WORKER_CPUS (default 2), RAY_PORT (6379),
# DASHBOARD_PORT (8265), RAY_TMP (/tmp/defakenet-ray), RAY (the ray executable; default: .venv/bin/ray or PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
if [[ -z "${RAY:-}" ]]; then
  if [[ -x "${repo}/.venv/bin/ray" ]]; then RAY="${repo}/.venv/bin/ray"; else RAY="ray"; fi
fi
workers="${WORKERS:-2}"
head_cpus="${HEAD_CPUS:-2}"
worker_cpus="${WORKER_CPUS:-2}"
ray_port="${RAY_PORT:-6379}"
dashboard_port="${DASHBOARD_PORT:-8265}"
tmp="${RAY_TMP:-/tmp/defakenet-ray}"
ip="127.0.0.1"

export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0
export MLFLOW_DISABLE_TELEMETRY=true
export NO_ALBUMENTATIONS_UPDATE=1

if [[ "${1:-start}" == "stop" ]]; then
  # stops every Ray node of this user on this machine: the head and the workers started below
  "${RAY}" stop
  exit 0
fi
if [[ "${1:-start}" != "start" ]]; then
  echo "usage: $0 [start|stop]" >&2
  exit 2
fi
if ! [[ "${workers}" =~ ^[0-2]$ ]]; then
  echo "WORKERS must be 0, 1 or 2, not ${workers}" >&2
  exit 2
fi

# the token every node and every client uses: Ray's default file, made once
if [[ -z "${RAY_AUTH_TOKEN:-}" && ! -s "${HOME}/.ray/auth_token" ]]; then
  "${RAY}" get-auth-token --generate > /dev/null
fi

# each node takes distinct ports for its own agents, so the nodes can share one machine
"${RAY}" start --head --node-ip-address "${ip}" --port "${ray_port}" \
  --dashboard-host "${ip}" --dashboard-port "${dashboard_port}" --ray-client-server-port 10001 \
  --num-cpus "${head_cpus}" --temp-dir "${tmp}" --disable-usage-stats \
  --node-manager-port 6380 --object-manager-port 6381 --runtime-env-agent-port 6382 \
  --dashboard-agent-grpc-port 6383 --dashboard-agent-listen-port 6384 --metrics-export-port 6385 \
  --min-worker-port 11000 --max-worker-port 11999

for i in $(seq 1 "${workers}"); do
  base=$((6380 + 10 * i))
  "${RAY}" start --address "${ip}:${ray_port}" --node-ip-address "${ip}" --num-cpus "${worker_cpus}" \
    --node-manager-port "${base}" --object-manager-port $((base + 1)) --runtime-env-agent-port $((base + 2)) \
    --dashboard-agent-grpc-port $((base + 3)) --dashboard-agent-listen-port $((base + 4)) \
    --metrics-export-port $((base + 5)) --min-worker-port $((11000 + 1000 * i)) \
    --max-worker-port $((11999 + 1000 * i)) --disable-usage-stats
done

cat <<MSG
Ray cluster on ${ip}: head + ${workers} worker node(s), dashboard http://${ip}:${dashboard_port}
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\$(${RAY} get-auth-token)
  defakenet submit jobs/train.yaml --address http://${ip}:${dashboard_port} --follow -- \\
      --config jobs/configs/train-cpu-small.yaml --data "\$PWD/.defakenet/demo/synthetic"
  RAY_ADDRESS=${ip}:${ray_port} defakenet serve --host ${ip}     # see cluster/local/README.md
  ${0} stop
MSG

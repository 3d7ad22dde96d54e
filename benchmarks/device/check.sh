#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with an NVIDIA GPU: the device tool's (second call, see README.md here),
# or your own with defakenet installed (WHEELS= to skip the wheel install). Each step has its own time limit and
# the next one runs even if it fails; $OUT gets check.log, summary.txt and the benchmarks' JSON.
#
#   bash benchmarks/device/check.sh            # OUT=/tmp/defakenet-gpu-check unless set
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/defakenet-gpu-check}
WORK=${WORK:-/tmp/defakenet-gpu}
WHEELS=${WHEELS-/tmp/wheels}
N=${N:-3000}  # synthetic images per class at 224 px: 4,200 train images, 65 steps of 64 per epoch
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/check.log") 2>&1

if [ -n "$WHEELS" ]; then
    mkdir -p "$WHEELS"
    cp .device/*/*.whl "$WHEELS"/ 2>/dev/null
    if ! ls "$WHEELS"/ray-*.whl >/dev/null 2>&1; then
        echo "no Ray wheel in $WHEELS: the first call (carry .device/a, copy to $WHEELS) did not run on this machine"
        exit 3
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || exit 4
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_DISABLE_TELEMETRY=true
PY=${PY:-python3}
: > "$OUT/summary.txt"

step() {  # step NAME SECONDS CMD...: run, time, record ok/FAILED in summary.txt
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name: $*"
    t0=$(date +%s)
    timeout "$limit" "$@"
    rc=$?
    printf '%-12s %-10s %4ss  %.150s\n' "$name" "$([ $rc = 0 ] && echo ok || echo "FAILED($rc)")" \
        "$(( $(date +%s) - t0 ))" "$(tr '\n' ' ' <<<"$*")" | tee -a "$OUT/summary.txt"
}

step env 60 $PY -c "
import torch, ray, mlflow, albumentations, defakenet
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print('ray', ray.__version__, 'mlflow', mlflow.__version__, 'albumentations', albumentations.__version__)
print('bf16', torch.cuda.is_bf16_supported(), 'nccl', torch.distributed.is_nccl_available())"
step synth 300 $PY -m defakenet data synth "$WORK/data" --n "$N" --size 224
# the training path: NCCL process group, bf16 autocast, channels_last, GPU evaluation actors, registry
step train 540 $PY -m defakenet train --data "$WORK/data" --gpu --workers 1 --epochs 2 --image-size 224 \
    --batch-size 64 --home "$WORK/home" --run-name gpu-check --register defakenet
cp "$WORK"/home/runs/gpu-check/report/metrics.json "$OUT/train-metrics.json" 2>/dev/null
step evaluate 300 $PY -m defakenet evaluate --model models:/defakenet/1 --data "$WORK/data" --gpu \
    --tracking-uri "sqlite:///$WORK/home/mlflow.db" --output "$WORK/eval"
step train-bench 480 $PY benchmarks/train_throughput.py --gpu --data "$WORK/data" --image-size 224 \
    --batch-size 64 --repeats 1 --output "$OUT/train_throughput.json"
step serve-bench 480 $PY benchmarks/serve_throughput.py --gpu --image-size 224 --requests 1000 \
    --output "$OUT/serve_throughput.json"
echo "=== summary"
cat "$OUT/summary.txt"

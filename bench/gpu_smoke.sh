#!/usr/bin/env bash
# The GPU paths, end to end on a CUDA machine (issue 12): one PASS, FAIL or SKIP line per step, then the
# training throughput on the GPU against the CPU. About 5 minutes on one GPU; needs no network.
#
#   bench/gpu_smoke.sh [WORKDIR]        (default: a new temporary folder; keeps every step's log there)
#
# Uses .venv/bin (make install) unless BIN is set. GPU inference (predict on gpu, a KIND_GPU Triton model)
# needs onnxruntime-gpu in place of onnxruntime (pip install 'sortflow[gpu]' after removing onnxruntime):
# without its CUDA provider those steps FAIL with the reason, as a user would see them.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${BIN:-$ROOT/.venv/bin}
export PATH="$BIN:$PATH" MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
W=$(realpath "${1:-$(mktemp -d)}")
mkdir -p "$W" && cd "$W" || exit 2
FAILED=0

step() {  # step NAME COMMAND...: run it, log it to NAME.log, say PASS or FAIL
  local name=$1
  shift
  if "$@" >"$W/$name.log" 2>&1; then
    echo "PASS $name"
  else
    echo "FAIL $name: $(grep -E '^error|Error' "$W/$name.log" | tail -n 1 | cut -c1-200) (log: $W/$name.log)"
    FAILED=1
  fi
}

GPUS=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" = 0 ]; then
  echo "SKIP all: torch sees no CUDA device here"
  exit 0
fi
echo "GPUs: $GPUS ($(python -c 'import torch; print(torch.cuda.get_device_name(0))'))"
COMMON=(-o dataset.num_workers=0 -o train.model=PP-LCNet_x1_0 -o train.pretrained=none -o train.image_size=128
        -o train.batch_size=64 -o train.epochs=1 -o mlflow.tracking_uri=sqlite:///$W/mlflow.db
        -o publish.repo=$W/triton_repo)
TRASHNET=$ROOT/../shared/data/trashnet-rgb-112.tar.gz

if [ -f "$TRASHNET" ]; then
  step data bash -c "mkdir -p raw && tar -xzf '$TRASHNET' -C raw && sortflow dataset convert raw/* data"
else
  step data sortflow dataset demo data
fi
step check-dataset sortflow check-dataset data "${COMMON[@]}"
step split sortflow split data "${COMMON[@]}"
step train-gpu sortflow train "${COMMON[@]}" -o train.device=gpu -o train.output=gpu
step train-cpu sortflow train "${COMMON[@]}" -o train.device=cpu -o train.output=cpu
if [ "$GPUS" -ge 2 ]; then
  step ddp-nccl sortflow train "${COMMON[@]}" -o train.device=gpu:0,1 -o train.epochs=2 -o train.output=ddp
  step resume-on-1-gpu sortflow train "${COMMON[@]}" -o train.device=gpu -o train.epochs=3 -o train.output=ddp \
    -o train.resume=true
else
  echo "SKIP ddp-nccl: one GPU"
  step resume-on-1-gpu sortflow train "${COMMON[@]}" -o train.device=gpu -o train.epochs=2 -o train.output=gpu \
    -o train.resume=true
fi
step evaluate sortflow evaluate "${COMMON[@]}" -o train.output=gpu
step export sortflow export "${COMMON[@]}" -o train.output=gpu
printf 'model_dir: output/export\ndevice: gpu\n' >pipeline-gpu.yaml
step predict-cuda sortflow predict --input data/images "${COMMON[@]}" --config pipeline-gpu.yaml
step register sortflow register "${COMMON[@]}"
step publish-kind-gpu sortflow publish "${COMMON[@]}" -o publish.instance_kind=gpu
step triton-gpu-runner bash -c "sortflow serve ${COMMON[*]} && sortflow serve --status ${COMMON[*]} && \
  grep -q 'KIND_GPU' $W/triton_repo/sortflow-classifier/config.pbtxt; status=\$?; sortflow serve --stop ${COMMON[*]}; \
  exit \$status"

python - "$W" <<'EOF'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
speed = {}
for name in ("gpu", "cpu"):
    result = work / name / "train_result.json"
    if result.is_file():
        speed[name] = json.loads(result.read_text())["history"][-1]["img_per_s"]
if len(speed) == 2:
    print(f"training img/s (PP-LCNet_x1_0, 128 px, batch 64, bf16 autocast and channels_last on the GPU): "
          f"GPU {speed['gpu']:.0f}, CPU {speed['cpu']:.0f}, ratio {speed['gpu'] / speed['cpu']:.1f}x")
EOF
exit $FAILED

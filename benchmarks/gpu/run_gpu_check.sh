#!/usr/bin/env bash
# The GPU check in one call, for a machine with an NVIDIA GPU, torch, triton and transformers,
# and no network. The other wheels sglite needs travel in benchmarks/gpu/wheels/ (git-ignored;
# fill it on a connected machine with benchmarks/gpu/fetch_wheels.sh). Results go to
# benchmarks/results/gpu_*.json, and to $OUT as well when it is set.
#
#   bash benchmarks/gpu/run_gpu_check.sh            # on the GPU machine (about 6-7 minutes)
#   bash benchmarks/gpu/run_gpu_check.sh --dry-run  # anywhere: CPU, tiny shapes
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WHEELS=benchmarks/gpu/wheels
SITE=${SGLITE_GPU_SITE:-/tmp/sglite-gpu-site}
PY=${PYTHON:-python3}

DEPS="import zmq, msgspec, fastapi, uvicorn, outlines_core, pydantic, jsonschema"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if $PY -c "$DEPS" 2> /dev/null; then
  echo "sglite's dependencies are installed: not installing wheels"
elif compgen -G "$WHEELS/*.whl" > /dev/null; then
  # --no-deps: the folder holds exactly what the machine lacks; --target keeps the image's own
  # torch/triton/transformers untouched.
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$SITE"
else
  echo "sglite's dependencies are missing and $WHEELS holds no wheels: run fetch_wheels.sh on a connected machine"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SGLITE_BENCH_CACHE=${SGLITE_BENCH_CACHE:-/tmp/sglite-bench-models}

$PY -c "import sglite, sglite_runtime, zmq, msgspec, fastapi, outlines_core" \
  || { echo "sglite's dependencies are not importable: see the error above"; exit 1; }
$PY benchmarks/gpu/gpu_check.py "$@"
rc=$?
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/gpu_*.json "$OUT"/ 2>/dev/null || true
fi
exit $rc

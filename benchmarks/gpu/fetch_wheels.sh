#!/usr/bin/env bash
# Download, on a machine with network, the wheels the GPU check installs offline: sglite's
# dependencies that an image with torch, triton and transformers usually lacks. Pinned to the
# versions this repository is tested with; built for CPython 3.12 on x86-64 Linux by default.
#   bash benchmarks/gpu/fetch_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")"
PYV=${1:-3.12}
mkdir -p wheels
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp $PLAT \
  -d wheels -r requirements-gpu-check.txt
du -sh wheels

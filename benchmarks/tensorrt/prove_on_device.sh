#!/usr/bin/env bash
# Device proof of the TensorRT build path (docs/tensorrt.md, "What was verified where").
#
# Run on the GPU machine, from the repository root, with mamba_export/_lib carried (built
# with TENSORRT_INCLUDE_DIR set, so that it holds libmamba_trt.so) and TensorRT-RTX staged
# into /tmp/site by ../shared/tools/stage-wheel (its install.sh already run):
#   bash benchmarks/tensorrt/prove_on_device.sh [prove_build.py options]
# Writes gpu.txt, ldd.txt, prove_build.log, prove_build.json and timing.cache to $OUT.
set -euo pipefail
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/out}"
export OUT
mkdir -p "$OUT"
# TensorRT-RTX's ONNX parser dlopens libtensorrt_rtx.so by that plain name, which its wheel
# does not have (only libtensorrt_rtx.so.1).
rtx_libs=$(python3 -c 'import os, tensorrt_rtx_libs; print(os.path.dirname(tensorrt_rtx_libs.__file__))' 2>/dev/null || true)
if [ -n "$rtx_libs" ]; then
  links=$(mktemp -d)
  ln -s "$rtx_libs/libtensorrt_rtx.so.1" "$links/libtensorrt_rtx.so"
  export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv | tee "$OUT/gpu.txt"
lib=$(python3 -c 'import mamba_export; print(mamba_export.tensorrt_plugin_library())')
ldd "$lib" | tee "$OUT/ldd.txt"
python3 benchmarks/tensorrt/prove_build.py "$@" 2>&1 | tee "$OUT/prove_build.log"

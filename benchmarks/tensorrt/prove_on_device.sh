#!/usr/bin/env bash
# Device proof of the TensorRT path (docs/tensorrt.md, "What was verified where"): the tests of
# tests/test_tensorrt.py as that machine runs or skips them, then prove_build.py.
#
# Run on the GPU machine, from the repository root, with mamba_export/_lib carried (built with
# TENSORRT_INCLUDE_DIR set, so that it holds libmamba_trt.so beside libmamba_kernels.so) and
# TensorRT (or TensorRT-RTX) importable, e.g. staged into /tmp/site by ../shared/tools/stage-wheel
# (its install.sh already run in this call or an earlier one on the same machine):
#   bash benchmarks/tensorrt/prove_on_device.sh [prove_build.py options]
# Writes gpu.txt, ldd.txt, test_tensorrt.log, prove_build.log, prove_build.json (and, with
# TensorRT, timing.cache) to $OUT. Exit status 0 when the tests passed (or skipped, each with its
# reason in the log) and every engine of prove_build.py was built.
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

status=0
# The suite first: it is short, and where TensorRT cannot build for or run on this GPU its skips
# say why (-rs), which is part of the proof. Without TensorRT's headers (third_party/ is not
# carried) the plugin-probe tests skip; they need no GPU and run on the development machine.
if python3 -c 'import pytest' 2>/dev/null; then
  python3 -m pytest tests/test_tensorrt.py -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/test_tensorrt.log" || status=1
else
  echo "pytest is not installed for $(command -v python3): tests/test_tensorrt.py was not run" \
    "(carry a pytest wheel as the device README says)" | tee "$OUT/test_tensorrt.log"
  status=1
fi
python3 benchmarks/tensorrt/prove_build.py "$@" 2>&1 | tee "$OUT/prove_build.log" || status=1
exit "$status"

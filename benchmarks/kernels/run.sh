#!/usr/bin/env bash
# The CUDA selective scan's proof on a GPU machine, in one command: sanitizers on a small
# driver, then checks against the reference and timings (check_and_time.py; its arguments
# pass through). `run.sh ssd [args]` does the same for the SSD scan (ssd_check_and_time.py;
# the mamba_ssm anchor is third_party/mamba_ssd, see its extract.sh). Uses
# build/kbench/{libmamba_kernels.so,sanitize_driver} when present (built on an x86-64
# machine with `benchmarks/kernels/run.sh --build-only`), else builds them.
# The mamba_ssm anchor is used when third_party/mamba_ref exists (see its build.sh).
# Results go to $OUT (default out/kernels).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/kernels}
BUILD=build/kbench
mkdir -p "$OUT" "$BUILD"

if [[ ! -f $BUILD/libmamba_kernels.so || ${1:-} == --build-only ]]; then
  cmake -S plugins -B "$BUILD/cmake" -DMAMBA_EXPORT_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    cmake --build "$BUILD/cmake" -j"$(nproc)" --target mamba_kernels >/dev/null &&
    cp "$BUILD/cmake/kernels/cuda/libmamba_kernels.so" "$BUILD/" || exit 1
fi
if [[ ! -x $BUILD/sanitize_driver || ${1:-} == --build-only ]]; then
  nvcc -O2 -std=c++17 -arch=sm_90 -Iplugins/include benchmarks/kernels/sanitize_driver.cu -L"$BUILD" \
    -lmamba_kernels -Xlinker -rpath='$ORIGIN' -o "$BUILD/sanitize_driver" || exit 1
fi
[[ ${1:-} == --build-only ]] && exit 0
DRIVER_ARGS=() SCRIPT=check_and_time.py
if [[ ${1:-} == ssd ]]; then
  shift
  DRIVER_ARGS=(ssd) SCRIPT=ssd_check_and_time.py
fi
if [[ -x third_party/mamba_ref/build.sh && ! -f third_party/mamba_ref/libmamba_ref.so ]]; then
  third_party/mamba_ref/build.sh
fi

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
status=0
for tool in memcheck racecheck synccheck; do
  if timeout 100 compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/sanitize_driver" "${DRIVER_ARGS[@]}" >"$OUT/sanitize_$tool.log" 2>&1; then
    echo "compute-sanitizer $tool: clean ($(grep -c ': ok' "$OUT/sanitize_$tool.log") cases)"
  else
    echo "compute-sanitizer $tool: FAILED"; tail -n 30 "$OUT/sanitize_$tool.log"; status=1
  fi
done
export MAMBA_EXPORT_KERNELS_LIBRARY=$PWD/$BUILD/libmamba_kernels.so
PYTHONUNBUFFERED=1 python3 "benchmarks/kernels/$SCRIPT" --out "$OUT" "$@" || status=1
exit $status

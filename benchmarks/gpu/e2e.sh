#!/usr/bin/env bash
# End to end on a GPU (docs/performance.md, "End to end on the H100"): ONNX Runtime's CUDA
# execution provider with the mamba custom op (backend ort-cuda) validated against eager
# PyTorch float32, then its prefill and per-token decode latency next to eager PyTorch on the
# same GPU, for mamba-130m- and mamba-1.4b-sized models with random weights.
#
# Run from the repository root on the GPU machine, with mamba_export/_lib carried (a CUDA
# build: libmamba_ort.so and libmamba_kernels.so) and onnxruntime-gpu installed into /tmp/site;
# nothing is installed, the package is imported from the checkout:
#   bash benchmarks/gpu/e2e.sh small    # GPU tests, validations, generate, mamba-130m bench
#   bash benchmarks/gpu/e2e.sh large    # mamba-1.4b validation and bench (its export takes minutes)
#   bash benchmarks/gpu/e2e.sh all      # both, where one command may run that long
#   bash benchmarks/gpu/e2e.sh summary  # the summary of what $OUT holds (each part ends with it)
# Logs, JSON and the bench reports go to $OUT (default out/gpu); exports to $WORK.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/out/gpu}
WORK=${WORK:-/tmp/mamba-e2e}  # exports are hundreds of MB to GB: kept out of $OUT
mkdir -p "$OUT" "$WORK"
status=0

# step NAME COMMAND...: COMMAND's output goes to $OUT/NAME.log (its end is shown); the exit
# status and the seconds it took go to $OUT/steps.tsv.
step() {
  local name=$1 start=$SECONDS rc
  shift
  echo "== $name"
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%ss\n' "$name" "$rc" $((SECONDS - start)) >>"$OUT/steps.tsv"
  tail -n 12 "$OUT/$name.log"
  [ "$rc" -eq 0 ] || status=1
}
cli() { python3 -m mamba_export.cli "$@"; }
SHIPPED=models/mamba1-pystdlib
BENCH=(--device cuda --backends torch,ort-cuda --decode-tokens 32 --repeat 5 --warmup 2 --overwrite)

# Greedy generation from the shipped model on ort-cuda and on eager PyTorch (CPU).
generate_both() {
  local prompt='import os' ort eager
  local args=(generate "$SHIPPED" -q --prompt "$prompt" --max-new-tokens 64)
  ort=$(cli "${args[@]}" --backend ort-cuda --onnx "$WORK/shipped") || return 1
  eager=$(cli "${args[@]}" --backend torch) || return 1
  printf 'ort-cuda: %q\ntorch:    %q\n' "$ort" "$eager"
  if [ "$ort" = "$eager" ]; then echo "greedy text: identical"; else echo "greedy text: differs"; fi
}

small() {
  step environment python3 benchmarks/gpu/e2e.py environment --out "$OUT"
  step tests python3 -m pytest -q -ra -p no:cacheprovider tests/test_ort_cuda.py tests/test_cuda_selective_scan.py
  if [ -d "$SHIPPED" ]; then
    step validate_shipped cli validate "$SHIPPED" --backend ort-cuda --onnx "$WORK/shipped" \
      --json "$OUT/validate_shipped.json"
    step validate_shipped_fp16 cli validate "$SHIPPED" --backend ort-cuda --dtype fp16 --onnx "$WORK/shipped-fp16" \
      --json "$OUT/validate_shipped_fp16.json"
    step generate_shipped generate_both
  else
    echo "== $SHIPPED is not in this checkout: the shipped model's validation and generation are skipped"
  fi
  step validate_mamba-130m python3 benchmarks/gpu/e2e.py validate --config mamba-130m --export "$WORK/mamba-130m" \
    --json "$OUT/validate_mamba-130m.json"
  step bench_mamba-130m cli bench --config mamba-130m --batch 1,8 --prompt-len 128,1024 "${BENCH[@]}" \
    --out "$OUT/bench-mamba-130m"
}

# mamba-1.4b: exported once into $WORK/mamba-1.4b/ort-cuda (minutes), where the bench finds it
# again; run a second time on the same machine, `large` skips the export.
large() {
  step validate_mamba-1.4b python3 benchmarks/gpu/e2e.py validate --config mamba-1.4b \
    --export "$WORK/mamba-1.4b/ort-cuda" --prompt-len 128 --json "$OUT/validate_mamba-1.4b.json"
  step bench_mamba-1.4b python3 benchmarks/gpu/e2e.py bench --config mamba-1.4b --work "$WORK/mamba-1.4b" \
    --batch 1 --prompt-len 128,1024 --out "$OUT/bench-mamba-1.4b"
}

case "${1:-}" in
  small) small ;;
  large) large ;;
  all) small; large ;;
  summary) ;;
  *) echo "usage: $0 small|large|all|summary" >&2; exit 2 ;;
esac
python3 benchmarks/gpu/e2e.py summary --out "$OUT"
exit $status

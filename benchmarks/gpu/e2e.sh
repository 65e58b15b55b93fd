#!/usr/bin/env bash
# End to end on a GPU (docs/performance.md, "End to end on the H100"): ONNX Runtime's CUDA
# execution provider with the mamba custom ops (backend ort-cuda) validated against eager
# PyTorch float32, then its prefill and per-token decode latency next to eager PyTorch on the
# same GPU, for mamba-130m-, mamba2-130m- and mamba-1.4b-sized models with random weights.
#
# Run from the repository root on the GPU machine, with mamba_export/_lib carried (a CUDA
# build: libmamba_ort.so and libmamba_kernels.so) and onnxruntime-gpu installed into /tmp/site;
# nothing is installed, the package is imported from the checkout:
#   bash benchmarks/gpu/e2e.sh small    # both shipped models validated and generating;
#                                       # mamba-130m and mamba2-130m validated and benched
#   bash benchmarks/gpu/e2e.sh tests    # the GPU tests (ORT CUDA op, torch ops' CUDA kernels, bench)
#   bash benchmarks/gpu/e2e.sh large    # mamba-1.4b validation and bench (its export takes minutes)
#   bash benchmarks/gpu/e2e.sh all      # small, tests and large, where one command may run that long
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
SHIPPED=(models/mamba1-pystdlib models/mamba2-pystdlib)

# Greedy generation from a shipped model on ort-cuda, on eager PyTorch on the GPU and on eager
# PyTorch on the CPU: the same text from all three.
generate_all() {
  local model=$1 prompt='import os' texts=() names=(ort-cuda torch-cuda torch-cpu)
  local args=(generate "$model" -q --prompt "$prompt" --max-new-tokens 64)
  texts+=("$(cli "${args[@]}" --backend ort-cuda --onnx "$WORK/$(basename "$model")")") || return 1
  texts+=("$(cli "${args[@]}" --backend torch --device cuda)") || return 1
  texts+=("$(cli "${args[@]}" --backend torch)") || return 1
  for i in 0 1 2; do
    printf '%-11s %q\n' "${names[$i]}:" "${texts[$i]}"
  done
  if [ "${texts[0]}" = "${texts[2]}" ] && [ "${texts[1]}" = "${texts[2]}" ]; then
    echo "greedy text: identical"
  else
    echo "greedy text: differs"
  fi
}

small() {
  step environment python3 benchmarks/gpu/e2e.py environment --out "$OUT"
  for config in mamba-130m mamba2-130m; do
    # The bench finds the export that the validation made (WORK/CONFIG/ort-cuda).
    step "validate_$config" python3 benchmarks/gpu/e2e.py validate --config "$config" \
      --export "$WORK/$config/ort-cuda" --json "$OUT/validate_$config.json"
    step "bench_$config" python3 benchmarks/gpu/e2e.py bench --config "$config" --work "$WORK/$config" \
      --batch 1,8 --prompt-len 128,1024 --out "$OUT/bench-$config"
  done
  for model in "${SHIPPED[@]}"; do
    local name
    name=$(basename "$model")
    if [ ! -d "$model" ]; then
      echo "== $model is not in this checkout: its validation and generation are skipped"
      continue
    fi
    step "validate_$name" cli validate "$model" --backend ort-cuda --onnx "$WORK/$name" --json "$OUT/validate_$name.json"
    step "validate_${name}_fp16" cli validate "$model" --backend ort-cuda --dtype fp16 --onnx "$WORK/$name-fp16" \
      --json "$OUT/validate_${name}_fp16.json"
    step "validate_${name}_torch-cuda" cli validate "$model" --backend torch --device cuda \
      --json "$OUT/validate_${name}_torch-cuda.json"
    step "generate_$name" generate_all "$model"
  done
}

# The GPU tests: both ops on ORT's CUDA provider (decode steps with and without CUDA graphs) and
# in the torch ops' CUDA kernels, the bench.
tests() {
  step tests python3 -m pytest -q -ra -p no:cacheprovider -n 8 tests/test_ort_cuda.py tests/test_ort_cuda_graphs.py \
    tests/test_cuda_selective_scan.py tests/test_cuda_ssd_scan.py tests/test_bench.py
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
  tests) tests ;;
  large) large ;;
  all) small; tests; large ;;
  summary) ;;
  *) echo "usage: $0 small|tests|large|all|summary" >&2; exit 2 ;;
esac
python3 benchmarks/gpu/e2e.py summary --out "$OUT"
exit $status

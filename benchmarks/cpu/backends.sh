#!/usr/bin/env bash
# CPU latency of the backends on a mamba-130m-sized model (d_model 768, 24 layers, random
# weights): eager PyTorch, ONNX Runtime with our kernel, and the portable export (stock ONNX
# Runtime, the scan as a Scan loop), prefill at 128 and 1024 tokens and per-token decode, in
# one run. Each backend is validated against eager float32 before it is timed.
#   benchmarks/cpu/backends.sh [OUT_DIR]        (default bench-results/cpu-mamba-130m)
# The report (bench.md, bench.json, bench.png) lands in OUT_DIR; docs/performance.md quotes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench-results/cpu-mamba-130m}
exec .venv/bin/mamba-export bench --config mamba-130m --backends torch,ort,ort-portable --device cpu \
  --batch 1 --prompt-len 128,1024 --decode-tokens 64 --warmup 2 --repeat 5 --out "$out" --overwrite

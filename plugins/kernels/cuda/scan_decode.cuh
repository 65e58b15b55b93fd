// The decode step (seqlen == 1): one state update per (batch, channel), bound by reading
// and writing the state at large batch and by its dependent chain of latencies at batch 1.
// R consecutive lanes share a channel, each holding NS states (16-byte accesses when N
// allows); a butterfly over those lanes sums C*h.
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"

namespace mamba_cuda {

// 256 threads per block: on the H100 1-7% faster than 64 at every benchmark shape and mostly
// ahead of 128 (512 and 1024 were slower).
constexpr int kDecodeThreads = 256;

// kFull, the usual case (checked at launch): every lane holds NS states, every state, A, B
// and C row allows vector accesses, one group, an initial state, and the offsets into A, B
// and C fit 32 bits. Then the loads are straight-line code with 32-bit address arithmetic,
// issued together: on the H100 the general form's group division, 64-bit offsets and
// optional state made a batch-1 step about 0.2 us slower (1.8-2.0 us against 1.6-1.8).
template <typename T, int NS, int R, bool kFull>
__global__ void __launch_bounds__(kDecodeThreads) scan_decode(const ScanArgs a, int batch) {
  // 32-bit indices (batch * dim < 2^31, mamba_selective_scan_cuda_check), R a constant and
  // blockIdx.y the batch row: index arithmetic sits in front of every load of this
  // latency-bound kernel, and 64-bit products and divisions are long sequences there.
  const int dim = int(a.dim);
  const int d = blockIdx.x * (kDecodeThreads / R) + threadIdx.x / R;
  const int sg = threadIdx.x % R;
  const bool active = d < dim;
  const unsigned lanes = __ballot_sync(~0u, active);  // whole channels: R divides 32
  if (!active) return;
  const int g = kFull || a.G == 1 ? 0 : d / a.cpg;
  const int N = a.N;
  const int n0 = sg * NS;
  const int valid = kFull ? NS : max(0, min(NS, N - n0));
  const bool vec_state = kFull || (a.vec & kVecState);

  const float bias = a.delta_bias ? a.delta_bias[d] : 0.f;
  const float Dv = a.D ? a.D[d] : 0.f;
  Pack<float, NS> A;
  load_pack(A, a.A + (kFull ? d * N : int64_t(d) * N) + n0, valid, vec_state);
  for (int b = blockIdx.y; b < batch; b += gridDim.y) {
    const int row = b * dim + d;
    const int64_t bc = kFull ? b * N + n0 : int64_t(b * a.G + g) * N + n0;
    const T z_raw = a.z ? static_cast<const T*>(a.z)[row] : T{};
    Pack<float, NS> h;
    Pack<T, NS> Bv, Cv;
    load_pack(Cv, static_cast<const T*>(a.C) + bc, valid, kFull || (a.vec & kVecC));
    const bool has_h0 = kFull || a.h0;
    load_pack(h, has_h0 ? a.h0 + int64_t(row) * N + n0 : nullptr, has_h0 ? valid : 0, vec_state);
    load_pack(Bv, static_cast<const T*>(a.B) + bc, valid, kFull || (a.vec & kVecB));
    const T delta_raw = static_cast<const T*>(a.delta)[row];
    const T u_raw = static_cast<const T*>(a.u)[row];
    // Every load issued before any use: left alone, ptxas issues B, C and the state after
    // the softplus, which waits for delta: a second memory latency. Memory accesses do not
    // move across a warp barrier (an empty asm with a memory clobber did not hold them).
    __syncwarp(lanes);
    const float delta = to_float(delta_raw), u = to_float(u_raw);
    // The gate first: it depends only on z, so it runs while the state update waits.
    const float gate = a.z ? silu(to_float(z_raw)) : 1.f;

    const float dt = a.softplus ? softplus(delta + bias) : delta + bias;
    const float du = dt * u;
    float part[NS];
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      const float hq = fmaf(ex2(dt * A.get(q) * kLog2e), h.get(q), du * Bv.get(q));
      h.set(q, hq);
      part[q] = Cv.get(q) * hq;
    }
    store_pack(h, a.hT + int64_t(row) * N + n0, valid, vec_state);
#pragma unroll
    for (int w = NS / 2; w >= 1; w /= 2) {  // a tree: log2(NS) dependent adds instead of NS
#pragma unroll
      for (int q = 0; q < w; ++q) part[q] += part[q + w];
    }
    float acc = part[0];
#pragma unroll
    for (int m = 1; m < R; m <<= 1) acc += __shfl_xor_sync(lanes, acc, m);
    if (sg == 0) static_cast<T*>(a.y)[row] = from_float<T>(fmaf(Dv, u, acc) * gate);
  }
}

}  // namespace mamba_cuda

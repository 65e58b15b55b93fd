// The decode step (seqlen == 1): one state update per (batch, channel), bound by reading
// and writing the state. R consecutive lanes share a channel, each holding NS states
// (16-byte accesses when N allows); a butterfly over those lanes sums C*h.
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"

namespace mamba_cuda {

// kFull: every lane holds NS states and every state, A, B and C row allows vector accesses
// (the usual case, checked at launch); then the loads are straight-line code, issued
// together, instead of sitting in the branches of the general tail handling.
template <typename T, int NS, bool kFull>
__global__ void __launch_bounds__(64) scan_decode(const ScanArgs a, int log2_lanes, int batch) {
  // blockIdx.y is the batch row, so no division by dim; the group index divides only when
  // there are groups. Divisions are long instruction sequences in front of every load of
  // this latency-bound kernel.
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int R = 1 << log2_lanes;
  const int64_t d64 = gid >> log2_lanes;
  const int sg = int(gid & (R - 1));
  const bool active = d64 < a.dim;
  const unsigned lanes = __ballot_sync(~0u, active);  // whole channels: R divides 32
  if (!active) return;
  const int d = int(d64);  // dim < 2^31 (mamba_selective_scan_cuda_check)
  const int g = a.G == 1 ? 0 : d / a.cpg;
  const int N = a.N;
  const int n0 = sg * NS;
  const int valid = kFull ? NS : max(0, min(NS, N - n0));
  const bool vec_state = kFull || (a.vec & kVecState);

  const float bias = a.delta_bias ? a.delta_bias[d] : 0.f;
  const float Dv = a.D ? a.D[d] : 0.f;
  Pack<float, NS> A;
  load_pack(A, a.A + int64_t(d) * N + n0, valid, vec_state);
  for (int b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t row = int64_t(b) * a.dim + d;
    // In the order of last use first: the scheduler tends to issue a load late when its
    // value is needed late, i.e. behind the softplus that waits for delta.
    const T z_raw = a.z ? static_cast<const T*>(a.z)[row] : T{};
    const int64_t bc = (int64_t(b) * a.G + g) * N + n0;
    Pack<float, NS> h;
    Pack<T, NS> Bv, Cv;
    load_pack(Cv, static_cast<const T*>(a.C) + bc, valid, kFull || (a.vec & kVecC));
    load_pack(h, a.h0 ? a.h0 + row * N + n0 : nullptr, a.h0 ? valid : 0, vec_state);
    load_pack(Bv, static_cast<const T*>(a.B) + bc, valid, kFull || (a.vec & kVecB));
    const T delta_raw = static_cast<const T*>(a.delta)[row];
    const T u_raw = static_cast<const T*>(a.u)[row];
    // Every load issued before any use: left alone, the compiler sinks z's load into the
    // gate's branch, behind the softplus that waits for delta, i.e. a second memory latency.
    asm volatile("" ::: "memory");
    const float delta = to_float(delta_raw), u = to_float(u_raw), zv = to_float(z_raw);

    const float dt = a.softplus ? softplus(delta + bias) : delta + bias;
    const float du = dt * u;
    float acc = 0.f;
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      const float hq = fmaf(ex2(dt * A.get(q) * kLog2e), h.get(q), du * Bv.get(q));
      h.set(q, hq);
      acc = fmaf(Cv.get(q), hq, acc);
    }
    store_pack(h, a.hT + row * N + n0, valid, vec_state);
    for (int m = 1; m < R; m <<= 1) acc += __shfl_xor_sync(lanes, acc, m);
    if (sg == 0) {
      const float y = fmaf(Dv, u, acc);
      static_cast<T*>(a.y)[row] = from_float<T>(a.z ? y * silu(zv) : y);
    }
  }
}

}  // namespace mamba_cuda

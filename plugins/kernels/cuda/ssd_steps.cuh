// The SSD prefill's per-step values, one block of kSsdStepBytes per (batch, head, chunk of
// 64 steps), computed by a pre-pass (ssd_chunk_steps) so that the prefill kernel's warps
// only read them. Done inside the chunk loop by one warp, this work lengthened the chunk of
// the scheduler that also runs the heaviest row tile (docs/performance.md).
//
// Block layout (bytes), staged into shared memory as it is:
//   [0, 512)     cum[t]:   inclusive cumulative sum of dt_s A over the chunk, float64
//   [512, 768)   dt[t]:    clamp(softplus(dt + bias)) (0 past the sequence end)
//   [768, 1024)  w_end[t]: dt_t exp(cum_end - cum_t), the state update's weight
//   [1024, 1280) e_start[t]: exp(cum_t), the decay of the entering state
//   [1280, 1284) exp(cum_end), the chunk's decay; [1288, 1296) cum_end, float64
#pragma once

#include "ssd_args.h"
#include "ssd_mma.cuh"

namespace mamba_cuda {

constexpr int kSsdQ = 64;  // steps per chunk
constexpr int kSsdStepBytes = kSsdQ * 8 + 3 * kSsdQ * 4 + 16;
static_assert(kSsdStepBytes % 16 == 0, "16-byte copies");

// Chunks of a sequence of L steps (the last one may be partial): blocks of steps per (batch, head).
__host__ __device__ constexpr int64_t ssd_chunks(int64_t L) { return (L + kSsdQ - 1) / kSsdQ; }

// A view of one block (in global or shared memory).
struct SsdSteps {
  unsigned char* p;
  __device__ double* cum() const { return reinterpret_cast<double*>(p); }
  __device__ float* dt() const { return reinterpret_cast<float*>(p + kSsdQ * 8); }
  __device__ float* w_end() const { return dt() + kSsdQ; }
  __device__ float* e_start() const { return dt() + 2 * kSsdQ; }
  __device__ float* chunk_decay() const { return dt() + 3 * kSsdQ; }
  __device__ double* log_decay() const { return reinterpret_cast<double*>(p + kSsdStepBytes - 8); }
};

// dt of docs/ops.md: (dt + bias), softplus, clamp.
__device__ __forceinline__ float ssd_time_step(float raw, float bias, int use_softplus, float lo, float hi) {
  float v = raw + bias;
  if (use_softplus) v = softplus(v);
  return fminf(fmaxf(v, lo), hi);
}

// One warp per (batch, head, chunk) of the whole sequence, 4 per block; lane l holds steps l
// and l + 32. The cumulative sums are float64, so that a decay exp(cum_t - cum_s) is one
// rounding of an exact difference.
template <typename T>
__global__ void __launch_bounds__(128) ssd_chunk_steps(const SsdArgs a) {
  const int chunks = int(ssd_chunks(a.L));
  const int64_t item = int64_t(blockIdx.x) * 4 + (threadIdx.x >> 5);
  if (item >= int64_t(a.batch) * a.H * chunks) return;
  const int lane = threadIdx.x & 31;
  const int64_t bh = item / chunks;
  const int h = int(bh % a.H), b = int(bh / a.H);
  const int64_t t0 = (item % chunks) * kSsdQ;
  const T* dtg = static_cast<const T*>(a.dt) + int64_t(b) * a.L * a.H + h;
  const float A_h = a.A[h], bias = a.dt_bias ? a.dt_bias[h] : 0.f;
  float dtv[2];
  double c[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t t = t0 + lane + 32 * i;
    dtv[i] = t < a.L ? ssd_time_step(to_float(dtg[t * a.H]), bias, a.softplus, a.dt_min, a.dt_max) : 0.f;
    c[i] = double(dtv[i] * A_h);
  }
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const double u = __shfl_up_sync(~0u, c[i], o);
      if (lane >= o) c[i] += u;
    }
  }
  c[1] += __shfl_sync(~0u, c[0], 31);
  const double end = __shfl_sync(~0u, c[1], 31);
  constexpr double kLog2eD = 1.4426950408889634;
  const SsdSteps out{a.steps + item * kSsdStepBytes};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = lane + 32 * i;
    out.cum()[t] = c[i];
    out.dt()[t] = dtv[i];
    out.w_end()[t] = dtv[i] * exp2_accurate(float((end - c[i]) * kLog2eD));
    out.e_start()[t] = exp2_accurate(float(c[i] * kLog2eD));
  }
  if (lane == 0) {
    out.chunk_decay()[0] = exp2_accurate(float(end * kLog2eD));
    out.chunk_decay()[1] = 0.f;  // padding, so that every byte staged is defined
    *out.log_decay() = end;
  }
}

}  // namespace mamba_cuda

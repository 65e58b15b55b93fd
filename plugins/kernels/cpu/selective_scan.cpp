// mamba.SelectiveScan on the CPU (docs/ops.md; C ABI in plugins/include/mamba_kernels.h).
//
// SIMD runs across channels: kLanes consecutive channels of one group advance together,
// lane w holding channel d0 + w. They share B and C (one scalar per n and step, broadcast
// to all lanes), so the hot loop has no horizontal sums and no strided loads. Each task
// is (batch row, group, run of lane vectors); it walks the sequence in blocks of steps,
// copying the block of B and C (float32, [steps, n]) once for all its vectors. The state
// lives in final_state; per block and vector a tile of it is transposed to [n, lane].
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dispatch.h"
#include "fast_math.h"
#include "float_types.h"
#include "mamba_kernels.h"
#include "../selective_scan_check.h"

namespace mamba_cpu {
namespace {

constexpr int64_t kLanes = 8;  // one AVX2 vector of floats, two SSE ones
// Bounds of the per-task buffers (all on the stack, ~60 KiB in total).
constexpr int64_t kMaxSteps = 64;         // time steps per block
constexpr int64_t kMaxStateTile = 256;    // n per state tile (larger N takes several tiles)
constexpr int64_t kBlockFloats = 4096;    // steps x n of one B (or C) block
constexpr int64_t kDecodeChannels = 64;   // channels per elementwise pass of the decode step
// State updates (channel x step x n) per task. ~0.1 ms of work: large against the cost of
// handing a task to a thread, small enough to balance the load across threads.
constexpr int64_t kUpdatesPerTask = int64_t{1} << 18;

struct Plan {
  const mamba_selective_scan_params* p;
  int64_t vectors_per_group;  // lane vectors covering one group's channels
  int64_t vectors_per_task;
  int64_t tasks_per_group;
  int64_t steps;  // per block
  int64_t tile;   // n per state tile and per B/C block
};

// One time step of kLanes channels over `count` states (the hot loop):
//   h[n][w] = exp(dt[w] a[n][w]) h[n][w] + du[w] b[n];   y[w] += sum_n c[n] h[n][w]
MAMBA_INLINE void advance(float* MAMBA_RESTRICT h, const float* MAMBA_RESTRICT a, const float* MAMBA_RESTRICT b,
                          const float* MAMBA_RESTRICT c, int64_t count, const float* MAMBA_RESTRICT dt,
                          const float* MAMBA_RESTRICT du, float* MAMBA_RESTRICT y) {
  float acc[kLanes] = {};
  for (int64_t n = 0; n < count; ++n) {
    const float bn = b[n], cn = c[n];
    for (int64_t w = 0; w < kLanes; ++w) {
      const float s = exp_f32(dt[w] * a[n * kLanes + w]) * h[n * kLanes + w] + du[w] * bn;
      h[n * kLanes + w] = s;
      acc[w] += cn * s;
    }
  }
  for (int64_t w = 0; w < kLanes; ++w) y[w] += acc[w];
}

// dst[t][n] = src[n0 + n][t0 + t] for a [count, steps] window of a row-major [N, L] matrix.
template <typename T>
MAMBA_INLINE void gather_block(const T* src, int64_t length, int64_t n0, int64_t count, int64_t t0, int64_t steps,
                               float* dst) {
  for (int64_t n = 0; n < count; ++n) {
    const T* row = src + (n0 + n) * length + t0;
    for (int64_t t = 0; t < steps; ++t) dst[t * count + n] = to_float(row[t]);
  }
}

// The channels of one task, shared by the blocked scan and the decode step.
struct Task {
  int64_t row, group, v_begin, v_end;
  int64_t d_begin, d_end;   // channels [d_begin, d_end)
  int64_t group_end;        // first channel of the next group
};

// The channels of task `index`; sets their state to initial_state or zeros.
Task start_task(const Plan& plan, size_t index) {
  const mamba_selective_scan_params& p = *plan.p;
  const int64_t per_row = p.groups * plan.tasks_per_group;
  const int64_t channels_per_group = p.dim / p.groups;
  Task t;
  t.row = static_cast<int64_t>(index) / per_row;
  t.group = static_cast<int64_t>(index) % per_row / plan.tasks_per_group;
  t.v_begin = static_cast<int64_t>(index) % plan.tasks_per_group * plan.vectors_per_task;
  t.v_end = std::min(t.v_begin + plan.vectors_per_task, plan.vectors_per_group);
  t.group_end = (t.group + 1) * channels_per_group;
  t.d_begin = t.group * channels_per_group + t.v_begin * kLanes;
  t.d_end = std::min(t.group * channels_per_group + t.v_end * kLanes, t.group_end);
  // The state starts as initial_state (final_state may be the same buffer) or zeros.
  const int64_t N = p.dstate;
  float* state = p.final_state + (t.row * p.dim + t.d_begin) * N;
  const int64_t size = (t.d_end - t.d_begin) * N;
  if (size > 0 && !p.initial_state) std::fill(state, state + size, 0.0f);
  const float* initial = p.initial_state ? p.initial_state + (t.row * p.dim + t.d_begin) * N : nullptr;
  if (size > 0 && initial && initial != state) std::memcpy(state, initial, sizeof(float) * size);
  return t;
}

// L = 1 (decoding token by token). u, delta, z and y are then contiguous over channels,
// so the elementwise work (softplus, silu, conversions) vectorises across channels, and the
// state update runs over n directly on the state rows, without the transposed tiles.
template <typename T>
MAMBA_INLINE void decode_task(const Plan& plan, size_t index) {
  const mamba_selective_scan_params& p = *plan.p;
  const Task task = start_task(plan, index);
  const int64_t N = p.dstate, first = task.row * p.dim;  // u[first + d] is channel d of the row
  const int64_t bc = (task.row * p.groups + task.group) * N;
  const T* u = static_cast<const T*>(p.u) + first;
  const T* delta = static_cast<const T*>(p.delta) + first;
  const T* z = p.z ? static_cast<const T*>(p.z) + first : nullptr;
  T* y = static_cast<T*>(p.y) + first;
  alignas(64) float b_tile[kBlockFloats];
  alignas(64) float c_tile[kBlockFloats];
  alignas(64) float dt[kDecodeChannels], uf[kDecodeChannels], out[kDecodeChannels];
  int64_t cached_n0 = -1;
  for (int64_t d0 = task.d_begin; d0 < task.d_end; d0 += kDecodeChannels) {
    const int64_t channels = std::min(kDecodeChannels, task.d_end - d0);
    for (int64_t j = 0; j < channels; ++j) {
      dt[j] = to_float(delta[d0 + j]) + (p.delta_bias ? p.delta_bias[d0 + j] : 0.0f);
      uf[j] = to_float(u[d0 + j]);
      out[j] = 0.0f;
    }
    if (p.delta_softplus) {
      for (int64_t j = 0; j < channels; ++j) dt[j] = softplus_f32(dt[j]);
    }
    for (int64_t n0 = 0; n0 < N; n0 += kBlockFloats) {
      const int64_t count = std::min(kBlockFloats, N - n0);
      const float* b = b_tile;
      const float* c = c_tile;
      if constexpr (std::is_same<T, float>::value) {
        b = static_cast<const float*>(p.B) + bc + n0;
        c = static_cast<const float*>(p.C) + bc + n0;
      } else if (n0 != cached_n0) {
        for (int64_t n = 0; n < count; ++n) b_tile[n] = to_float(static_cast<const T*>(p.B)[bc + n0 + n]);
        for (int64_t n = 0; n < count; ++n) c_tile[n] = to_float(static_cast<const T*>(p.C)[bc + n0 + n]);
        cached_n0 = n0;
      }
      for (int64_t j = 0; j < channels; ++j) {
        float* MAMBA_RESTRICT h = p.final_state + (first + d0 + j) * N + n0;
        const float* MAMBA_RESTRICT a = p.A + (d0 + j) * N + n0;
        const float step = dt[j], du = dt[j] * uf[j];
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t n = 0; n < count; ++n) {
          const float s = exp_f32(step * a[n]) * h[n] + du * b[n];
          h[n] = s;
          sum += c[n] * s;
        }
        out[j] += sum;
      }
    }
    for (int64_t j = 0; j < channels; ++j) out[j] += (p.D ? p.D[d0 + j] : 0.0f) * uf[j];
    if (z) {
      for (int64_t j = 0; j < channels; ++j) out[j] *= silu_f32(to_float(z[d0 + j]));
    }
    for (int64_t j = 0; j < channels; ++j) y[d0 + j] = from_float<T>(out[j]);
  }
}

template <typename T>
MAMBA_INLINE void scan_task(const Plan& plan, size_t index) {
  const mamba_selective_scan_params& p = *plan.p;
  const Task task = start_task(plan, index);
  const int64_t L = p.seqlen, N = p.dstate, dim = p.dim, g = task.group, row = task.row;
  const int64_t channels_per_group = dim / p.groups;
  const T* u = static_cast<const T*>(p.u) + row * dim * L;
  const T* delta = static_cast<const T*>(p.delta) + row * dim * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + row * dim * L : nullptr;
  const T* B = static_cast<const T*>(p.B) + (row * p.groups + g) * N * L;
  const T* C = static_cast<const T*>(p.C) + (row * p.groups + g) * N * L;
  T* y = static_cast<T*>(p.y) + row * dim * L;
  float* state = p.final_state + row * dim * N;

  alignas(64) float b_block[kBlockFloats];
  alignas(64) float c_block[kBlockFloats];
  alignas(64) float h_tile[kMaxStateTile * kLanes];
  alignas(64) float a_tile[kMaxStateTile * kLanes];
  alignas(64) float x[kLanes * kMaxSteps];  // per lane: delta + bias, then its softplus
  alignas(64) float uf[kLanes * kMaxSteps];
  alignas(64) float dt[kMaxSteps * kLanes], du[kMaxSteps * kLanes], ysum[kMaxSteps * kLanes];
  alignas(64) float out[kMaxSteps];

  for (int64_t t0 = 0; t0 < L; t0 += plan.steps) {
    const int64_t steps = std::min(plan.steps, L - t0);
    int64_t cached_n0 = -1;
    for (int64_t v = task.v_begin; v < task.v_end; ++v) {
      const int64_t d0 = g * channels_per_group + v * kLanes;
      const int64_t lanes = std::min(kLanes, task.group_end - d0);  // the group's last vector may be partial

      // Step sizes of the block: lane-major while computing, then [step][lane] for advance().
      // Unused lanes get dt = du = 0 (and A = 0, h = 0 below): they stay at 0, nothing NaN.
      std::fill(x, x + kLanes * steps, 0.0f);
      std::fill(uf, uf + kLanes * steps, 0.0f);
      for (int64_t w = 0; w < lanes; ++w) {
        const T* delta_d = delta + (d0 + w) * L + t0;
        const T* u_d = u + (d0 + w) * L + t0;
        const float bias = p.delta_bias ? p.delta_bias[d0 + w] : 0.0f;
        for (int64_t t = 0; t < steps; ++t) {
          x[w * steps + t] = to_float(delta_d[t]) + bias;
          uf[w * steps + t] = to_float(u_d[t]);
        }
      }
      if (p.delta_softplus) {
        for (int64_t i = 0; i < lanes * steps; ++i) x[i] = softplus_f32(x[i]);
      }
      for (int64_t t = 0; t < steps; ++t) {
        for (int64_t w = 0; w < kLanes; ++w) {
          dt[t * kLanes + w] = x[w * steps + t];
          du[t * kLanes + w] = x[w * steps + t] * uf[w * steps + t];
          ysum[t * kLanes + w] = 0.0f;
        }
      }

      for (int64_t n0 = 0; n0 < N; n0 += plan.tile) {
        const int64_t count = std::min(plan.tile, N - n0);
        if (n0 != cached_n0) {  // with one tile (N <= kMaxStateTile) once per block for all vectors
          gather_block(B, L, n0, count, t0, steps, b_block);
          gather_block(C, L, n0, count, t0, steps, c_block);
          cached_n0 = n0;
        }
        std::fill(h_tile, h_tile + count * kLanes, 0.0f);
        std::fill(a_tile, a_tile + count * kLanes, 0.0f);
        for (int64_t w = 0; w < lanes; ++w) {
          for (int64_t n = 0; n < count; ++n) {
            h_tile[n * kLanes + w] = state[(d0 + w) * N + n0 + n];
            a_tile[n * kLanes + w] = p.A[(d0 + w) * N + n0 + n];
          }
        }
        for (int64_t t = 0; t < steps; ++t) {
          advance(h_tile, a_tile, b_block + t * count, c_block + t * count, count, dt + t * kLanes, du + t * kLanes,
                  ysum + t * kLanes);
        }
        for (int64_t w = 0; w < lanes; ++w) {
          for (int64_t n = 0; n < count; ++n) state[(d0 + w) * N + n0 + n] = h_tile[n * kLanes + w];
        }
      }

      // y = (sum + D u) * silu(z), per lane over the block's steps (separate loops vectorise).
      for (int64_t w = 0; w < lanes; ++w) {
        const float skip = p.D ? p.D[d0 + w] : 0.0f;
        for (int64_t t = 0; t < steps; ++t) out[t] = ysum[t * kLanes + w] + skip * uf[w * steps + t];
        if (z) {
          const T* z_d = z + (d0 + w) * L + t0;
          for (int64_t t = 0; t < steps; ++t) out[t] *= silu_f32(to_float(z_d[t]));
        }
        T* y_d = y + (d0 + w) * L + t0;
        for (int64_t t = 0; t < steps; ++t) y_d[t] = from_float<T>(out[t]);
      }
    }
  }
}

// The task body for dispatch.h.
struct SelectiveScan {
  static constexpr bool kAvx512 = false;  // its vectors are 8 channels wide

  template <typename T>
  static MAMBA_INLINE void run(const void* plan, size_t task) {
    const Plan& p = *static_cast<const Plan*>(plan);
    if (p.p->seqlen == 1) {
      decode_task<T>(p, task);
    } else {
      scan_task<T>(p, task);
    }
  }
};

}  // namespace
}  // namespace mamba_cpu

extern "C" const char* mamba_selective_scan_check(const mamba_selective_scan_params* p) {
  return mamba_selective_scan_contract_error(p);  // the CPU kernels have no limits of their own
}

extern "C" void mamba_selective_scan_cpu(const mamba_selective_scan_params* p, mamba_parallel_for_fn parallel_for,
                                         void* parallel_ctx) {
  using namespace mamba_cpu;
  if (mamba_selective_scan_check(p) || p->batch == 0 || p->dim == 0) return;

  Plan plan{};
  plan.p = p;
  plan.tile = std::min<int64_t>(std::max<int64_t>(p->dstate, 1), kMaxStateTile);
  plan.steps = std::min(kMaxSteps, kBlockFloats / plan.tile);
  plan.vectors_per_group = (p->dim / p->groups + kLanes - 1) / kLanes;
  const int64_t per_vector = kLanes * std::max<int64_t>(p->seqlen, 1) * std::max<int64_t>(p->dstate, 1);
  plan.vectors_per_task = std::min(plan.vectors_per_group, std::max<int64_t>(1, kUpdatesPerTask / per_vector));
  plan.tasks_per_group = (plan.vectors_per_group + plan.vectors_per_task - 1) / plan.vectors_per_task;
  const size_t tasks = static_cast<size_t>(p->batch * p->groups * plan.tasks_per_group);
  run_tasks<SelectiveScan>(p->dtype, &plan, tasks, parallel_for, parallel_ctx);
}

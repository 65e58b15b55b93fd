// mamba.SSDScan (Mamba-2) on the CPU (docs/ops.md; C ABI in plugins/include/mamba_kernels.h).
//
// The recurrence runs step by step. (The chunked SSD form replaces it by matrix products,
// which pays on tensor cores; on a CPU it costs more multiply-adds per state element than the
// three of a step, for the same SIMD throughput.)
//
// Each row p of a head's [P, N] state evolves on its own: the rows share the step's decay,
// B and C, and differ in x[p]. A task is (batch row, head, block of rows), so the work also
// splits across threads when batch * heads is small. SIMD runs along n, where the state rows,
// B and C are contiguous; four rows advance together so that one load of B and C serves four
// of them. The state lives in final_state.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dispatch.h"
#include "fast_math.h"
#include "float_types.h"
#include "mamba_kernels.h"
#include "../ssd_scan_check.h"

namespace mamba_cpu {
namespace {

constexpr int64_t kSteps = 64;     // time steps whose step sizes and decays are computed together
constexpr int64_t kMaxRows = 64;   // state rows per task
constexpr int64_t kMinRows = 16;   // B and C are widened once per task and step: share that over rows
constexpr int64_t kTile = 1024;    // n per widened B / C tile (float16, bfloat16); larger N takes several
// State updates (row x step x n) per task, as for SelectiveScan: ~0.1 ms of work.
constexpr int64_t kUpdatesPerTask = int64_t{1} << 18;

struct Plan {
  const mamba_ssd_scan_params* p;
  int64_t rows;            // state rows per task (the last block of a head may be shorter)
  int64_t tasks_per_head;
};

// One step of `rows` state rows (`stride` apart) over `count` states:
//   s[r][n] = decay s[r][n] + u[r] b[n];   out[r] += sum_n c[n] s[r][n]
MAMBA_INLINE void advance(float* MAMBA_RESTRICT s, int64_t stride, int64_t rows, int64_t count, float decay,
                          const float* MAMBA_RESTRICT u, const float* MAMBA_RESTRICT b,
                          const float* MAMBA_RESTRICT c, float* MAMBA_RESTRICT out) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    float* s0 = s + r * stride;
    float* s1 = s0 + stride;
    float* s2 = s1 + stride;
    float* s3 = s2 + stride;
    const float u0 = u[r], u1 = u[r + 1], u2 = u[r + 2], u3 = u[r + 3];
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t n = 0; n < count; ++n) {
      const float bn = b[n], cn = c[n];
      const float v0 = decay * s0[n] + u0 * bn, v1 = decay * s1[n] + u1 * bn;
      const float v2 = decay * s2[n] + u2 * bn, v3 = decay * s3[n] + u3 * bn;
      s0[n] = v0;
      s1[n] = v1;
      s2[n] = v2;
      s3[n] = v3;
      a0 += cn * v0;
      a1 += cn * v1;
      a2 += cn * v2;
      a3 += cn * v3;
    }
    out[r] += a0;
    out[r + 1] += a1;
    out[r + 2] += a2;
    out[r + 3] += a3;
  }
  for (; r < rows; ++r) {
    float* s0 = s + r * stride;
    const float u0 = u[r];
    float a0 = 0.0f;
#pragma omp simd reduction(+ : a0)
    for (int64_t n = 0; n < count; ++n) {
      const float v0 = decay * s0[n] + u0 * b[n];
      s0[n] = v0;
      a0 += c[n] * v0;
    }
    out[r] += a0;
  }
}

template <typename T>
MAMBA_INLINE void prefetch_row(const T* row, int64_t count) {
  __builtin_prefetch(row);
  __builtin_prefetch(row + count - 1);
}

template <typename T>
MAMBA_INLINE void scan_task(const Plan& plan, size_t index) {
  const mamba_ssd_scan_params& p = *plan.p;
  const int64_t H = p.nheads, P = p.headdim, N = p.dstate, L = p.seqlen, G = p.groups;
  const int64_t head = static_cast<int64_t>(index) / plan.tasks_per_head;  // b * H + h
  const int64_t b = head / H, h = head % H, g = h / (H / G);
  const int64_t r0 = static_cast<int64_t>(index) % plan.tasks_per_head * plan.rows;
  const int64_t rows = std::min(plan.rows, P - r0);

  // The state starts as initial_state (final_state may be the same buffer) or zeros.
  float* state = p.final_state + (head * P + r0) * N;
  if (rows * N > 0) {
    const float* initial = p.initial_state ? p.initial_state + (head * P + r0) * N : nullptr;
    if (!initial) {
      std::fill(state, state + rows * N, 0.0f);
    } else if (initial != state) {
      std::memcpy(state, initial, sizeof(float) * rows * N);
    }
  }

  const T* x = static_cast<const T*>(p.x);
  const T* dt = static_cast<const T*>(p.dt);
  const T* B = static_cast<const T*>(p.B);
  const T* C = static_cast<const T*>(p.C);
  const T* z = static_cast<const T*>(p.z);
  T* y = static_cast<T*>(p.y);
  const float A = p.A[h], bias = p.dt_bias ? p.dt_bias[h] : 0.0f, skip = p.D ? p.D[h] : 0.0f;

  // Per block of steps: x, then the sums of y, as [step][row]. x is read for the whole block
  // first: its rows are H * P apart, and loaded together their cache misses overlap.
  alignas(64) float step[kSteps], decay[kSteps], u[kMaxRows];
  alignas(64) float xs[kSteps * kMaxRows], ys[kSteps * kMaxRows];
  alignas(64) float b_tile[kTile], c_tile[kTile];
  for (int64_t t0 = 0; t0 < L; t0 += kSteps) {
    const int64_t steps = std::min(kSteps, L - t0);
    for (int64_t t = 0; t < steps; ++t) step[t] = to_float(dt[(b * L + t0 + t) * H + h]) + bias;
    if (p.dt_softplus) {
      for (int64_t t = 0; t < steps; ++t) step[t] = softplus_f32(step[t]);
    }
    for (int64_t t = 0; t < steps; ++t) {  // min(max(dt, dt_min), dt_max), keeping NaN
      const float clamped = select(step[t] > p.dt_max, p.dt_max, select(step[t] < p.dt_min, p.dt_min, step[t]));
      step[t] = clamped;
      decay[t] = exp_f32(clamped * A);
    }
    for (int64_t t = 0; t < steps; ++t) {
      const T* x_t = x + ((b * L + t0 + t) * H + h) * P + r0;
      for (int64_t r = 0; r < rows; ++r) xs[t * rows + r] = to_float(x_t[r]);
    }
    std::fill(ys, ys + steps * rows, 0.0f);

    for (int64_t t = 0; t < steps; ++t) {
      if (t0 + kSteps + t < L) {  // the next block's rows of x, z, y and dt: they are far apart
        const int64_t next = (b * L + t0 + kSteps + t) * H + h;
        prefetch_row(x + next * P + r0, rows);
        if (z) prefetch_row(z + next * P + r0, rows);
        prefetch_row(y + next * P + r0, rows);
        prefetch_row(dt + next, 1);
      }
      for (int64_t r = 0; r < rows; ++r) u[r] = step[t] * xs[t * rows + r];
      const int64_t bc = ((b * L + t0 + t) * G + g) * N;
      for (int64_t n0 = 0; n0 < N; n0 += kTile) {
        const int64_t count = std::min(kTile, N - n0);
        const float* b_t = b_tile;
        const float* c_t = c_tile;
        if constexpr (std::is_same<T, float>::value) {
          b_t = B + bc + n0;
          c_t = C + bc + n0;
        } else {
          for (int64_t n = 0; n < count; ++n) b_tile[n] = to_float(B[bc + n0 + n]);
          for (int64_t n = 0; n < count; ++n) c_tile[n] = to_float(C[bc + n0 + n]);
        }
        advance(state + n0, N, rows, count, decay[t], u, b_t, c_t, ys + t * rows);
      }
    }

    // y = (sum + D x) * silu(z) for the block's steps.
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t at = ((b * L + t0 + t) * H + h) * P + r0;  // (b, t, h, r0)
      float* out = ys + t * rows;
      for (int64_t r = 0; r < rows; ++r) out[r] += skip * xs[t * rows + r];
      if (z) {
        for (int64_t r = 0; r < rows; ++r) out[r] *= silu_f32(to_float(z[at + r]));
      }
      for (int64_t r = 0; r < rows; ++r) y[at + r] = from_float<T>(out[r]);
    }
  }
}

// The task body for dispatch.h.
struct SSDScan {
  template <typename T>
  static MAMBA_INLINE void run(const void* plan, size_t task) {
    scan_task<T>(*static_cast<const Plan*>(plan), task);
  }
};

}  // namespace
}  // namespace mamba_cpu

extern "C" const char* mamba_ssd_scan_check(const mamba_ssd_scan_params* p) {
  return mamba_ssd_scan_contract_error(p);  // the CPU kernel has no limits of its own
}

extern "C" void mamba_ssd_scan_cpu(const mamba_ssd_scan_params* p, mamba_parallel_for_fn parallel_for,
                                   void* parallel_ctx) {
  using namespace mamba_cpu;
  // Nothing to write when there is no state row (y and final_state are then empty).
  if (mamba_ssd_scan_check(p) || p->batch == 0 || p->nheads == 0 || p->headdim == 0) return;

  // Rows per task: a multiple of 4 (advance()'s blocks), blocks of one head of equal size.
  const int64_t per_row = std::max<int64_t>(p->seqlen, 1) * std::max<int64_t>(p->dstate, 1);
  const int64_t wanted = std::clamp(kUpdatesPerTask / per_row, kMinRows, kMaxRows);
  const int64_t blocks = (p->headdim + wanted - 1) / wanted;
  Plan plan{};
  plan.p = p;
  plan.rows = ((p->headdim + blocks - 1) / blocks + 3) / 4 * 4;
  plan.tasks_per_head = (p->headdim + plan.rows - 1) / plan.rows;
  const size_t tasks = static_cast<size_t>(p->batch * p->nheads * plan.tasks_per_head);
  run_tasks<SSDScan>(p->dtype, &plan, tasks, parallel_for, parallel_ctx);
}

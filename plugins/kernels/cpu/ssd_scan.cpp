// mamba.SSDScan (Mamba-2) on the CPU (docs/ops.md; C ABI in plugins/include/mamba_kernels.h).
//
// The recurrence runs step by step. (The chunked SSD form replaces it by matrix products,
// which pays on tensor cores; on a CPU it costs more multiply-adds per state element than the
// three of a step, for the same SIMD throughput.)
//
// Each row p of a head's [P, N] state evolves on its own: the rows share the step's decay,
// B and C, and differ in x[p]. A task is (batch row, head, block of up to 64 rows). SIMD runs
// across rows, a chunk of W of them (two vectors) at a time: B[n] and C[n] are then
// broadcasts, y accumulates per row without horizontal sums, and each pass over the state
// advances two steps, so the state is loaded and stored once per two updates. For that the
// task keeps its state transposed to [n][row] in a local tile (rows padded to a multiple of W
// with zero rows, which stay zero), from its start to its end when the tile holds all of it
// (tasks have fewer rows for that), else per block of steps and range of n; the state's home
// is final_state. L = 1 (decoding) updates final_state in place instead.
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

constexpr int64_t kSteps = 32;            // time steps per block
constexpr int64_t kMaxRows = 64;          // state rows per task
constexpr int64_t kTileFloats = 8192;     // the transposed state tile, [n][rows] (32 KiB)
constexpr int64_t kMaxTileN = kTileFloats / 8;  // n per tile (rows are padded to >= 8)

struct Plan {
  const mamba_ssd_scan_params* p;
  int64_t chunk;           // W: rows advanced together, 8, 16 or 32 (what the vector registers hold)
  int64_t rows;            // state rows per task, a multiple of chunk (the last block of a head may be shorter)
  int64_t tasks_per_head;
};

// Two steps (K = 2) or one of W state rows over `count` states. The tile holds row w of state
// n at s[n * width + w]; u and y hold row w of step k at [k * width + w]. For k = 0 .. K-1:
//   s = decay[k] s + u[k][w] b[k][n];   y[k][w] += sum_n c[k][n] s
template <int K, int64_t W>
MAMBA_INLINE void advance(float* MAMBA_RESTRICT s, int64_t width, int64_t count, const float* decay,
                          const float* MAMBA_RESTRICT u, const float* const* b, const float* const* c,
                          float* MAMBA_RESTRICT y) {
  float acc[K][W] = {}, in[K][W], d[K];
  for (int k = 0; k < K; ++k) {
    d[k] = decay[k];
    for (int64_t w = 0; w < W; ++w) in[k][w] = u[k * width + w];
  }
  for (int64_t n = 0; n < count; ++n) {
    float* MAMBA_RESTRICT sn = s + n * width;
    float bn[K], cn[K];
    for (int k = 0; k < K; ++k) {
      bn[k] = b[k][n];
      cn[k] = c[k][n];
    }
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) {
      float v = sn[w];
      for (int k = 0; k < K; ++k) {
        v = d[k] * v + in[k][w] * bn[k];
        acc[k][w] += cn[k] * v;
      }
      sn[w] = v;
    }
  }
  for (int k = 0; k < K; ++k) {
    for (int64_t w = 0; w < W; ++w) y[k * width + w] += acc[k][w];
  }
}

// S[r][n] = decay S[r][n] + u[r] b[n];  out[r] += sum_n c[n] S[r][n]  for `rows` rows of the
// state in place (`stride` apart), SIMD along n, four rows per load of b and c: the decode
// step, where transposing the state for one step would cost more than the step.
MAMBA_INLINE void advance_rows(float* MAMBA_RESTRICT s, int64_t stride, int64_t rows, int64_t count, float decay,
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

// Every cache line of row[0 .. count).
template <typename T>
MAMBA_INLINE void prefetch_row(const T* row, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t i = 0; i < count * static_cast<int64_t>(sizeof(T)); i += 64) __builtin_prefetch(bytes + i);
  __builtin_prefetch(row + count - 1);
}

// The rows of one task: their state in final_state and where it starts.
struct Task {
  int64_t b, h, g, r0, rows;
  float* state;          // [rows, N] in final_state
  const float* initial;  // the same rows of initial_state (may be the same buffer), or nullptr: zeros
};

MAMBA_INLINE Task task_of(const Plan& plan, size_t index) {
  const mamba_ssd_scan_params& p = *plan.p;
  const int64_t head = static_cast<int64_t>(index) / plan.tasks_per_head;  // b * H + h
  Task task;
  task.b = head / p.nheads;
  task.h = head % p.nheads;
  task.g = task.h / (p.nheads / p.groups);
  task.r0 = static_cast<int64_t>(index) % plan.tasks_per_head * plan.rows;
  task.rows = std::min(plan.rows, p.headdim - task.r0);
  const int64_t first = (head * p.headdim + task.r0) * p.dstate;
  task.state = p.final_state + first;
  task.initial = p.initial_state ? p.initial_state + first : nullptr;
  return task;
}

// Sets the task's state to where it starts.
MAMBA_INLINE void start_state(const Task& task, int64_t N) {
  const int64_t size = task.rows * N;
  if (size > 0 && !task.initial) std::fill(task.state, task.state + size, 0.0f);
  if (size > 0 && task.initial && task.initial != task.state) {
    std::memcpy(task.state, task.initial, sizeof(float) * size);
  }
}

// Step sizes and decays of steps [t0, t0 + steps) of a task's head.
template <typename T>
MAMBA_INLINE void time_steps(const mamba_ssd_scan_params& p, const Task& task, int64_t t0, int64_t steps,
                             float* step, float* decay) {
  const T* dt = static_cast<const T*>(p.dt) + (task.b * p.seqlen + t0) * p.nheads + task.h;
  const float bias = p.dt_bias ? p.dt_bias[task.h] : 0.0f, A = p.A[task.h];
  for (int64_t t = 0; t < steps; ++t) step[t] = to_float(dt[t * p.nheads]) + bias;
  if (p.dt_softplus) {
    for (int64_t t = 0; t < steps; ++t) step[t] = softplus_f32(step[t]);
  }
  for (int64_t t = 0; t < steps; ++t) {  // min(max(dt, dt_min), dt_max), keeping NaN
    const float clamped = select(step[t] > p.dt_max, p.dt_max, select(step[t] < p.dt_min, p.dt_min, step[t]));
    step[t] = clamped;
    decay[t] = exp_f32(clamped * A);
  }
}

// B and C of step t, states [n0, n0 + count): the inputs themselves for float32, else widened into `into`.
template <typename T>
MAMBA_INLINE const float* bc_row(const T* bc, const mamba_ssd_scan_params& p, const Task& task, int64_t t,
                                 int64_t n0, int64_t count, float* into) {
  const T* row = bc + ((task.b * p.seqlen + t) * p.groups + task.g) * p.dstate + n0;
  if constexpr (std::is_same<T, float>::value) {
    return row;
  } else {
    for (int64_t n = 0; n < count; ++n) into[n] = to_float(row[n]);
    return into;
  }
}

// y of step t from the sums over n of the task's rows: (sum + D x) * silu(z), rounded to T.
template <typename T>
MAMBA_INLINE void store_y(const mamba_ssd_scan_params& p, const Task& task, int64_t t, float* sum) {
  const int64_t at = ((task.b * p.seqlen + t) * p.nheads + task.h) * p.headdim + task.r0;  // (b, t, h, r0)
  const T* x = static_cast<const T*>(p.x) + at;
  const float skip = p.D ? p.D[task.h] : 0.0f;
  for (int64_t r = 0; r < task.rows; ++r) sum[r] += skip * to_float(x[r]);
  if (p.z) {
    const T* z = static_cast<const T*>(p.z) + at;
    for (int64_t r = 0; r < task.rows; ++r) sum[r] *= silu_f32(to_float(z[r]));
  }
  T* y = static_cast<T*>(p.y) + at;
  for (int64_t r = 0; r < task.rows; ++r) y[r] = from_float<T>(sum[r]);
}

// L = 1: one step on the state in place.
template <typename T>
MAMBA_INLINE void decode_task(const Plan& plan, size_t index) {
  const mamba_ssd_scan_params& p = *plan.p;
  const Task task = task_of(plan, index);
  start_state(task, p.dstate);
  alignas(64) float step[1], decay[1], u[kMaxRows], sum[kMaxRows];
  alignas(64) float b_tile[kMaxTileN], c_tile[kMaxTileN];
  time_steps<T>(p, task, 0, 1, step, decay);
  const T* x = static_cast<const T*>(p.x) + ((task.b * p.nheads + task.h) * p.headdim + task.r0);
  for (int64_t r = 0; r < task.rows; ++r) {
    u[r] = step[0] * to_float(x[r]);
    sum[r] = 0.0f;
  }
  for (int64_t n0 = 0; n0 < p.dstate; n0 += kMaxTileN) {
    const int64_t count = std::min(kMaxTileN, p.dstate - n0);
    const float* b = bc_row(static_cast<const T*>(p.B), p, task, 0, n0, count, b_tile);
    const float* c = bc_row(static_cast<const T*>(p.C), p, task, 0, n0, count, c_tile);
    advance_rows(task.state + n0, p.dstate, task.rows, count, decay[0], u, b, c, sum);
  }
  store_y<T>(p, task, 0, sum);
}

// tile[n][r] = state[r][n] for `rows` rows (`stride` apart) and `count` states, and zero rows
// up to `width`; store_tile is the way back.
MAMBA_INLINE void load_tile(const float* state, int64_t stride, int64_t rows, int64_t count, int64_t width,
                            float* tile) {
  for (int64_t n = 0; n < count; ++n) {
    for (int64_t r = 0; r < rows; ++r) tile[n * width + r] = state[r * stride + n];
    std::fill(tile + n * width + rows, tile + (n + 1) * width, 0.0f);
  }
}

MAMBA_INLINE void store_tile(const float* tile, int64_t rows, int64_t count, int64_t width, float* state,
                             int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t n = 0; n < count; ++n) state[r * stride + n] = tile[n * width + r];
  }
}

template <typename T, int64_t W>
MAMBA_INLINE void scan_task(const Plan& plan, size_t index) {
  const mamba_ssd_scan_params& p = *plan.p;
  const Task task = task_of(plan, index);
  start_state(task, p.dstate);
  const int64_t H = p.nheads, P = p.headdim, N = p.dstate, L = p.seqlen, rows = task.rows;
  const int64_t width = (rows + W - 1) / W * W;  // rows of the tile and of u / ys
  const int64_t tile = std::min(std::max<int64_t>(N, 1), kTileFloats / width);
  const bool resident = tile >= N;  // then the tile holds the task's whole state from start to end
  const T* x = static_cast<const T*>(p.x);

  alignas(64) float step[kSteps], decay[kSteps];
  alignas(64) float u[kSteps * kMaxRows], ys[kSteps * kMaxRows];  // [step][row]: dt x, then sum_n C S
  alignas(64) float st[kTileFloats];
  alignas(64) float widened[4][kMaxTileN];  // B, C of two steps (float16, bfloat16)
  for (int64_t t0 = 0; t0 < L; t0 += kSteps) {
    const int64_t steps = std::min(kSteps, L - t0);
    time_steps<T>(p, task, t0, steps, step, decay);
    // x of the whole block first: its rows are H * P apart, and loaded together their cache
    // misses overlap; the next block's rows (x, z, y, dt) are prefetched meanwhile.
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t at = (task.b * L + t0 + t) * H + task.h;  // (b, t, h)
      for (int64_t r = 0; r < rows; ++r) u[t * width + r] = step[t] * to_float(x[at * P + task.r0 + r]);
      std::fill(u + t * width + rows, u + (t + 1) * width, 0.0f);
      if (t0 + kSteps + t < L) {
        const int64_t next = at + kSteps * H;
        prefetch_row(x + next * P + task.r0, rows);
        if (p.z) prefetch_row(static_cast<const T*>(p.z) + next * P + task.r0, rows);
        prefetch_row(static_cast<T*>(p.y) + next * P + task.r0, rows);
        prefetch_row(static_cast<const T*>(p.dt) + next, 1);
      }
    }
    std::fill(ys, ys + steps * width, 0.0f);

    for (int64_t n0 = 0; n0 < N; n0 += tile) {
      const int64_t count = std::min(tile, N - n0);
      if (!resident || t0 == 0) load_tile(task.state + n0, N, rows, count, width, st);
      for (int64_t t = 0; t < steps; t += 2) {
        const int pair = t + 1 < steps ? 2 : 1;
        const float* b[2];
        const float* c[2];
        for (int k = 0; k < pair; ++k) {
          b[k] = bc_row(static_cast<const T*>(p.B), p, task, t0 + t + k, n0, count, widened[2 * k]);
          c[k] = bc_row(static_cast<const T*>(p.C), p, task, t0 + t + k, n0, count, widened[2 * k + 1]);
        }
        for (int64_t w0 = 0; w0 < width; w0 += W) {
          if (pair == 2) {
            advance<2, W>(st + w0, width, count, decay + t, u + t * width + w0, b, c, ys + t * width + w0);
          } else {
            advance<1, W>(st + w0, width, count, decay + t, u + t * width + w0, b, c, ys + t * width + w0);
          }
        }
      }
      if (!resident || t0 + kSteps >= L) store_tile(st, rows, count, width, task.state + n0, N);
    }
    for (int64_t t = 0; t < steps; ++t) store_y<T>(p, task, t0 + t, ys + t * width);
  }
}

// The task body for dispatch.h; the chunk width follows the variant that runs (see plan_chunk).
struct SSDScan {
  static constexpr bool kAvx512 = true;

  template <typename T>
  static MAMBA_INLINE void run(const void* plan, size_t task) {
    const Plan& p = *static_cast<const Plan*>(plan);
    if (p.p->seqlen == 1) return decode_task<T>(p, task);
    switch (p.chunk) {
      case 8: scan_task<T, 8>(p, task); break;
      case 16: scan_task<T, 16>(p, task); break;
      default: scan_task<T, 32>(p, task); break;
    }
  }
};

// Rows advanced together: what the variant's registers hold (accumulators and inputs of two
// steps), but no wider than the head needs.
int64_t plan_chunk(int64_t head_dim) {
  const Isa isa = kernel_isa<SSDScan>();
  const int64_t widest = isa == Isa::kAvx512 ? 32 : isa == Isa::kAvx2 ? 16 : 8;
  int64_t chunk = 8;
  while (chunk < widest && chunk < head_dim) chunk *= 2;
  return chunk;
}

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

  Plan plan{};
  plan.p = p;
  plan.chunk = plan_chunk(p->headdim);
  // Rows per task: the head's (rounded up to chunks), at most 64, and fewer if that lets the
  // transposed tile hold the task's whole state (it then stays there for the whole sequence).
  const int64_t fit = kTileFloats / std::max<int64_t>(p->dstate, 1) / plan.chunk * plan.chunk;
  plan.rows = std::min({(p->headdim + plan.chunk - 1) / plan.chunk * plan.chunk, kMaxRows,
                        std::max(fit, plan.chunk)});
  plan.tasks_per_head = (p->headdim + plan.rows - 1) / plan.rows;
  const size_t tasks = static_cast<size_t>(p->batch * p->nheads * plan.tasks_per_head);
  run_tasks<SSDScan>(p->dtype, &plan, tasks, parallel_for, parallel_ctx);
}

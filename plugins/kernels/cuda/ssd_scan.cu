// The C ABI of the CUDA SSD scan (plugins/include/mamba_kernels.h): checks, the plan
// (decode, or the prefill's tiling and segmentation) and the dispatch on the activation
// type (instantiated in ssd_*.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>

#include "../ssd_scan_check.h"
#include "device_props.h"
#include "mamba_kernels.h"
#include "ssd_args.h"
#include "ssd_plan.h"
#include "ssd_steps.cuh"

namespace mamba_cuda {

template <typename T>
SsdOccupancy ssd_occupancy(int nt);
template <typename T>
cudaError_t launch_ssd(const mamba_ssd_scan_params& p, const SsdPlan& plan, void* workspace, int multiprocessors,
                       cudaStream_t stream);

namespace {

constexpr int64_t kMaxSegments = 64;
constexpr double kBoundaryCost = 0.005;  // chunks of work per chain and segment boundary (plan_ssd)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Chunks per segment from MAMBA_KERNELS_SSD_SEGMENT, or 0.
int64_t forced_segment() {
  const char* env = std::getenv("MAMBA_KERNELS_SSD_SEGMENT");
  const long long v = env ? std::atoll(env) : 0;
  return v > 0 ? v : 0;
}

}  // namespace

SsdPlan plan_ssd(const mamba_ssd_scan_params& p, int multiprocessors, SsdOccupancy occupancy) {
  SsdPlan plan{SsdPlan::kNothing, 64, 1, 1, 1};
  if (p.batch == 0 || p.nheads == 0 || p.headdim == 0) return plan;
  if (p.seqlen == 0) {
    if (p.dstate > 0) plan.kind = SsdPlan::kCopyState;
    return plan;
  }
  if (p.seqlen == 1) {
    plan.kind = SsdPlan::kDecode;
    return plan;
  }
  plan.kind = SsdPlan::kPrefill;
  plan.nt = p.dstate <= 64 ? 64 : p.dstate <= 128 ? 128 : 256;
  plan.ptiles = int(ceil_div(p.headdim, 64));
  const int64_t chunks = ssd_chunks(p.seqlen);
  const int64_t chains = p.batch * p.nheads * plan.ptiles;
  int64_t seg_chunks = forced_segment();
  if (!seg_chunks) {
    // Every block walks its whole segment, so a grid is worth its number of waves times the
    // segment length. Segments add:
    // - the states-only pass, a quarter of a chunk's work per chunk (2.3 against 8.8 us per
    //   chunk and wave in the profile of 2.7b / b1 / 2048);
    // - the chain: up to kSsdBlockChainMax segments the last segment's blocks read each earlier
    //   segment's state before their first chunk, counted as a quarter of a chunk per state
    //   (eleven segments chained so cost 20 us more on the H100, ~2 us a state on average);
    //   beyond, the chaining kernel, counted as two chunks;
    // - per chain and segment boundary, the traffic of its [64, N] float32 state (128 KB at
    //   N = 128, ~0.05 us at the copy bandwidth against ~10 us for a wave of chunks on the
    //   H100, so 0.005 of a chunk).
    // Segments are only tried while the chains leave slots of one wave empty: with a wave or
    // more of chains, the shorter last wave that the model counts did not show on the H100
    // (2.7b / b8 / 8192: 3073 us in 64-chunk segments, 2922 in one).
    const int64_t slots = int64_t(multiprocessors) * occupancy.full;
    const int64_t slots_states = int64_t(multiprocessors) * occupancy.states;
    double best = 0;
    for (int64_t n = 1; n <= kMaxSegments && n <= chunks && (n == 1 || chains < slots); ++n) {
      const int64_t len = ceil_div(chunks, n), segs = ceil_div(chunks, len);
      if (segs != n) continue;
      double cost = double(ceil_div(chains * segs, slots) * len);
      if (segs > 1) {
        const double chain = segs > kSsdBlockChainMax ? 2.0 : 0.25 * double(segs - 1);
        cost += 0.25 * double(ceil_div(chains * (segs - 1), slots_states) * len) + chain +
                kBoundaryCost * double(chains * (segs - 1));
      }
      if (n == 1 || cost < best) best = cost, seg_chunks = len;
    }
  }
  seg_chunks = seg_chunks < chunks ? seg_chunks : chunks;
  const int64_t segments = ceil_div(chunks, seg_chunks);
  if (segments > kMaxSegments) seg_chunks = ceil_div(chunks, kMaxSegments);
  plan.seg_chunks = int(seg_chunks);
  plan.segments = int(ceil_div(chunks, seg_chunks));
  return plan;
}

size_t ssd_steps_bytes(const mamba_ssd_scan_params& p) {
  return size_t(p.batch * p.nheads * ssd_chunks(p.seqlen)) * kSsdStepBytes;
}

size_t ssd_workspace_bytes(const mamba_ssd_scan_params& p, const SsdPlan& plan) {
  if (plan.kind != SsdPlan::kPrefill) return 0;
  const int64_t per_segment = p.batch * p.nheads * (p.headdim * p.dstate + 1);
  return ssd_steps_bytes(p) + size_t((plan.segments - 1) * per_segment) * sizeof(float);
}

namespace {

SsdOccupancy occupancy(const mamba_ssd_scan_params& p) {
  if (p.seqlen < 2) return {1, 1};
  const int nt = p.dstate <= 64 ? 64 : p.dstate <= 128 ? 128 : 256;
  switch (p.dtype) {
    case MAMBA_FLOAT16: return ssd_occupancy<__half>(nt);
    case MAMBA_BFLOAT16: return ssd_occupancy<__nv_bfloat16>(nt);
    default: return ssd_occupancy<float>(nt);
  }
}

SsdPlan plan_for(const mamba_ssd_scan_params& p) { return plan_ssd(p, multiprocessor_count(), occupancy(p)); }

}  // namespace
}  // namespace mamba_cuda

extern "C" {

MAMBA_API const char* mamba_ssd_scan_cuda_check(const mamba_ssd_scan_params* p) {
  if (const char* err = mamba_ssd_scan_contract_error(p)) return err;
  if (p->dstate > 256) return "mamba_ssd_scan (CUDA): dstate must be <= 256";
  if (p->batch * p->nheads * p->headdim >= (int64_t{1} << 31)) {
    return "mamba_ssd_scan (CUDA): batch * nheads * headdim must be < 2^31";
  }
  if (p->seqlen >= (int64_t{1} << 31)) return "mamba_ssd_scan (CUDA): seqlen must be < 2^31";
  return nullptr;
}

MAMBA_API size_t mamba_ssd_scan_cuda_workspace_size(const mamba_ssd_scan_params* p) {
  if (mamba_ssd_scan_cuda_check(p)) return 0;
  return mamba_cuda::ssd_workspace_bytes(*p, mamba_cuda::plan_for(*p));
}

MAMBA_API int mamba_ssd_scan_cuda(const mamba_ssd_scan_params* p, void* workspace, void* stream) {
  if (mamba_ssd_scan_cuda_check(p)) return cudaErrorInvalidValue;
  using namespace mamba_cuda;
  const SsdPlan plan = plan_for(*p);
  // The pre-pass's per-step values are copied from the workspace 16 bytes at a time.
  if (ssd_workspace_bytes(*p, plan) && (!workspace || reinterpret_cast<uintptr_t>(workspace) % 16)) {
    return cudaErrorInvalidValue;
  }
  const auto s = static_cast<cudaStream_t>(stream);
  const int sms = multiprocessor_count();
  switch (p->dtype) {
    case MAMBA_FLOAT16: return launch_ssd<__half>(*p, plan, workspace, sms, s);
    case MAMBA_BFLOAT16: return launch_ssd<__nv_bfloat16>(*p, plan, workspace, sms, s);
    default: return launch_ssd<float>(*p, plan, workspace, sms, s);
  }
}

}  // extern "C"

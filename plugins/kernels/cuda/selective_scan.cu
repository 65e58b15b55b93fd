// The C ABI of the CUDA selective scan (plugins/include/mamba_kernels.h): checks, the
// choice of kernel, and the dispatch on the activation type (instantiated in scan_*.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "../selective_scan_check.h"
#include "mamba_kernels.h"
#include "scan_plan.h"

namespace mamba_cuda {

template <typename T>
cudaError_t launch_scan(const mamba_selective_scan_params& p, const Plan& plan, cudaStream_t stream);

namespace {

int pow2_at_least(int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

// The names MAMBA_KERNELS_SCAN_PLAN accepts for a prefill, in the order of Kernel from
// kChained16, and for a decode step (4 or 8 states per lane).
constexpr const char* kPrefillNames[] = {"chained", "fused_r8", "fused"};
constexpr const char* kDecodeNames[] = {"decode4", "decode8"};

template <int kCount>
bool forced(const char* const (&names)[kCount], Kernel first, Plan* plan) {
  const char* env = std::getenv("MAMBA_KERNELS_SCAN_PLAN");
  for (int i = 0; env && i < kCount; ++i) {
    if (!std::strcmp(env, names[i])) {
      plan->kernel = Kernel(int(first) + i);
      return true;
    }
  }
  return false;
}

}  // namespace

Plan plan_scan(const mamba_selective_scan_params& p, int multiprocessors) {
  Plan plan{Kernel::kFused16, 1};
  if (p.seqlen == 1) {
    // 4 states per lane (up to 32 lanes), 8 for dstate > 128.
    plan.kernel = p.dstate <= 128 ? Kernel::kDecode4 : Kernel::kDecode8;
    if (p.dstate <= 128) forced(kDecodeNames, Kernel::kDecode4, &plan);
    const int per_lane = plan.kernel == Kernel::kDecode4 ? 4 : 8;
    plan.decode_lanes = pow2_at_least((p.dstate + per_lane - 1) / per_lane);
    return plan;
  }
  if (p.dstate > 128) return {Kernel::kDirect256, 1};
  if (p.dstate > 64) return {Kernel::kDirect128, 1};
  if (p.dstate > 32) return {Kernel::kDirect64, 1};
  if (p.dstate > 16) return {Kernel::kDirect32, 1};
  if (forced(kPrefillNames, Kernel::kChained16, &plan)) return plan;
  // The fused kernel; with fewer channels, 8 lanes per channel instead of 4, and below
  // ~16 channels per SM the chained kernel, which also splits time (measured on the H100:
  // batch x dim of 1536 runs best chained, 5120 fused with 8 lanes, 12288 and up fused).
  const int64_t channels = p.batch * p.dim;
  if (channels < 16 * multiprocessors) {
    plan.kernel = Kernel::kChained16;
  } else if (channels < 48 * multiprocessors) {
    plan.kernel = Kernel::kFused16r8;
  }
  return plan;
}

namespace {

int multiprocessors() {
  static int count[64];  // per device; filled on first use (a benign race writes the same value)
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 132;
  if (!count[device]) cudaDeviceGetAttribute(&count[device], cudaDevAttrMultiProcessorCount, device);
  return count[device] > 0 ? count[device] : 132;
}

}  // namespace
}  // namespace mamba_cuda

extern "C" {

MAMBA_API const char* mamba_selective_scan_cuda_check(const mamba_selective_scan_params* p) {
  if (const char* err = mamba_selective_scan_contract_error(p)) return err;
  if (p->dstate > 256) return "mamba_selective_scan (CUDA): dstate must be <= 256";
  if (p->batch * p->dim >= (int64_t{1} << 31)) return "mamba_selective_scan (CUDA): batch * dim must be < 2^31";
  // 2^30: the prefill kernels count steps in int, up to two tiles past the last one.
  if (p->seqlen >= (int64_t{1} << 30)) return "mamba_selective_scan (CUDA): seqlen must be < 2^30";
  return nullptr;
}

MAMBA_API size_t mamba_selective_scan_cuda_workspace_size(const mamba_selective_scan_params*) { return 0; }

MAMBA_API int mamba_selective_scan_cuda(const mamba_selective_scan_params* p, void*, void* stream) {
  if (mamba_selective_scan_cuda_check(p)) return cudaErrorInvalidValue;
  if (p->batch == 0 || p->dim == 0) return cudaSuccess;
  using namespace mamba_cuda;
  const Plan plan = plan_scan(*p, multiprocessors());
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p->dtype) {
    case MAMBA_FLOAT16: return launch_scan<__half>(*p, plan, s);
    case MAMBA_BFLOAT16: return launch_scan<__nv_bfloat16>(*p, plan, s);
    default: return launch_scan<float>(*p, plan, s);
  }
}

}  // extern "C"

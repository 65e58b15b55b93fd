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

// The names MAMBA_KERNELS_SCAN_PLAN accepts, in the order of Kernel from kChained16x8.
constexpr const char* kPrefillNames[] = {"chained8", "fused_r8", "fused"};

bool forced_plan(Plan* plan) {
  const char* env = std::getenv("MAMBA_KERNELS_SCAN_PLAN");
  if (!env) return false;
  for (int i = 0; i < int(sizeof(kPrefillNames) / sizeof(*kPrefillNames)); ++i) {
    if (!std::strcmp(env, kPrefillNames[i])) {
      plan->kernel = Kernel(int(Kernel::kChained16x8) + i);
      return true;
    }
  }
  return false;
}

}  // namespace

Plan plan_scan(const mamba_selective_scan_params& p, int multiprocessors) {
  Plan plan{Kernel::kFused16, 1};
  if (p.seqlen == 1) {
    const int64_t groups4 = (p.dstate + 3) / 4;
    plan.kernel = groups4 <= 32 ? Kernel::kDecode4 : Kernel::kDecode8;
    plan.decode_lanes = pow2_at_least(groups4 <= 32 ? groups4 : (p.dstate + 7) / 8);
    return plan;
  }
  if (p.dstate > 128) return {Kernel::kDirect256, 1};
  if (p.dstate > 64) return {Kernel::kDirect128, 1};
  if (p.dstate > 32) return {Kernel::kDirect64, 1};
  if (p.dstate > 16) return {Kernel::kDirect32, 1};
  if (forced_plan(&plan)) return plan;
  // The fused kernel; with fewer channels, 8 lanes per channel instead of 4, and below
  // ~16 channels per SM the chained kernel, which also splits time (measured on the H100:
  // batch x dim of 1536 runs best chained, 5120 fused with 8 lanes, 12288 and up fused).
  const int64_t channels = p.batch * p.dim;
  if (channels < 16 * multiprocessors) {
    plan.kernel = Kernel::kChained16x8;
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
  if (p->seqlen >= (int64_t{1} << 31)) return "mamba_selective_scan (CUDA): seqlen must be < 2^31";
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

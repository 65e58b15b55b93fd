#include "cpu_provider.h"

namespace mamba_ort {
namespace {

// mamba_parallel_for_fn over ORT's intra-op thread pool (serial when the session has none).
void ort_parallel_for(void* context, size_t n, mamba_task_fn fn, void* fn_context) {
  const OrtApi& api = Ort::GetApi();
  OrtStatus* status =
      api.KernelContext_ParallelFor(static_cast<const OrtKernelContext*>(context), fn, n, 0, fn_context);
  if (status) {  // only for an invalid context, before any task ran: run them here instead
    api.ReleaseStatus(status);
    for (size_t i = 0; i < n; ++i) fn(fn_context, i);
  }
}

}  // namespace

void CpuProvider::launch(const mamba_selective_scan_params& p, Ort::KernelContext& context) {
  mamba_selective_scan_cpu(&p, ort_parallel_for, context.GetOrtKernelContext());
}

void CpuProvider::launch(const mamba_ssd_scan_params& p, Ort::KernelContext& context) {
  mamba_ssd_scan_cpu(&p, ort_parallel_for, context.GetOrtKernelContext());
}

}  // namespace mamba_ort

#include "cuda_provider.h"

#include <string>

namespace mamba_ort {
namespace {

// Device scratch memory from the session's allocator for `where` (so ORT accounts for it and
// reuses it in stream order), returned when the launch has been enqueued.
class Workspace {
 public:
  Workspace(Ort::KernelContext& context, const OrtMemoryInfo* where, size_t bytes) {
    if (!bytes) return;
    const OrtApi& api = Ort::GetApi();
    OrtKernelContext* raw = context.GetOrtKernelContext();
    Ort::ThrowOnError(api.KernelContext_GetAllocator(raw, where, &allocator_));
    Ort::ThrowOnError(api.KernelContext_GetScratchBuffer(raw, where, bytes, &data_));
  }
  ~Workspace() {
    if (data_) allocator_->Free(allocator_, data_);
    if (allocator_) Ort::GetApi().ReleaseAllocator(allocator_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* data() const { return data_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  void* data_ = nullptr;
};

// Every op the same way: the CUDA kernel's own limits (the contract was checked when the
// inputs were bound), scratch memory from the session, the launch on ORT's compute stream.
template <class Params>
void launch_on_stream(const Params& p, Ort::KernelContext& context, const char* (*check)(const Params*),
                      size_t (*workspace_size)(const Params*), int (*run)(const Params*, void*, void*)) {
  if (const char* limit = check(&p)) {
    throw ContractViolation(std::string(limit) + " (a limit of the CUDA kernel; the CPU execution provider has none)");
  }
  const Workspace workspace(context, context.GetInput(0).GetTensorMemoryInfo(), workspace_size(&p));
  if (const int err = run(&p, workspace.data(), context.GetGPUComputeStream())) {
    throw std::runtime_error("the CUDA kernel failed to launch (cudaError " + std::to_string(err) + ")");
  }
}

}  // namespace

void CudaProvider::launch(const mamba_selective_scan_params& p, Ort::KernelContext& context) {
  launch_on_stream(p, context, mamba_selective_scan_cuda_check, mamba_selective_scan_cuda_workspace_size,
                   mamba_selective_scan_cuda);
}

void CudaProvider::launch(const mamba_ssd_scan_params& p, Ort::KernelContext& context) {
  launch_on_stream(p, context, mamba_ssd_scan_cuda_check, mamba_ssd_scan_cuda_workspace_size, mamba_ssd_scan_cuda);
}

}  // namespace mamba_ort
